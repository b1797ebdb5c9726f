// The part of <stdlib.h> that molt's C guests and their generated bindings use.
// Guests are freestanding, with no libc: guests-c/sdk/src/libc.c implements these.
#ifndef MOLT_STDLIB_H
#define MOLT_STDLIB_H

#include <stddef.h>

void *malloc(size_t size);
void *realloc(void *pointer, size_t size);
void free(void *pointer);
_Noreturn void abort(void);

#endif

// The part of <string.h> that molt's C guests and their generated bindings use.
// Guests are freestanding, with no libc: guests-c/sdk/src/libc.c implements these.
#ifndef MOLT_STRING_H
#define MOLT_STRING_H

#include <stddef.h>

void *memcpy(void *restrict destination, const void *restrict source, size_t size);
void *memmove(void *destination, const void *source, size_t size);
void *memset(void *destination, int byte, size_t size);
int memcmp(const void *left, const void *right, size_t size);
size_t strlen(const char *text);

#endif

// The few libc functions a molt C guest needs, for a freestanding wasm32 build that imports nothing.
//
// The allocator keeps one free list per power-of-two block size.
// Blocks come from the end of the heap, which grows with `memory.grow`; they are never returned to it.
// Every request is rounded up to a power of two, so at most half of a block is wasted,
// and a freed block is reused by the next request of its size in constant time.
// That is enough for a policy, whose working set is its state and one batch's actions.
// Nothing here depends on anything but the calls made, so the same calls give the same memory on every host.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// wasm-ld defines the first byte after static data and the stack.
extern unsigned char __heap_base;

#define PAGE_BYTES 65536u
// Blocks are 2^4 to 2^31 bytes; the header is the first 8, which keeps payloads 8-byte aligned for u64 and f64.
#define HEADER_BYTES 8u
#define CLASS_MIN 4u
#define CLASS_MAX 31u
// Marks a block's header, so that freeing a pointer that is not a live block traps instead of corrupting the lists.
#define LIVE_MAGIC 0x6d6f6c74u
#define FREE_MAGIC 0x66726565u

struct header {
    uint32_t magic;
    uint32_t size_class;
};

// Only the first word of a free block's payload is used: the next free block of its class.
static void *free_lists[CLASS_MAX + 1];
static uintptr_t heap_end;

static struct header *header_of(void *pointer) {
    return (struct header *)((unsigned char *)pointer - HEADER_BYTES);
}

// The smallest class whose blocks hold `size` payload bytes, or 0 when none does.
static uint32_t class_for(size_t size) {
    if (size > (((size_t)1 << CLASS_MAX) - HEADER_BYTES)) {
        return 0;
    }
    uint32_t size_class = CLASS_MIN;
    while (((size_t)1 << size_class) - HEADER_BYTES < size) {
        size_class++;
    }
    return size_class;
}

// A fresh block from the end of the heap, growing memory when needed; NULL when memory cannot grow.
static void *carve(uint32_t size_class) {
    if (heap_end == 0) {
        heap_end = ((uintptr_t)&__heap_base + 7u) & ~(uintptr_t)7u;
    }
    uintptr_t block_bytes = (uintptr_t)1 << size_class;
    uintptr_t memory_bytes = (uintptr_t)__builtin_wasm_memory_size(0) * PAGE_BYTES;
    if (block_bytes > UINTPTR_MAX - heap_end) {
        return NULL;
    }
    uintptr_t new_end = heap_end + block_bytes;
    if (new_end > memory_bytes) {
        uintptr_t missing_pages = (new_end - memory_bytes + PAGE_BYTES - 1) / PAGE_BYTES;
        if (__builtin_wasm_memory_grow(0, missing_pages) == (size_t)-1) {
            return NULL;
        }
    }
    void *block = (void *)heap_end;
    heap_end = new_end;
    return block;
}

void *malloc(size_t size) {
    uint32_t size_class = class_for(size);
    if (size_class == 0) {
        return NULL;
    }
    struct header *header = free_lists[size_class];
    if (header != NULL) {
        if (header->magic != FREE_MAGIC || header->size_class != size_class) {
            __builtin_trap();
        }
        free_lists[size_class] = *(void **)((unsigned char *)header + HEADER_BYTES);
    } else {
        header = carve(size_class);
        if (header == NULL) {
            return NULL;
        }
    }
    header->magic = LIVE_MAGIC;
    header->size_class = size_class;
    return (unsigned char *)header + HEADER_BYTES;
}

void free(void *pointer) {
    if (pointer == NULL) {
        return;
    }
    struct header *header = header_of(pointer);
    if (header->magic != LIVE_MAGIC || header->size_class < CLASS_MIN || header->size_class > CLASS_MAX) {
        __builtin_trap();
    }
    header->magic = FREE_MAGIC;
    *(void **)pointer = free_lists[header->size_class];
    free_lists[header->size_class] = header;
}

void *realloc(void *pointer, size_t size) {
    if (pointer == NULL) {
        return malloc(size);
    }
    struct header *header = header_of(pointer);
    if (header->magic != LIVE_MAGIC || header->size_class < CLASS_MIN || header->size_class > CLASS_MAX) {
        __builtin_trap();
    }
    size_t capacity = ((size_t)1 << header->size_class) - HEADER_BYTES;
    if (size <= capacity) {
        return pointer;
    }
    void *moved = malloc(size);
    if (moved == NULL) {
        return NULL;
    }
    memcpy(moved, pointer, capacity);
    free(pointer);
    return moved;
}

_Noreturn void abort(void) {
    __builtin_trap();
}

// With bulk memory (the build enables it, as rustc does for the Rust guests) these are the `memory.copy` and `memory.fill` instructions.
// Without it they are plain loops, which -ffreestanding keeps clang from turning back into calls to themselves.
void *memcpy(void *restrict destination, const void *restrict source, size_t size) {
#if defined(__wasm_bulk_memory__)
    return __builtin_memcpy(destination, source, size);
#else
    return memmove(destination, source, size);
#endif
}

void *memmove(void *destination, const void *source, size_t size) {
#if defined(__wasm_bulk_memory__)
    return __builtin_memmove(destination, source, size);
#else
    unsigned char *to = destination;
    const unsigned char *from = source;
    if (to < from) {
        for (size_t index = 0; index < size; index++) {
            to[index] = from[index];
        }
    } else if (to > from) {
        for (size_t index = size; index > 0; index--) {
            to[index - 1] = from[index - 1];
        }
    }
    return destination;
#endif
}

void *memset(void *destination, int byte, size_t size) {
#if defined(__wasm_bulk_memory__)
    return __builtin_memset(destination, byte, size);
#else
    unsigned char *to = destination;
    for (size_t index = 0; index < size; index++) {
        to[index] = (unsigned char)byte;
    }
    return destination;
#endif
}

int memcmp(const void *left, const void *right, size_t size) {
    const unsigned char *a = left;
    const unsigned char *b = right;
    for (size_t index = 0; index < size; index++) {
        if (a[index] != b[index]) {
            return a[index] < b[index] ? -1 : 1;
        }
    }
    return 0;
}

size_t strlen(const char *text) {
    size_t length = 0;
    while (text[length] != '\0') {
        length++;
    }
    return length;
}

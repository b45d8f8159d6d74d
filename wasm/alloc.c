// KV Cache Lab: the KV store's heap.
//
// No libc here, so no malloc: a small allocator on top of memory.grow.
//
// The heap is the tail of linear memory from __heap_base to the end, tiled exactly by
// blocks, each with a 16-byte header. Allocation is FIRST FIT BY ADDRESS (a scan over the
// blocks), freeing coalesces with both neighbours, and when nothing fits the memory grows
// (extending a free last block instead of starting a new one). Why this policy:
//   - the cache grows by re-layout (allocate bigger, copy, free the old): the old buffers
//     of one growth are adjacent, so they coalesce into a hole the next growth can use;
//   - lowest-address first fit is deterministic and treats "the free tail after kv_reset"
//     exactly like "memory not grown yet", so refilling a reset cache with the same steps
//     reproduces the same layout and never grows the heap again;
//   - a few hundred blocks at most (30 layers x a handful of buffers), so a linear scan
//     costs nothing next to the copies it serves.
// WebAssembly memory cannot shrink: freed memory stays in the heap for reuse, and
// kv_heap_bytes() reports what was taken from the wasm memory, never less.
//
// kv_set_limit(max_bytes) caps the heap; a growth beyond it (or beyond the module's max
// memory, 2 GiB) fails and the caller gets NULL with nothing changed.

#include "kvstore.h"

extern unsigned char __heap_base; // provided by wasm-ld: first byte after data and stack

#define PAGE 65536u
#define ALIGN 16u
#define MAGIC_USED 0x6b765531u // "kvU1"
#define MAGIC_FREE 0x6b764631u // "kvF1"

// ---------------------------------------------------------------------------------------
// Block header
// ---------------------------------------------------------------------------------------

typedef struct {
    uint32_t size;  // whole block in bytes (header included), a multiple of 16
    uint32_t prev;  // size of the block just below (0 for the first): O(1) coalescing
    uint32_t magic; // MAGIC_USED or MAGIC_FREE (also catches bad kv_free pointers)
    uint32_t pad;   // keeps the payload 16-byte aligned
} blk;
_Static_assert(sizeof(blk) == ALIGN, "block header is one alignment unit");

#define MIN_BLOCK (2u * ALIGN) // header + 16 bytes: smaller remainders are not split off

static uint32_t heap_lo;    // first block
static uint32_t heap_hi;    // end of memory = end of the last block
static uint32_t heap_limit; // 0 = no cap beyond the module's max memory
static uint32_t last_block; // the highest block (blocks only know the one below), 0 if none

static inline blk *at(uint32_t a) { return (blk *)(uintptr_t)a; }
static inline uint32_t addr(const blk *b) { return (uint32_t)(uintptr_t)b; }

static void heap_init(void) {
    if (heap_lo) return;
    heap_lo = ((uint32_t)(uintptr_t)&__heap_base + ALIGN - 1) & ~(ALIGN - 1);
    heap_hi = heap_lo;
    uint32_t end = (uint32_t)__builtin_wasm_memory_size(0) * PAGE;
    uint32_t room = (end - heap_lo) & ~(ALIGN - 1);
    if (end > heap_lo && room >= MIN_BLOCK) {
        blk *b = at(heap_lo);
        *b = (blk){room, 0, MAGIC_FREE, 0};
        heap_hi = heap_lo + room;
        last_block = heap_lo;
    }
}

static void split(blk *b, uint32_t need) {
    uint32_t rest = b->size - need;
    if (rest < MIN_BLOCK) return;
    b->size = need;
    blk *r = at(addr(b) + need);
    *r = (blk){rest, need, MAGIC_FREE, 0};
    uint32_t after = addr(r) + rest;
    if (after < heap_hi) at(after)->prev = rest;
    else last_block = addr(r);
}

// Grow linear memory so that a block of `need` bytes fits at the top; returns it (free).
static blk *grow_for(uint32_t need) {
    blk *last = last_block ? at(last_block) : 0;
    uint32_t have = (last && last->magic == MAGIC_FREE) ? last->size : 0;
    uint32_t extra = need - have;
    uint32_t pages = (extra + PAGE - 1) / PAGE;
    uint64_t new_hi = (uint64_t)heap_hi + (uint64_t)pages * PAGE;
    if (heap_limit && new_hi - heap_lo > heap_limit) return 0;
    if (new_hi > 0x80000000ull) return 0; // pointers stay positive i32
    if (__builtin_wasm_memory_grow(0, pages) < 0) return 0;
    uint32_t added = pages * PAGE;
    if (have) {
        last->size += added;
    } else {
        blk *b = at(heap_hi);
        *b = (blk){added, last ? last->size : 0, MAGIC_FREE, 0};
        last_block = addr(b);
        last = b;
    }
    heap_hi += added;
    return last;
}

// ---------------------------------------------------------------------------------------
// malloc / free
// ---------------------------------------------------------------------------------------

void *kv_malloc(size_t n) {
    heap_init();
    if (n > 0x7fff0000u) return 0;
    uint32_t need = (uint32_t)((n + ALIGN - 1) & ~(size_t)(ALIGN - 1)) + (uint32_t)sizeof(blk);
    if (need < MIN_BLOCK) need = MIN_BLOCK;
    blk *b = 0;
    for (uint32_t a = heap_lo; a < heap_hi; a += at(a)->size) {
        blk *c = at(a);
        if (c->magic == MAGIC_FREE && c->size >= need) {
            b = c;
            break;
        }
    }
    if (!b && !(b = grow_for(need))) return 0;
    split(b, need);
    b->magic = MAGIC_USED;
    return (void *)(uintptr_t)(addr(b) + sizeof(blk));
}

static blk *header_of(const void *p) {
    uint32_t a = (uint32_t)(uintptr_t)p;
    if (a < heap_lo + sizeof(blk) || a >= heap_hi || (a & (ALIGN - 1))) return 0;
    blk *b = at(a - (uint32_t)sizeof(blk));
    return b->magic == MAGIC_USED ? b : 0;
}

static void release(blk *b) {
    b->magic = MAGIC_FREE;
    uint32_t next = addr(b) + b->size;
    if (next < heap_hi && at(next)->magic == MAGIC_FREE) { // merge the block above
        blk *n = at(next);
        b->size += n->size;
        n->magic = 0;
        if (last_block == next) last_block = addr(b);
    }
    if (b->prev && at(addr(b) - b->prev)->magic == MAGIC_FREE) { // merge into the one below
        blk *p = at(addr(b) - b->prev);
        p->size += b->size;
        b->magic = 0;
        if (last_block == addr(b)) last_block = addr(p);
        b = p;
    }
    next = addr(b) + b->size;
    if (next < heap_hi) at(next)->prev = b->size;
}

void kv_mfree(void *p) {
    if (!p) return;
    blk *b = header_of(p);
    if (b) release(b);
}

// Give back the tail of an allocation beyond its first n bytes: the block is split in
// place and the rest freed (coalescing with a free block above). Nothing happens when the
// tail is too small to be a block of its own, or p is not a live allocation.
void kv_mshrink(void *p, size_t n) {
    blk *b = header_of(p);
    if (!b || n > 0x7fff0000u) return;
    uint32_t need = (uint32_t)((n + ALIGN - 1) & ~(size_t)(ALIGN - 1)) + (uint32_t)sizeof(blk);
    if (need < MIN_BLOCK) need = MIN_BLOCK;
    if (need >= b->size || b->size - need < MIN_BLOCK) return;
    split(b, need);
    release(at(addr(b) + need));
}

// ---------------------------------------------------------------------------------------
// The few libc functions the compiler may call (struct copies, loop idioms)
// ---------------------------------------------------------------------------------------

// With bulk memory these builtins lower to memory.copy / memory.fill, never to a call back.
void *memcpy(void *restrict d, const void *restrict s, size_t n) {
    __builtin_memmove(d, s, n);
    return d;
}
void *memmove(void *d, const void *s, size_t n) {
    __builtin_memmove(d, s, n);
    return d;
}
void *memset(void *d, int c, size_t n) {
    __builtin_memset(d, c, n);
    return d;
}

// ---------------------------------------------------------------------------------------
// Exports
// ---------------------------------------------------------------------------------------

// Allocate n bytes (16-byte aligned) for the host; pointer, or KV_ENOMEM / KV_EINVAL.
KV_EXPORT(kv_alloc) int32_t kv_alloc(int32_t n) {
    if (n <= 0) return KV_EINVAL;
    void *p = kv_malloc((size_t)n);
    return p ? (int32_t)(uintptr_t)p : KV_ENOMEM;
}

// Free a pointer from kv_alloc; KV_EINVAL if it is not a live allocation.
KV_EXPORT(kv_free) int32_t kv_free(int32_t p) {
    blk *b = header_of((void *)(uintptr_t)(uint32_t)p);
    if (!b) return KV_EINVAL;
    release(b);
    return KV_OK;
}

// Cap the heap at max_bytes (<= 0: no cap). Memory already taken is kept.
KV_EXPORT(kv_set_limit) int32_t kv_set_limit(int32_t max_bytes) {
    heap_limit = max_bytes > 0 ? (uint32_t)max_bytes : 0;
    return KV_OK;
}

// Bytes of linear memory the allocator has taken (wasm memory never shrinks).
KV_EXPORT(kv_heap_bytes) int32_t kv_heap_bytes(void) {
    heap_init();
    return (int32_t)(heap_hi - heap_lo);
}

// Copy n bytes (memory.copy): the throughput baseline for the kernels.
KV_EXPORT(kv_memcpy) int32_t kv_memcpy(int32_t dst, int32_t src, int32_t n) {
    if (n < 0) return KV_EINVAL;
    __builtin_memmove((void *)(uintptr_t)(uint32_t)dst, (const void *)(uintptr_t)(uint32_t)src,
                      (size_t)n);
    return KV_OK;
}

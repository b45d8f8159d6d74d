// KV Cache Lab: the KV store's shared definitions.
//
// A standalone, import-free WebAssembly module (C11, wasm32-freestanding) that holds the
// compressed KV cache of a decoder-only model, plus the "staging" copy (dequantized fp32)
// that the model reads as its past, plus the few vocabulary-sized loops (argmax, sampling)
// the pure-Python engine must not run itself.
//
// Everything here is defined ONCE and mirrored once in Python (site/kvlab/formats.py):
// the error codes, the format enum, the block layouts. The byte-layout table lives in
// docs/store.md (section "Byte layout").
//
// ABI rule: every export takes and returns i32 or f32 only (no i64: JS BigInt pain);
// pointers are i32 offsets into the exported memory, always < 2 GiB (max memory), so
// they stay positive and negative returns can mean errors.

#ifndef KVSTORE_H
#define KVSTORE_H

#include <stddef.h>
#include <stdint.h>

#define KV_EXPORT(name) __attribute__((export_name(#name), visibility("default")))

// ABI version: bump when an export, the step table or a byte layout changes.
#define KV_VERSION 9

// ---------------------------------------------------------------------------------------
// Error codes (mirrored in site/kvlab/formats.py: ERRORS)
// ---------------------------------------------------------------------------------------

#define KV_OK 0
#define KV_ENOMEM -1 // out of memory: growth failed (limit or max memory); state unchanged
#define KV_EINVAL -2 // invalid argument
#define KV_ESTATE -3 // bad state: not initialized, layer holds tokens, no open step, ...

// ---------------------------------------------------------------------------------------
// Formats (mirrored in site/kvlab/formats.py: F32, F16, Q8, Q4, ...)
// ---------------------------------------------------------------------------------------

// One value of this enum per storage format. Quantized formats work on groups of G
// consecutive values along head_dim, per token and per KV head (G in {16, 32, 64}).
// Per-channel key formats (KIVI) take the next numbers.
typedef enum {
    KV_F32 = 0,  // IEEE float32, 4 bytes per value
    KV_F16 = 1,  // IEEE half, round-to-nearest-even (== numpy astype(float16))
    KV_Q8 = 2,   // per group: fp16 scale + G int8 (llama.cpp Q8_0-style)
    KV_Q4 = 3,   // per group: fp16 step + fp16 min + G/2 nibble bytes (Q4_1-style)
    KV_Q3 = 4,   // per group: fp16 step + fp16 min + 3G/8 bytes of 3-bit codes
    KV_Q2 = 5,   // per group: fp16 step + fp16 min + G/4 bytes of 2-bit codes
    KV_Q4_0 = 6, // per group: fp16 scale + G/2 nibble bytes, symmetric (llama.cpp Q4_0)
    KV_TURBO2 = 7, // per group: fp16 norm + G/4 bytes: rotated, Lloyd-Max codebook (turbo.c)
    KV_TURBO3 = 8, // per group: fp16 norm + 3G/8 bytes
    KV_TURBO4 = 9, // per group: fp16 norm + G/2 bytes
    KV_NONE = 10,  // nothing: 0 bytes, staged as zeros (a collapsed key's mean alone, kv_collapse)
    KV_N_FORMATS = 11,
} kv_format;

#define KV_GROUP_MIN 16
#define KV_GROUP_MAX 64
#define KV_GROUP_DEFAULT 32

// ---- Q8: symmetric 8-bit, one block per group of G values
//
//   d  = fp16(min(amax / 127, 65504))          amax = max |x| over the group
//   id = (d == 0) ? 0 : 1 / d                  in f32, from the fp16-ROUNDED d
//   q  = clamp(nearest(x * id), -127, 127)     nearest = round half to even
//   x' = q * d
//
// Quantizing with the rounded d (the one dequantization uses) keeps |x - x'| <= d/2.
typedef struct {
    uint16_t d;   // fp16 scale
    int8_t qs[];  // G quants, qs[j] for element j of the group
} block_q8;
_Static_assert(sizeof(block_q8) == 2, "q8 header is one fp16");
#define Q8_BLOCK_BYTES(G) (sizeof(block_q8) + (size_t)(G))
_Static_assert(Q8_BLOCK_BYTES(32) == 34, "q8 G=32 block is 34 bytes");

// ---- Q4: asymmetric 4-bit, one block per group of G values
//
//   m  = fp16 of min(x), rounded toward -inf   (so m <= every x: no clipping at the bottom)
//   d  = fp16(min((max(x) - m) / 15, 65504))   from the ROUNDED m, so the 16-level grid
//                                              m + [0..15] d spans [m, max] up to fp16(d)
//   id = (d == 0) ? 0 : 1 / d                  in f32, from the fp16-rounded d
//   q  = clamp(nearest((x - m) * id), 0, 15)
//   x' = q * d + m                             (f32 multiply, then f32 add; no fma)
//
// llama.cpp's Q4_1 quantizes with the unrounded min and d; here the rounded ones are used,
// because they are what dequantization sees: the error is then at most d/2 plus fp16
// rounding of d times 15, instead of adding |min - fp16(min)| (large when the group sits
// far from zero, e.g. all values near 100 with a small spread).
typedef struct {
    uint16_t d;   // fp16 step
    uint16_t m;   // fp16 minimum (rounded toward -inf)
    uint8_t qs[]; // G/2 bytes: element j in the low nibble of byte j,
                  //            element j + G/2 in the high nibble of byte j
} block_q4;
_Static_assert(sizeof(block_q4) == 4, "q4 header is two fp16");
#define Q4_BLOCK_BYTES(G) (sizeof(block_q4) + (size_t)(G) / 2)
_Static_assert(Q4_BLOCK_BYTES(32) == 20, "q4 G=32 block is 20 bytes");

// ---- Q3, Q2: asymmetric 3- and 2-bit, Q4's rule with 7 and 3 levels (lowbit.c)
//
//   m, d as Q4 with d = fp16(min((max(x) - m) / L, 65504)), L = 7 (Q3) or 3 (Q2)
//   q  = clamp(nearest((x - m) * id), 0, L),  x' = q * d + m
//
// The codes are packed in bit planes: Q2's G/4 bytes hold code j + s*G/4 in bits 2s, 2s+1
// of byte j; Q3 holds bits 0-1 of its codes the same way, then G/8 bytes with bit 2 of code
// j + s*G/8 in bit s of byte j.
typedef struct {
    uint16_t d;   // fp16 step
    uint16_t m;   // fp16 minimum (rounded toward -inf)
    uint8_t qs[]; // Q3: G/4 bytes (bits 0-1) + G/8 bytes (bit 2); Q2: G/4 bytes
} block_qlow;
_Static_assert(sizeof(block_qlow) == 4, "q3/q2 header is two fp16");
#define Q3_BLOCK_BYTES(G) (sizeof(block_qlow) + (size_t)(G) / 4 + (size_t)(G) / 8)
#define Q2_BLOCK_BYTES(G) (sizeof(block_qlow) + (size_t)(G) / 4)
_Static_assert(Q3_BLOCK_BYTES(32) == 16, "q3 G=32 block is 16 bytes (4 bits per value)");
_Static_assert(Q2_BLOCK_BYTES(32) == 12, "q2 G=32 block is 12 bytes (3 bits per value)");

// ---- Q4_0: symmetric 4-bit (llama.cpp's q4_0, 18 bytes per 32 values there and here)
//
//   e  = max(x) if max(x) >= -min(x), else min(x)   the group's extreme value
//   d  = fp16(clamp(e / -8, -65504, 65504))          negative when e > 0
//   id = (d == 0) ? 0 : 1 / d
//   q  = clamp(nearest(x * id), -8, 7) + 8,  x' = (q - 8) * d
typedef struct {
    uint16_t d;   // fp16 scale
    uint8_t qs[]; // G/2 bytes, nibbles as Q4
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2, "q4_0 header is one fp16");
#define Q4_0_BLOCK_BYTES(G) (sizeof(block_q4_0) + (size_t)(G) / 2)
_Static_assert(Q4_0_BLOCK_BYTES(32) == 18, "q4_0 G=32 block is 18 bytes, as llama.cpp's");

// ---- TURBO2/3/4: rotate, then a Lloyd-Max codebook per coordinate, TurboQuant-style
//      (Zandieh et al., "TurboQuant", ICLR 2026), at b = 2, 3, 4 bits (turbo.c)
//
//   y  = H (s . x)                      H: the G x G Walsh-Hadamard matrix (unnormalised),
//                                       s: fixed random signs, bit j of KV_TURBO_SIGNS = -1
//   n2 = sum x^2,  z = y / sqrt(n2)     z is ~ N(0, 1) per coordinate for any x: the
//                                       rotation spreads outlier channels over all of them
//   q  = #{k : t_k < z}                 t_k = midpoints of the codebook c (2^b levels,
//                                       Lloyd-Max for N(0, 1)): the nearest centroid
//   r  = fp16(min(sqrt(n2 / (G sum c_q^2)), 65504))  the norm correction: x' has x's norm
//   x' = s . (H c_q) * r                (H H = G I, so this inverts the rotation)
//
// Codes are packed as Q2 (turbo2), Q3 (turbo3) and Q4_0's nibbles (turbo4).
typedef struct {
    uint16_t r;   // fp16 norm factor
    uint8_t qs[]; // G * b / 8 bytes of codes
} block_turbo;
_Static_assert(sizeof(block_turbo) == 2, "turbo header is one fp16");
#define TURBO_BLOCK_BYTES(G, b) (sizeof(block_turbo) + (size_t)(G) * (b) / 8)
_Static_assert(TURBO_BLOCK_BYTES(32, 4) == 18 && TURBO_BLOCK_BYTES(32, 3) == 14 && TURBO_BLOCK_BYTES(32, 2) == 10,
               "turbo G=32 blocks are 18, 14 and 10 bytes");
#define KV_TURBO_SIGNS 0xd567e2fd4bd0adcbull // bit j set: coordinate j's sign flips (j < G)

// ---- Per-channel blocks (KIVI; channel.c), for Q4, Q3 and Q2 keys or values with axis 1
//
//   a block = G entries of one KV head; per channel c its fp16 d_c and m_c over the G
//   values (Q4's rule, L = 2^b - 1), code = clamp(nearest((x - m_c) / d_c), 0, L)
//   params: (head_dim, 2) fp16, [d_0][m_0][d_1][m_1] ...  = 4 head_dim bytes per block
//   per entry: head_dim * b / 8 bytes of codes, packed as Q4 / Q3 / Q2 pack theirs
#define KV_CHANNEL_DMAX 256 // the longest head_dim of a per-channel layer (a multiple of 16)
#define KV_CHANNEL_PARAM_BYTES(D) (4u * (size_t)(D))
_Static_assert(KV_CHANNEL_PARAM_BYTES(64) / 32 + 64 * 4 / 8 == 40, "q4 per channel, G=32: 40 bytes per entry, as q4");

// The formats assume |x| <= 65504 (the fp16 range). Larger values saturate the scale (and
// F16 turns them into inf, as numpy does); KV values of a real model are far below that.

#define F16_MAX 65504.0f

// ---------------------------------------------------------------------------------------
// Internal interfaces between the translation units
// ---------------------------------------------------------------------------------------

// alloc.c: the heap (first fit by address, coalescing, grows linear memory on demand)
void *kv_malloc(size_t n);     // 16-byte aligned; NULL when out of memory
void kv_mfree(void *p);        // NULL is fine
void *memcpy(void *restrict d, const void *restrict s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);

// formats.c: kernels over a row of n values (n a multiple of G for quantized formats)
int32_t kv_valid_format(int32_t fmt, int32_t group, int32_t n);   // 1 if usable
size_t kv_row_bytes(int32_t fmt, int32_t group, int32_t n);       // bytes for n values
void kv_quantize_row(int32_t fmt, int32_t group, const float *x, int32_t n, uint8_t *dst);
void kv_dequantize_row(int32_t fmt, int32_t group, const uint8_t *src, int32_t n, float *y);

// lowbit.c: Q3, Q2 and Q4_0 rows (n a multiple of group)
size_t kv_lowbit_block_bytes(int32_t fmt, int32_t group);
void kv_lowbit_quantize_row(int32_t fmt, int32_t group, const float *x, int32_t n, uint8_t *dst);
void kv_lowbit_dequantize_row(int32_t fmt, int32_t group, const uint8_t *src, int32_t n, float *y);

// turbo.c: the rotation y = H (s . x) / sqrt(n) (n a power of two <= 64) and its inverse
// (the same random signs and butterflies as TURBO's); TURBO2/3/4 rows (n a multiple of group)
int32_t kv_rotatable(int32_t n);
void kv_rotate_row(const float *x, int32_t n, float *y);
void kv_unrotate_row(float *y, int32_t n);
void kv_turbo_quantize_row(int32_t fmt, int32_t group, const float *x, int32_t n, uint8_t *dst);
void kv_turbo_dequantize_row(int32_t fmt, int32_t group, const uint8_t *src, int32_t n, float *y);

// channel.c: per-channel blocks of G entries (fmt Q4 / Q3 / Q2 -> b = 4 / 3 / 2)
int32_t kv_channel_bits(int32_t fmt);                             // b, 0 if none
int32_t kv_channel_ok(int32_t fmt, int32_t group, int32_t D);     // 1 if usable
size_t kv_channel_row_bytes(int32_t bits, int32_t D);             // one entry's codes
void kv_channel_quantize(int32_t bits, int32_t G, const float *x, int32_t D, uint8_t *params, uint8_t *codes);
void kv_channel_dequantize(int32_t bits, int32_t n, const uint8_t *params, const uint8_t *codes, int32_t D, float *y);

// collapse.c: rotate-half RoPE with the graph's angles (inv: (dim/2,) from kv_rope_table;
// inverse != 0 turns back; y may be x)
void kv_rope_table(float theta, int32_t dim, float *inv);
void kv_rope_turn(const float *x, int32_t dim, const float *inv, int32_t pos, int32_t inverse, float *y);

// sample.c: scratch for n sampling candidates (kept; grows only)
int32_t kv_sample_reserve(int32_t n);

#endif

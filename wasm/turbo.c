// KV Cache Lab: TURBO2/3/4, TurboQuant-style rotated codebook formats (Zandieh et al.,
// "TurboQuant: Online Vector Quantization with Near-optimal Distortion Rate", ICLR 2026).
//
// A group of G values is rotated by a fixed random-sign Walsh-Hadamard transform, which
// makes every coordinate of the rotated unit vector close to N(0, 1/G) whatever the input
// (an outlier channel is spread over all G); each coordinate then takes the nearest
// centroid of the Lloyd-Max codebook for that distribution, and one fp16 per group holds
// the norm, corrected so that the reconstruction has exactly the input's norm. The rule
// and the layout are in kvstore.h (block_turbo).
//
// Pinned for bit-exactness (scalar == SIMD == NumPy): the transform's butterflies are
// a + b and a - b per pair in stage order h = 1, 2, 4, ...; sums of squares run in four
// strided lanes (lane l takes elements l, l + 4, ...) joined as (l0 + l1) + (l2 + l3);
// codes come from comparisons, which are exact; a group whose sum of squares is not finite
// (inf, NaN input) is stored as zeros, so no NaN reaches the header.

#include "kernels.h"

// Lloyd-Max centroids for N(0, 1), ascending (Max 1960; tests/reference recomputes them).
static const float TURBO_C2[4] = {-1.510418f, -0.452780f, 0.452780f, 1.510418f};
static const float TURBO_C3[8] = {-2.151946f, -1.343909f, -0.756005f, -0.245094f,
                                  0.245094f,  0.756005f,  1.343909f,  2.151946f};
static const float TURBO_C4[16] = {-2.732590f, -2.069017f, -1.618046f, -1.256231f, -0.942340f, -0.656759f,
                                   -0.388048f, -0.128395f, 0.128395f,  0.388048f,  0.656759f,  0.942340f,
                                   1.256231f,  1.618046f,  2.069017f,  2.732590f};

INLINE const float *codebook(const int bits) { return bits == 2 ? TURBO_C2 : bits == 3 ? TURBO_C3 : TURBO_C4; }

// the midpoint between centroids k and k + 1, in f32
INLINE float boundary(const float *c, int k) { return (c[k] + c[k + 1]) * 0.5f; }

INLINE uint32_t sign_bit(int j) { return (uint32_t)((KV_TURBO_SIGNS >> j) & 1u) << 31; }

INLINE float flip(float v, int j) { return bitsf(fbits(v) ^ sign_bit(j)); }

// pinned sum of squares: four strided lanes, then (l0 + l1) + (l2 + l3)
INLINE float sumsq_scalar(const float *v, const int G) {
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < G; i += 4)
        for (int l = 0; l < 4; l++) a[l] += v[i + l] * v[i + l];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

// The sum of squares to use: 0 for a group that is not finite.
INLINE float finite_or_zero(float n2) { return n2 <= 3.4028234e38f ? n2 : 0.0f; }

// ---------------------------------------------------------------------------------------
// Scalar
// ---------------------------------------------------------------------------------------

INLINE void fwht_scalar(float *y, const int G) { // in place, unnormalised
    for (int h = 1; h < G; h *= 2)
        for (int i = 0; i < G; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = y[j], b = y[j + h];
                y[j] = a + b;
                y[j + h] = a - b;
            }
}

// Codes and the norm factor of one group: (G,) f32 -> q (G,) codes, returns r.
INLINE float turbo_codes_scalar(const float *x, const int G, const int bits, uint8_t *q) {
    const float *c = codebook(bits);
    const int L = 1 << bits;
    float y[KV_GROUP_MAX], w[KV_GROUP_MAX];
    for (int j = 0; j < G; j++) y[j] = flip(x[j], j);
    fwht_scalar(y, G);
    float n2 = finite_or_zero(sumsq_scalar(x, G));
    float inv = n2 > 0.0f ? 1.0f / __builtin_sqrtf(n2) : 0.0f;
    for (int j = 0; j < G; j++) {
        float z = y[j] * inv;
        int k = 0;
        for (int t = 0; t < L - 1; t++) k += boundary(c, t) < z;
        q[j] = (uint8_t)k;
        w[j] = c[k];
    }
    return pminf(F16_MAX, __builtin_sqrtf(n2 / (sumsq_scalar(w, G) * (float)G))); // saturates, as d does
}

INLINE void turbo_values_scalar(const uint8_t *q, const int G, const int bits, float r, float *y) {
    const float *c = codebook(bits);
    for (int j = 0; j < G; j++) y[j] = c[q[j]];
    fwht_scalar(y, G);
    for (int j = 0; j < G; j++) y[j] = flip(y[j] * r, j);
}

#ifndef __wasm_simd128__

INLINE void turbo_quant(const float *x, const int G, const int bits, uint8_t *out) {
    uint8_t q[KV_GROUP_MAX];
    store16(out, f32_to_f16(turbo_codes_scalar(x, G, bits, q)));
    if (bits == 4) pack_scalar(q, G, 4, 0, 15, out + 2);
    else {
        pack_scalar(q, G, 2, 0, 3, out + 2);
        if (bits == 3) pack_scalar(q, G, 1, 2, 1, out + 2 + G / 4);
    }
}

INLINE void turbo_dequant(const uint8_t *in, const int G, const int bits, float *y) {
    uint8_t q[KV_GROUP_MAX];
    if (bits == 4) unpack_scalar(in + 2, G, 4, 0, 0, q);
    else {
        unpack_scalar(in + 2, G, 2, 0, 0, q);
        if (bits == 3) unpack_scalar(in + 2 + G / 4, G, 1, 2, 1, q);
    }
    turbo_values_scalar(q, G, bits, f16_to_f32(load16(in)), y);
}

#else

// ---------------------------------------------------------------------------------------
// SIMD: v[G/4] holds the group, four coordinates a vector
// ---------------------------------------------------------------------------------------

INLINE v128_t signs4(int j) { // lanes j .. j + 3's sign flips, as masks
    return wasm_i32x4_make((int32_t)sign_bit(j), (int32_t)sign_bit(j + 1), (int32_t)sign_bit(j + 2), (int32_t)sign_bit(j + 3));
}

// Stages h = 1 and 2 inside each vector, then h = 4, 8, ... between vectors. a + (-b) is
// a - b exactly in IEEE arithmetic (the inputs here are finite or only compared).
INLINE void fwht_simd(v128_t *v, const int G) {
    const v128_t neg13 = wasm_i32x4_make(0, INT32_MIN, 0, INT32_MIN);
    const v128_t neg23 = wasm_i32x4_make(0, 0, INT32_MIN, INT32_MIN);
    for (int i = 0; i < G / 4; i++) {
        v128_t a = wasm_i32x4_shuffle(v[i], v[i], 0, 0, 2, 2), b = wasm_i32x4_shuffle(v[i], v[i], 1, 1, 3, 3);
        v[i] = wasm_f32x4_add(a, wasm_v128_xor(b, neg13)); // (a0 + a1, a0 - a1, a2 + a3, a2 - a3)
        a = wasm_i32x4_shuffle(v[i], v[i], 0, 1, 0, 1);
        b = wasm_i32x4_shuffle(v[i], v[i], 2, 3, 2, 3);
        v[i] = wasm_f32x4_add(a, wasm_v128_xor(b, neg23)); // (a0 + a2, a1 + a3, a0 - a2, a1 - a3)
    }
    for (int h = 1; h < G / 4; h *= 2)
        for (int i = 0; i < G / 4; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                v128_t a = v[j], b = v[j + h];
                v[j] = wasm_f32x4_add(a, b);
                v[j + h] = wasm_f32x4_sub(a, b);
            }
}

INLINE float sumsq_simd(const v128_t *v, const int G) { // the same four lanes as sumsq_scalar
    v128_t acc = wasm_f32x4_splat(0.0f);
    for (int i = 0; i < G / 4; i++) acc = wasm_f32x4_add(acc, wasm_f32x4_mul(v[i], v[i]));
    return (wasm_f32x4_extract_lane(acc, 0) + wasm_f32x4_extract_lane(acc, 1)) +
           (wasm_f32x4_extract_lane(acc, 2) + wasm_f32x4_extract_lane(acc, 3));
}

INLINE void turbo_quant(const float *x, const int G, const int bits, uint8_t *out) {
    const float *c = codebook(bits);
    const int L = 1 << bits;
    v128_t v[KV_GROUP_MAX / 4], k4[KV_GROUP_MAX / 4];
    for (int i = 0; i < G / 4; i++) v[i] = wasm_v128_load(x + 4 * i);
    float n2 = finite_or_zero(sumsq_simd(v, G));
    for (int i = 0; i < G / 4; i++) v[i] = wasm_v128_xor(v[i], signs4(4 * i));
    fwht_simd(v, G);
    v128_t inv = F32(n2 > 0.0f ? 1.0f / __builtin_sqrtf(n2) : 0.0f);
    for (int i = 0; i < G / 4; i++) { // code = how many boundaries lie below z
        v128_t z = wasm_f32x4_mul(v[i], inv), k = wasm_i32x4_splat(0);
        for (int t = 0; t < L - 1; t++) k = wasm_i32x4_sub(k, wasm_f32x4_lt(F32(boundary(c, t)), z));
        k4[i] = k;
    }
    v128_t q[KV_GROUP_MAX / 16];
    for (int c16 = 0; c16 < G / 16; c16++)
        q[c16] = wasm_u8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(k4[4 * c16], k4[4 * c16 + 1]),
                                         wasm_i16x8_narrow_i32x4(k4[4 * c16 + 2], k4[4 * c16 + 3]));
    for (int i = 0; i < G / 4; i++) { // the centroids, for the norm correction
        int32_t k[4] __attribute__((aligned(16)));
        wasm_v128_store(k, k4[i]);
        v[i] = wasm_f32x4_make(c[k[0]], c[k[1]], c[k[2]], c[k[3]]);
    }
    store16(out, f32_to_f16(pminf(F16_MAX, __builtin_sqrtf(n2 / (sumsq_simd(v, G) * (float)G)))));
    if (bits == 4) pack_simd(q, G, 4, 0, 15, out + 2);
    else {
        pack_simd(q, G, 2, 0, 3, out + 2);
        if (bits == 3) pack_simd(q, G, 1, 2, 1, out + 2 + G / 4);
    }
}

INLINE void turbo_dequant(const uint8_t *in, const int G, const int bits, float *y) {
    const float *c = codebook(bits);
    v128_t v[KV_GROUP_MAX / 4];
    for (int c16 = 0; c16 < G / 16; c16++) {
        v128_t q = bits == 4 ? unpack16_simd(in + 2, G, 4, c16) : unpack16_simd(in + 2, G, 2, c16);
        if (bits == 3) q = wasm_v128_or(q, wasm_i8x16_shl(unpack16_simd(in + 2 + G / 4, G, 1, c16), 2));
        uint8_t k[16] __attribute__((aligned(16)));
        wasm_v128_store(k, q);
        for (int i = 0; i < 4; i++)
            v[4 * c16 + i] = wasm_f32x4_make(c[k[4 * i]], c[k[4 * i + 1]], c[k[4 * i + 2]], c[k[4 * i + 3]]);
    }
    fwht_simd(v, G);
    v128_t r = F32(f16_to_f32(load16(in)));
    for (int i = 0; i < G / 4; i++) wasm_v128_store(y + 4 * i, wasm_v128_xor(wasm_f32x4_mul(v[i], r), signs4(4 * i)));
}

#endif

// ---------------------------------------------------------------------------------------
// The rotation on its own (quant's `rotate`): orthonormal, so a row keeps its norm and the
// inverse is the transpose. y = H (s . x) * k, x = s . (H y) * k, k = 1 / sqrt(n) in f32
// (exact for n = 16, 64).
// ---------------------------------------------------------------------------------------

int32_t kv_rotatable(int32_t n) { return n >= 4 && n <= KV_GROUP_MAX && (n & (n - 1)) == 0; }

#ifdef __wasm_simd128__
#define ROT_N_CASES(n, BODY)                                                                   \
    switch (n) {                                                                               \
    case 4: { const int n_ = 4; BODY; } break;                                                 \
    case 8: { const int n_ = 8; BODY; } break;                                                 \
    case 16: { const int n_ = 16; BODY; } break;                                               \
    case 32: { const int n_ = 32; BODY; } break;                                               \
    default: { const int n_ = 64; BODY; } break;                                               \
    }

INLINE void rotate_simd(const float *x, const int n, float *y, const int inverse) {
    v128_t v[KV_GROUP_MAX / 4], k = F32(1.0f / __builtin_sqrtf((float)n));
    for (int i = 0; i < n / 4; i++) {
        v[i] = wasm_v128_load(x + 4 * i);
        if (!inverse) v[i] = wasm_v128_xor(v[i], signs4(4 * i));
    }
    fwht_simd(v, n);
    for (int i = 0; i < n / 4; i++) {
        v128_t r = wasm_f32x4_mul(v[i], k);
        wasm_v128_store(y + 4 * i, inverse ? wasm_v128_xor(r, signs4(4 * i)) : r);
    }
}

void kv_rotate_row(const float *x, int32_t n, float *y) { ROT_N_CASES(n, rotate_simd(x, n_, y, 0)); }
void kv_unrotate_row(float *y, int32_t n) { ROT_N_CASES(n, rotate_simd(y, n_, y, 1)); }
#else
void kv_rotate_row(const float *x, int32_t n, float *y) {
    const float k = 1.0f / __builtin_sqrtf((float)n);
    for (int j = 0; j < n; j++) y[j] = flip(x[j], j);
    fwht_scalar(y, n);
    for (int j = 0; j < n; j++) y[j] = y[j] * k;
}

void kv_unrotate_row(float *y, int32_t n) {
    const float k = 1.0f / __builtin_sqrtf((float)n);
    fwht_scalar(y, n);
    for (int j = 0; j < n; j++) y[j] = flip(y[j] * k, j);
}
#endif

// ---------------------------------------------------------------------------------------
// Rows (formats.c dispatches here)
// ---------------------------------------------------------------------------------------

// (n,) f32 -> n / group blocks
void kv_turbo_quantize_row(int32_t fmt, int32_t group, const float *x, int32_t n, uint8_t *dst) {
    int32_t groups = n / group, bits = fmt - KV_TURBO2 + 2;
    size_t bb = TURBO_BLOCK_BYTES(group, bits);
    switch (bits) {
    case 2: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) turbo_quant(x + g * g_, g_, 2, dst + g * bb)); break;
    case 3: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) turbo_quant(x + g * g_, g_, 3, dst + g * bb)); break;
    default: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) turbo_quant(x + g * g_, g_, 4, dst + g * bb)); break;
    }
}

// n / group blocks -> (n,) f32
void kv_turbo_dequantize_row(int32_t fmt, int32_t group, const uint8_t *src, int32_t n, float *y) {
    int32_t groups = n / group, bits = fmt - KV_TURBO2 + 2;
    size_t bb = TURBO_BLOCK_BYTES(group, bits);
    switch (bits) {
    case 2: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) turbo_dequant(src + g * bb, g_, 2, y + g * g_)); break;
    case 3: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) turbo_dequant(src + g * bb, g_, 3, y + g * g_)); break;
    default: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) turbo_dequant(src + g * bb, g_, 4, y + g * g_)); break;
    }
}

// KV Cache Lab: the low-bit block formats Q3 and Q2 (asymmetric: scale + minimum, as Q4)
// and Q4_0 (symmetric 4-bit, llama.cpp's `-ctk q4_0`).
//
// A group of G values goes through its codes, one per value: quantizing makes the codes,
// then packs them into bit planes; dequantizing unpacks the planes into codes, then scales
// them. The scalar and SIMD versions make the same codes with the same f32 operations
// (kernels.h); the scalar one keeps them in a (G,) byte array, the SIMD one in registers,
// 16 to a v128, and moves them in and out of the planes with shifts and swizzles.
//
// Layouts (P = G/4, P8 = G/8; a "plane" of bits b holds the codes j, j + P', j + 2P', ...
// of the group in the bits 0, b, 2b, ... of byte j, P' = the plane's length):
//   Q2    [fp16 d][fp16 m][P bytes]                the 2-bit codes
//   Q3    [fp16 d][fp16 m][P bytes][P8 bytes]      bits 0-1 of the codes, then bit 2 of code
//                                                  j + s*P8 in bit s of byte j of the last P8
//   Q4_0  [fp16 d][G/2 bytes]                      code j in the low nibble of byte j,
//                                                  code j + G/2 in the high one (as Q4)
//
// Q3, Q2: Q4's rule with 7 and 3 levels: m = fp16 floor of min(x), d = fp16((max - m) / L),
//         code = clamp(nearest((x - m) * id), 0, L), x' = code * d + m.
// Q4_0:   e = the group's extreme value (max(x) if max(x) >= -min(x), else min(x)),
//         d = fp16(e / -8), id = 1 / d (0 when d = 0), code = clamp(nearest(x * id), -8, 7)
//         + 8, x' = (code - 8) * d. e itself lands on -8, so all 16 levels are used; values of
//         the other sign reach at most +7 steps (a clamp of up to one step at +8). This is
//         llama.cpp's q4_0 rule, except that it rounds with +0.5-and-truncate from the
//         unrounded d and takes the first extreme element on a tie of |max| and |min|.

#include "kernels.h"

#define CODES_BYTES KV_GROUP_MAX // one group's codes (scalar)

// ---------------------------------------------------------------------------------------
// Block parameters
// ---------------------------------------------------------------------------------------

// Q4_0 from the group's min and max: writes the fp16 d (negative when e > 0), returns id.
INLINE float q40_params(float mn, float mx, uint16_t *d16) {
    if (!(mn <= mx)) mn = mx = 0.0f;           // all-NaN group
    float e = (-mn > mx ? mn : mx) + 0.0f;     // + 0.0f turns -0 into +0
    float d = pminf(F16_MAX, pmaxf(-F16_MAX, e / -8.0f));
    *d16 = f32_to_f16(d);
    float df = f16_to_f32(*d16);
    return df != 0.0f ? 1.0f / df : 0.0f;
}

// ---------------------------------------------------------------------------------------
// Scalar: min/max, codes, planes, values
// ---------------------------------------------------------------------------------------

INLINE void minmax_scalar(const float *x, const int G, float *mn, float *mx) {
    float lo = __builtin_inff(), hi = -__builtin_inff();
    for (int j = 0; j < G; j++) {
        lo = pminf(lo, x[j]);
        hi = pmaxf(hi, x[j]);
    }
    *mn = lo;
    *mx = hi;
}

INLINE int32_t code_of(float v) { return __builtin_wasm_trunc_saturate_s_i32_f32(v); }

// (G,) -> (G,) codes clamp(nearest((x - m) * id), 0, levels)
INLINE void codes_asym_scalar(const float *x, const int G, float mf, float id, float levels, uint8_t *q) {
    for (int j = 0; j < G; j++) q[j] = (uint8_t)code_of(pminf(levels, pmaxf(0.0f, __builtin_rintf((x[j] - mf) * id))));
}

// (G,) -> (G,) codes clamp(nearest(x * id), -8, 7) + 8
INLINE void codes_q40_scalar(const float *x, const int G, float id, uint8_t *q) {
    for (int j = 0; j < G; j++) q[j] = (uint8_t)(code_of(pminf(7.0f, pmaxf(-8.0f, __builtin_rintf(x[j] * id)))) + 8);
}

INLINE void values_asym_scalar(const uint8_t *q, const int G, float df, float mf, float *y) {
    for (int j = 0; j < G; j++) y[j] = (float)q[j] * df + mf;
}

INLINE void values_q40_scalar(const uint8_t *q, const int G, float df, float *y) {
    for (int j = 0; j < G; j++) y[j] = (float)((int)q[j] - 8) * df;
}

// ---------------------------------------------------------------------------------------
// SIMD: the same arithmetic, 4 values or 16 codes at a time
// ---------------------------------------------------------------------------------------

#ifdef __wasm_simd128__

INLINE void minmax_simd(const float *x, const int G, float *mn, float *mx) {
    v128_t vmn = F32(__builtin_inff()), vmx = F32(-__builtin_inff());
    for (int j = 0; j < G; j += 4) {
        v128_t v = wasm_v128_load(x + j);
        vmn = wasm_f32x4_pmin(vmn, v);
        vmx = wasm_f32x4_pmax(vmx, v);
    }
    *mn = hmin4(vmn);
    *mx = hmax4(vmx);
}

INLINE void values_asym16(v128_t q, float df, float mf, float *y) { // 16 codes -> code * d + m
    for (int k = 0; k < 4; k++) wasm_v128_store(y + 4 * k, u8_expand4(q, k, F32(df), F32(mf)));
}

INLINE void values_q40_16(v128_t q, float df, float *y) { // 16 codes -> (code - 8) * d
    v128_t w[2] = {wasm_u16x8_extend_low_u8x16(q), wasm_u16x8_extend_high_u8x16(q)};
    for (int k = 0; k < 4; k++) {
        v128_t u = (k & 1) ? wasm_u32x4_extend_high_u16x8(w[k >> 1]) : wasm_u32x4_extend_low_u16x8(w[k >> 1]);
        v128_t s = wasm_i32x4_sub(u, wasm_i32x4_splat(8));
        wasm_v128_store(y + 4 * k, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), F32(df)));
    }
}

// ---- one group

INLINE void qa_quant(const float *x, const int G, const int bits, uint8_t *out) {
    const float levels = bits == 3 ? 7.0f : 3.0f;
    float mn, mx, mf;
    minmax_simd(x, G, &mn, &mx);
    uint16_t d16, m16;
    float id = qa_params(mn, mx, levels, &d16, &m16, &mf);
    store16(out, d16);
    store16(out + 2, m16);
    v128_t q[KV_GROUP_MAX / 16];
    for (int c = 0; c < G / 16; c++) q[c] = quant16(x + 16 * c, F32(mf), F32(id), F32(0.0f), F32(levels));
    pack_simd(q, G, 2, 0, 3, out + 4);
    if (bits == 3) pack_simd(q, G, 1, 2, 1, out + 4 + G / 4);
}

INLINE void qa_dequant(const uint8_t *in, const int G, const int bits, float *y) {
    float df = f16_to_f32(load16(in)), mf = f16_to_f32(load16(in + 2));
    for (int c = 0; c < G / 16; c++) {
        v128_t q = unpack16_simd(in + 4, G, 2, c);
        if (bits == 3) q = wasm_v128_or(q, wasm_i8x16_shl(unpack16_simd(in + 4 + G / 4, G, 1, c), 2));
        values_asym16(q, df, mf, y + 16 * c);
    }
}

// quant16's (x - 0.0f) * id is x * id exactly (x - +0 == x, -0 included)
INLINE void q40_quant(const float *x, const int G, uint8_t *out) {
    float mn, mx;
    minmax_simd(x, G, &mn, &mx);
    uint16_t d16;
    float id = q40_params(mn, mx, &d16);
    store16(out, d16);
    v128_t q[KV_GROUP_MAX / 16];
    for (int c = 0; c < G / 16; c++)
        q[c] = wasm_i8x16_add(quant16(x + 16 * c, F32(0.0f), F32(id), F32(-8.0f), F32(7.0f)), wasm_i8x16_splat(8));
    pack_simd(q, G, 4, 0, 15, out + 2);
}

INLINE void q40_dequant(const uint8_t *in, const int G, float *y) {
    float df = f16_to_f32(load16(in));
    for (int c = 0; c < G / 16; c++) values_q40_16(unpack16_simd(in + 2, G, 4, c), df, y + 16 * c);
}

#else // scalar

// Q2 (bits 2, 3 levels) and Q3 (bits 3, 7 levels): (G,) f32 <-> one block
INLINE void qa_quant(const float *x, const int G, const int bits, uint8_t *out) {
    const float levels = bits == 3 ? 7.0f : 3.0f;
    float mn, mx, mf;
    minmax_scalar(x, G, &mn, &mx);
    uint16_t d16, m16;
    float id = qa_params(mn, mx, levels, &d16, &m16, &mf);
    store16(out, d16);
    store16(out + 2, m16);
    uint8_t q[CODES_BYTES];
    codes_asym_scalar(x, G, mf, id, levels, q);
    pack_scalar(q, G, 2, 0, 3, out + 4);                      // bits 0-1
    if (bits == 3) pack_scalar(q, G, 1, 2, 1, out + 4 + G / 4); // bit 2
}

INLINE void qa_dequant(const uint8_t *in, const int G, const int bits, float *y) {
    uint8_t q[CODES_BYTES];
    unpack_scalar(in + 4, G, 2, 0, 0, q);
    if (bits == 3) unpack_scalar(in + 4 + G / 4, G, 1, 2, 1, q);
    values_asym_scalar(q, G, f16_to_f32(load16(in)), f16_to_f32(load16(in + 2)), y);
}

INLINE void q40_quant(const float *x, const int G, uint8_t *out) {
    float mn, mx;
    minmax_scalar(x, G, &mn, &mx);
    uint16_t d16;
    float id = q40_params(mn, mx, &d16);
    store16(out, d16);
    uint8_t q[CODES_BYTES];
    codes_q40_scalar(x, G, id, q);
    pack_scalar(q, G, 4, 0, 15, out + 2);
}

INLINE void q40_dequant(const uint8_t *in, const int G, float *y) {
    uint8_t q[CODES_BYTES];
    unpack_scalar(in + 2, G, 4, 0, 0, q);
    values_q40_scalar(q, G, f16_to_f32(load16(in)), y);
}

#endif

// ---------------------------------------------------------------------------------------
// Rows (formats.c dispatches here)
// ---------------------------------------------------------------------------------------

size_t kv_lowbit_block_bytes(int32_t fmt, int32_t G) {
    switch (fmt) {
    case KV_Q3: return Q3_BLOCK_BYTES(G);
    case KV_Q2: return Q2_BLOCK_BYTES(G);
    case KV_Q4_0: return Q4_0_BLOCK_BYTES(G);
    }
    return 0;
}

// (n,) f32 -> n / group blocks
void kv_lowbit_quantize_row(int32_t fmt, int32_t group, const float *x, int32_t n, uint8_t *dst) {
    int32_t groups = n / group;
    size_t bb = kv_lowbit_block_bytes(fmt, group);
    switch (fmt) {
    case KV_Q3: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) qa_quant(x + g * g_, g_, 3, dst + g * bb)); break;
    case KV_Q2: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) qa_quant(x + g * g_, g_, 2, dst + g * bb)); break;
    case KV_Q4_0: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) q40_quant(x + g * g_, g_, dst + g * bb)); break;
    }
}

// n / group blocks -> (n,) f32
void kv_lowbit_dequantize_row(int32_t fmt, int32_t group, const uint8_t *src, int32_t n, float *y) {
    int32_t groups = n / group;
    size_t bb = kv_lowbit_block_bytes(fmt, group);
    switch (fmt) {
    case KV_Q3: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) qa_dequant(src + g * bb, g_, 3, y + g * g_)); break;
    case KV_Q2: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) qa_dequant(src + g * bb, g_, 2, y + g * g_)); break;
    case KV_Q4_0: FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++) q40_dequant(src + g * bb, g_, y + g * g_)); break;
    }
}

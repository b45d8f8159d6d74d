// KV Cache Lab: what the format kernels share (formats.c, lowbit.c, turbo.c): the pinned rounding,
// fp16 conversion, block parameters and the v128 building blocks.
//
// Every kernel exists twice: a scalar version and, under __wasm_simd128__, a v128 version.
// The build compiles each file once with -msimd128 (kvstore.wasm) and once without
// (kvstore-scalar.wasm). Both must give the same bytes, and the same bytes as the NumPy
// reference (tests/reference/kvstore_ref.py), so the rounding is pinned:
//   - only IEEE f32 add/sub/mul/div and round-half-even (f32.nearest) are used, each in
//     the same order per element, never fused (wasm has no fma; -ffp-contract=off anyway);
//   - reductions are min/max, which are exact, so lane order does not matter; their
//     -0/+0 ties are normalised (x + 0.0f) before use;
//   - min/max/clamp use the wasm "pseudo" min/max semantics in both versions:
//     pmin(a, b) = b < a ? b : a, pmax(a, b) = a < b ? b : a (a NaN b keeps a), so even
//     NaN inputs give the same bytes scalar and SIMD (NaN is otherwise undefined input);
//   - fp16 conversion is integer bit manipulation plus one f32 add for subnormals (wasm has
//     no f16 instructions), round-to-nearest-even, overflow to inf, as numpy's astype.

#ifndef KV_KERNELS_H
#define KV_KERNELS_H

#include "kvstore.h"

#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

#define INLINE static inline __attribute__((always_inline, unused))

// ---------------------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------------------

INLINE uint32_t fbits(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    return u;
}
INLINE float bitsf(uint32_t u) {
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
INLINE float pminf(float a, float b) { return b < a ? b : a; } // == wasm f32x4.pmin lane
INLINE float pmaxf(float a, float b) { return a < b ? b : a; } // == wasm f32x4.pmax lane

// f32 -> f16 bits, round to nearest even (after F. Giesen's float_to_half_fast3_rtne).
INLINE uint16_t f32_to_f16(float f) {
    uint32_t x = fbits(f);
    uint32_t sign = x & 0x80000000u;
    x ^= sign;
    uint32_t o;
    if (x >= 0x47800000u) { // |f| >= 65536, inf or NaN (65520..65536 overflow below)
        o = x > 0x7f800000u ? (0x7e00u | ((x >> 13) & 0x3ffu)) : 0x7c00u; // quiet NaN / inf
    } else if (x < 0x38800000u) { // |f| < 2^-14: a subnormal half (or zero)
        // Adding 0.5 puts the half's subnormal ulp (2^-24) at the float's last mantissa
        // bit, so the f32 add itself rounds to nearest even.
        o = fbits(bitsf(x) + 0.5f) - 0x3f000000u;
    } else { // normal: rebias the exponent, round the 13 dropped bits to nearest even
        uint32_t odd = (x >> 13) & 1u;
        o = (x + 0xc8000fffu + odd) >> 13; // 0xc8000000 = (15 - 127) << 23
    }
    return (uint16_t)((sign >> 16) | o);
}

// f16 bits -> f32, exact.
INLINE float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = o & 0x0f800000u;
    o += 112u << 23; // (127 - 15) << 23
    if (exp == 0x0f800000u) {
        o += 112u << 23; // inf / NaN: exponent all ones
    } else if (exp == 0) {
        o = fbits(bitsf(o + (1u << 23)) - bitsf(113u << 23)); // subnormal: exact renormalise
    }
    return bitsf(o | sign);
}

// f32 -> f16 bits rounded toward -inf, for |f| <= 65504 (Q4's minimum: m <= f).
INLINE uint16_t f32_to_f16_floor(float f) {
    uint16_t h = f32_to_f16(f);
    if (f16_to_f32(h) > f) h = (h & 0x8000u) ? (uint16_t)(h + 1u) : (h ? (uint16_t)(h - 1u) : 0x8001u);
    return h;
}

INLINE void store16(uint8_t *p, uint16_t v) { __builtin_memcpy(p, &v, 2); }
INLINE uint16_t load16(const uint8_t *p) {
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return v;
}

// ---------------------------------------------------------------------------------------
// Block parameters (shared by scalar and SIMD: computed once per group, in scalar f32)
// ---------------------------------------------------------------------------------------

// Asymmetric b-bit blocks (Q4, Q3, Q2: levels = 2^b - 1) from the group's min and max:
// writes fp16 d and m, returns id, *mf = f32(m).
INLINE float qa_params(float mn, float mx, const float levels, uint16_t *d16, uint16_t *m16, float *mf) {
    if (!(mn <= mx)) mn = mx = 0.0f; // all-NaN group
    mn = pminf(F16_MAX, pmaxf(-F16_MAX, mn + 0.0f)); // +0.0f turns -0 into +0
    *m16 = f32_to_f16_floor(mn);
    *mf = f16_to_f32(*m16);
    float d = pmaxf(0.0f, pminf(F16_MAX, (mx - *mf) / levels)); // pmax(0, -0) = +0
    *d16 = f32_to_f16(d);
    float df = f16_to_f32(*d16);
    return df > 0.0f ? 1.0f / df : 0.0f;
}

// ---------------------------------------------------------------------------------------
// Bit planes (lowbit.c, turbo.c): a plane of b bits holds the codes j, j + P, j + 2P, ... of
// a group of G codes in bits 0, b, 2b, ... of its byte j, P = G * b / 8 its length
// ---------------------------------------------------------------------------------------

// Pack ((code >> shift) & mask) of G codes into planes of `bits` bits: (G,) -> (G*bits/8,)
INLINE void pack_scalar(const uint8_t *q, const int G, const int bits, const int shift, const int mask, uint8_t *out) {
    const int planes = 8 / bits, P = G / planes;
    for (int j = 0; j < P; j++) {
        int b = 0;
        for (int s = 0; s < planes; s++) b |= ((q[j + s * P] >> shift) & mask) << (s * bits);
        out[j] = (uint8_t)b;
    }
}

// The inverse: codes (|)= field << shift; or_into = 0 sets the codes, 1 adds the bits.
INLINE void unpack_scalar(const uint8_t *in, const int G, const int bits, const int shift, const int or_into,
                          uint8_t *q) {
    const int planes = 8 / bits, P = G / planes, mask = (1 << bits) - 1;
    for (int j = 0; j < P; j++)
        for (int s = 0; s < planes; s++) {
            int v = ((in[j] >> (s * bits)) & mask) << shift;
            q[j + s * P] = (uint8_t)(or_into ? (q[j + s * P] | v) : v);
        }
}

// ---------------------------------------------------------------------------------------
// v128 building blocks
// ---------------------------------------------------------------------------------------

#ifdef __wasm_simd128__

#define U32(c) wasm_u32x4_splat((uint32_t)(c))
#define F32(c) wasm_f32x4_splat(c)

INLINE float hmax4(v128_t v) { // exact; lanes hold no NaN (pmax chains drop NaN)
    float a = pmaxf(wasm_f32x4_extract_lane(v, 0), wasm_f32x4_extract_lane(v, 1));
    float b = pmaxf(wasm_f32x4_extract_lane(v, 2), wasm_f32x4_extract_lane(v, 3));
    return pmaxf(a, b);
}
INLINE float hmin4(v128_t v) {
    float a = pminf(wasm_f32x4_extract_lane(v, 0), wasm_f32x4_extract_lane(v, 1));
    float b = pminf(wasm_f32x4_extract_lane(v, 2), wasm_f32x4_extract_lane(v, 3));
    return pminf(a, b);
}

// (4,) f32 -> (4,) u32 lanes holding f16 bits; lane for lane f32_to_f16.
INLINE v128_t f16_from_f32x4(v128_t f) {
    v128_t sign = wasm_v128_and(f, U32(0x80000000u));
    v128_t x = wasm_v128_xor(f, sign);
    v128_t mant = wasm_u32x4_shr(x, 13);
    v128_t infnan = wasm_v128_bitselect(wasm_v128_or(U32(0x7e00u), wasm_v128_and(mant, U32(0x3ffu))),
                                        U32(0x7c00u), wasm_u32x4_gt(x, U32(0x7f800000u)));
    v128_t sub = wasm_i32x4_sub(wasm_f32x4_add(x, F32(0.5f)), U32(0x3f000000u));
    v128_t nrm = wasm_u32x4_shr(
        wasm_i32x4_add(wasm_i32x4_add(x, U32(0xc8000fffu)), wasm_v128_and(mant, U32(1))), 13);
    v128_t o = wasm_v128_bitselect(sub, nrm, wasm_u32x4_lt(x, U32(0x38800000u)));
    o = wasm_v128_bitselect(infnan, o, wasm_u32x4_ge(x, U32(0x47800000u)));
    return wasm_v128_or(o, wasm_u32x4_shr(sign, 16));
}

// (4,) u32 lanes holding f16 bits -> (4,) f32; lane for lane f16_to_f32.
INLINE v128_t f16_to_f32x4(v128_t h) {
    v128_t sign = wasm_i32x4_shl(wasm_v128_and(h, U32(0x8000u)), 16);
    v128_t o = wasm_i32x4_shl(wasm_v128_and(h, U32(0x7fffu)), 13);
    v128_t exp = wasm_v128_and(o, U32(0x0f800000u));
    o = wasm_i32x4_add(o, U32(112u << 23));
    v128_t o_inf = wasm_i32x4_add(o, U32(112u << 23));
    v128_t o_sub = wasm_f32x4_sub(wasm_i32x4_add(o, U32(1u << 23)), U32(113u << 23));
    o = wasm_v128_bitselect(o_inf, o, wasm_i32x4_eq(exp, U32(0x0f800000u)));
    o = wasm_v128_bitselect(o_sub, o, wasm_i32x4_eq(exp, U32(0)));
    return wasm_v128_or(o, sign);
}

// (16,) f32 -> (16,) i8: clamp(nearest((x - sub) * id), lo, hi), lo/hi within [-128, 127].
INLINE v128_t quant16(const float *x, v128_t sub, v128_t vid, v128_t lo, v128_t hi) {
    v128_t q[4];
    for (int k = 0; k < 4; k++) {
        v128_t v = wasm_f32x4_sub(wasm_v128_load(x + 4 * k), sub);
        v = wasm_f32x4_pmin(hi, wasm_f32x4_pmax(lo, wasm_f32x4_nearest(wasm_f32x4_mul(v, vid))));
        q[k] = wasm_i32x4_trunc_sat_f32x4(v);
    }
    return wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(q[0], q[1]),
                                   wasm_i16x8_narrow_i32x4(q[2], q[3]));
}

// (16,) u8 codes -> lanes 4k..4k+3 as f32: code * d + m (multiply, then add).
INLINE v128_t u8_expand4(v128_t bytes_u8, int k, v128_t vd, v128_t vm) {
    v128_t w = (k < 2) ? wasm_u16x8_extend_low_u8x16(bytes_u8) : wasm_u16x8_extend_high_u8x16(bytes_u8);
    v128_t u = (k & 1) ? wasm_u32x4_extend_high_u16x8(w) : wasm_u32x4_extend_low_u16x8(w);
    return wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_convert_i32x4(u), vd), vm);
}

// The first n bytes of v to p, n in {2, 4, 8, 16}.
INLINE void store_n(uint8_t *p, v128_t v, const int n) {
    if (n >= 16) wasm_v128_store(p, v);
    else if (n == 8) wasm_v128_store64_lane(p, v, 0);
    else if (n == 4) wasm_v128_store32_lane(p, v, 0);
    else wasm_v128_store16_lane(p, v, 0);
}

// n bytes from p, zeros after them (never reads past p + n: a row can end the memory).
INLINE v128_t load_n(const uint8_t *p, const int n) {
    if (n >= 16) return wasm_v128_load(p);
    if (n == 8) return wasm_v128_load64_zero(p);
    if (n == 4) return wasm_v128_load32_zero(p);
    return wasm_v128_load16_lane(p, wasm_i32x4_splat(0), 0);
}

INLINE v128_t iota8(int k) { // lanes k, k + 1, ..., k + 15
    return wasm_i8x16_add(wasm_i8x16_make(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), wasm_i8x16_splat(k));
}

// The codes stay in registers: q[c] holds codes 16c .. 16c + 15, one per lane. Planes
// shorter than 16 bytes divide 16, so each lies inside one chunk; a swizzle moves it.

// The plane of `bits` bits of the fields (code >> shift) & mask, to out (G * bits / 8 bytes).
INLINE void pack_simd(const v128_t *q, const int G, const int bits, const int shift, const int mask, uint8_t *out) {
    const int planes = 8 / bits, P = G / planes;
    for (int c = 0; c < P; c += 16) { // bytes c .. c + 15 of the plane (or its P bytes)
        v128_t acc = wasm_i32x4_splat(0);
        for (int s = 0; s < planes; s++) {
            const int i = s * P + c; // the code that goes into byte c, bits s * bits
            v128_t v = q[i / 16];
            if (i % 16) v = wasm_i8x16_swizzle(v, iota8(i % 16)); // lanes past the chunk: 0, never stored
            v = wasm_v128_and(wasm_u8x16_shr(v, shift), wasm_u8x16_splat(mask));
            acc = wasm_v128_or(acc, wasm_i8x16_shl(v, s * bits));
        }
        store_n(out + c, acc, P - c < 16 ? P - c : 16);
    }
}

// Codes 16c .. 16c + 15's fields from a plane of `bits` bits at in.
INLINE v128_t unpack16_simd(const uint8_t *in, const int G, const int bits, const int c) {
    const int planes = 8 / bits, P = G / planes;
    const v128_t mask = wasm_u8x16_splat((1 << bits) - 1);
    if (P >= 16) { // the 16 codes come from one plane, bytes j0 .. j0 + 15
        const int i = 16 * c;
        return wasm_v128_and(wasm_u8x16_shr(wasm_v128_load(in + i % P), (i / P) * bits), mask);
    }
    v128_t b = load_n(in, P), acc = wasm_i32x4_splat(0); // lanes >= P are 0
    for (int s = 16 * c / P; s < planes && s * P < 16 * c + 16; s++) {
        // lane l holds code 16c + l = byte l - first of plane s; lanes outside it read a
        // negative index (0) or a byte >= P (0)
        const int first = s * P - 16 * c;
        v128_t v = wasm_v128_and(wasm_u8x16_shr(b, s * bits), mask);
        acc = wasm_v128_or(acc, wasm_i8x16_swizzle(v, iota8(-first)));
    }
    return acc;
}

#endif // __wasm_simd128__

// Dispatch on the group size with G a constant inside each loop, so the group kernels
// unroll completely.
#define FOR_GROUPS(G, BODY)                                                                    \
    switch (G) {                                                                               \
    case 16: { const int g_ = 16; BODY; } break;                                               \
    case 32: { const int g_ = 32; BODY; } break;                                               \
    default: { const int g_ = 64; BODY; } break;                                               \
    }

#endif

// KV Cache Lab: per-channel blocks (KIVI: Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit
// Quantization for KV Cache", ICML 2024). Keys have a few channels with large magnitudes
// at every token; quantizing each channel across tokens (instead of each token across its
// channels) gives those channels a scale of their own, so they no longer stretch the step
// of every other channel.
//
// A block holds G consecutive entries of one KV head (G = the layer's group size). Each of
// the D channels gets an fp16 step d and minimum m over its G values, by Q4's rule
// (kernels.h qa_params) with L = 2^b - 1 levels, b in {4, 3, 2}:
//   m = fp16 floor of min, d = fp16((max - m) / L), code = clamp(nearest((x - m) / d), 0, L),
//   x' = code * d + m  (f32 multiply, then add)
// Layout, so that one entry's codes can be evicted without touching the others':
//   params (D, 2) fp16: [d_0][m_0][d_1][m_1] ...             4 D bytes per block
//   per entry a code row of D b / 8 bytes, the D codes packed as Q4 / Q3 / Q2 pack their
//   G codes (bit planes: kernels.h): b = 4 nibbles (code c low, code c + D/2 high in byte
//   c), b = 3 a 2-bit plane then a 1-bit plane, b = 2 one 2-bit plane.
// D must be a multiple of 16 and at most KV_CHANNEL_DMAX.
//
// The scalar and SIMD versions make the same bytes: min/max are exact whatever the lane,
// and each code and value is the same f32 operations per element (here 4 channels a lane
// group instead of 4 values of a group).

#include "kernels.h"

INLINE float levels_of(int bits) { return (float)((1 << bits) - 1); }

INLINE int32_t code_of(float v) { return __builtin_wasm_trunc_saturate_s_i32_f32(v); }

// One channel's parameters from its min and max (kernels.h qa_params).
INLINE void channel_param(int c, float mn, float mx, int bits, uint8_t *params, float *mf, float *id, float *df) {
    uint16_t d16, m16;
    id[c] = qa_params(mn, mx, levels_of(bits), &d16, &m16, &mf[c]);
    df[c] = f16_to_f32(d16);
    store16(params + 4 * c, d16);
    store16(params + 4 * c + 2, m16);
}

// Each channel's min and max over the G rows of x (G, D), then its parameters.
static void channel_params(const float *x, int G, int D, int bits, uint8_t *params, float *mf, float *id,
                           float *df) {
#ifdef __wasm_simd128__
    for (int c = 0; c < D; c += 4) { // lanes are 4 channels, the rows taken in order
        v128_t vmn = F32(__builtin_inff()), vmx = F32(-__builtin_inff());
        for (int t = 0; t < G; t++) {
            v128_t v = wasm_v128_load(x + (size_t)t * D + c);
            vmn = wasm_f32x4_pmin(vmn, v);
            vmx = wasm_f32x4_pmax(vmx, v);
        }
        float lo[4], hi[4];
        wasm_v128_store(lo, vmn);
        wasm_v128_store(hi, vmx);
        for (int k = 0; k < 4; k++) channel_param(c + k, lo[k], hi[k], bits, params, mf, id, df);
    }
#else
    for (int c = 0; c < D; c++) {
        float mn = __builtin_inff(), mx = -__builtin_inff();
        for (int t = 0; t < G; t++) {
            mn = pminf(mn, x[(size_t)t * D + c]);
            mx = pmaxf(mx, x[(size_t)t * D + c]);
        }
        channel_param(c, mn, mx, bits, params, mf, id, df);
    }
#endif
}

size_t kv_channel_row_bytes(int32_t bits, int32_t D) { return (size_t)D * (size_t)bits / 8; }

int32_t kv_channel_bits(int32_t fmt) { return fmt == KV_Q4 ? 4 : fmt == KV_Q3 ? 3 : fmt == KV_Q2 ? 2 : 0; }

int32_t kv_channel_ok(int32_t fmt, int32_t group, int32_t D) {
    return kv_channel_bits(fmt) && (group == 16 || group == 32 || group == 64) && D >= 16 && D % 16 == 0 &&
           D <= KV_CHANNEL_DMAX;
}

// x (G, D) f32 -> params (4 D bytes) and G code rows of D b / 8 bytes at codes.
void kv_channel_quantize(int32_t bits, int32_t G, const float *x, int32_t D, uint8_t *params, uint8_t *codes) {
    float mf[KV_CHANNEL_DMAX], id[KV_CHANNEL_DMAX], df[KV_CHANNEL_DMAX];
    channel_params(x, G, D, bits, params, mf, id, df);
    const float L = levels_of(bits);
    const size_t rb = kv_channel_row_bytes(bits, D);
    for (int t = 0; t < G; t++) {
        const float *xt = x + (size_t)t * D;
        uint8_t *out = codes + (size_t)t * rb;
#ifdef __wasm_simd128__
        v128_t q[KV_CHANNEL_DMAX / 16];
        for (int c = 0; c < D / 16; c++) { // 16 channels: 4 lanes of per-channel m and 1/d
            v128_t w[4];
            for (int k = 0; k < 4; k++) {
                const int j = 16 * c + 4 * k;
                v128_t v = wasm_f32x4_sub(wasm_v128_load(xt + j), wasm_v128_load(mf + j));
                v = wasm_f32x4_nearest(wasm_f32x4_mul(v, wasm_v128_load(id + j)));
                v = wasm_f32x4_pmin(F32(L), wasm_f32x4_pmax(F32(0.0f), v));
                w[k] = wasm_i32x4_trunc_sat_f32x4(v);
            }
            q[c] = wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(w[0], w[1]), wasm_i16x8_narrow_i32x4(w[2], w[3]));
        }
        if (bits == 4) pack_simd(q, D, 4, 0, 15, out);
        else {
            pack_simd(q, D, 2, 0, 3, out);
            if (bits == 3) pack_simd(q, D, 1, 2, 1, out + D / 4);
        }
#else
        uint8_t q[KV_CHANNEL_DMAX];
        for (int c = 0; c < D; c++) q[c] = (uint8_t)code_of(pminf(L, pmaxf(0.0f, __builtin_rintf((xt[c] - mf[c]) * id[c]))));
        if (bits == 4) pack_scalar(q, D, 4, 0, 15, out);
        else {
            pack_scalar(q, D, 2, 0, 3, out);
            if (bits == 3) pack_scalar(q, D, 1, 2, 1, out + D / 4);
        }
#endif
    }
}

// params and n code rows -> y (n, D) f32 (n <= the block's entries: a block may have lost
// some to eviction; the rows given are the ones to read).
void kv_channel_dequantize(int32_t bits, int32_t n, const uint8_t *params, const uint8_t *codes, int32_t D, float *y) {
    float df[KV_CHANNEL_DMAX], mf[KV_CHANNEL_DMAX];
    for (int c = 0; c < D; c++) {
        df[c] = f16_to_f32(load16(params + 4 * c));
        mf[c] = f16_to_f32(load16(params + 4 * c + 2));
    }
    const size_t rb = kv_channel_row_bytes(bits, D);
    for (int t = 0; t < n; t++) {
        const uint8_t *in = codes + (size_t)t * rb;
        float *yt = y + (size_t)t * D;
#ifdef __wasm_simd128__
        for (int c = 0; c < D / 16; c++) {
            v128_t q = bits == 4 ? unpack16_simd(in, D, 4, c) : unpack16_simd(in, D, 2, c);
            if (bits == 3) q = wasm_v128_or(q, wasm_i8x16_shl(unpack16_simd(in + D / 4, D, 1, c), 2));
            for (int k = 0; k < 4; k++) {
                const int j = 16 * c + 4 * k;
                wasm_v128_store(yt + j, u8_expand4(q, k, wasm_v128_load(df + j), wasm_v128_load(mf + j)));
            }
        }
#else
        uint8_t q[KV_CHANNEL_DMAX];
        if (bits == 4) unpack_scalar(in, D, 4, 0, 0, q);
        else {
            unpack_scalar(in, D, 2, 0, 0, q);
            if (bits == 3) unpack_scalar(in + D / 4, D, 1, 2, 1, q);
        }
        for (int c = 0; c < D; c++) yt[c] = (float)q[c] * df[c] + mf[c];
#endif
    }
}

// ---------------------------------------------------------------------------------------
// Exports (kernels for tests and benchmarks)
// ---------------------------------------------------------------------------------------

// Quantize a block of `group` rows of head_dim f32 at src per channel in fmt (Q4, Q3, Q2)
// into dst: the params (4 head_dim bytes), then the group's code rows. Returns the bytes
// written, or KV_EINVAL.
KV_EXPORT(kv_quantize_channel)
int32_t kv_quantize_channel(int32_t fmt, int32_t group, int32_t src, int32_t head_dim, int32_t dst) {
    if (!kv_channel_ok(fmt, group, head_dim)) return KV_EINVAL;
    int32_t bits = kv_channel_bits(fmt);
    uint8_t *out = (uint8_t *)(uintptr_t)(uint32_t)dst;
    kv_channel_quantize(bits, group, (const float *)(uintptr_t)(uint32_t)src, head_dim, out, out + 4 * head_dim);
    return 4 * head_dim + group * (int32_t)kv_channel_row_bytes(bits, head_dim);
}

// The inverse: such a block at src -> (group, head_dim) f32 at dst. Returns the values written.
KV_EXPORT(kv_dequantize_channel)
int32_t kv_dequantize_channel(int32_t fmt, int32_t group, int32_t src, int32_t head_dim, int32_t dst) {
    if (!kv_channel_ok(fmt, group, head_dim)) return KV_EINVAL;
    const uint8_t *in = (const uint8_t *)(uintptr_t)(uint32_t)src;
    kv_channel_dequantize(kv_channel_bits(fmt), group, in, in + 4 * head_dim, head_dim,
                          (float *)(uintptr_t)(uint32_t)dst);
    return group * head_dim;
}

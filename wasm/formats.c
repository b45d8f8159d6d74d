// KV Cache Lab: the storage formats' kernels (F32, F16, Q8, Q4), the row dispatch over
// every format and the kernel exports. The rounding rules every kernel keeps are in
// kernels.h; Q3, Q2 and Q4_0 are in lowbit.c, TURBO2/3/4 in turbo.c.

#include "kernels.h"

// ---------------------------------------------------------------------------------------
// Block parameters (shared by scalar and SIMD: computed once per group, in scalar f32)
// ---------------------------------------------------------------------------------------

// Q8 from amax = max |x|: returns id, writes the fp16 d.
INLINE float q8_params(float amax, uint16_t *d16) {
    float d = pminf(F16_MAX, amax / 127.0f);
    *d16 = f32_to_f16(d);
    float df = f16_to_f32(*d16);
    return df > 0.0f ? 1.0f / df : 0.0f;
}

// ---------------------------------------------------------------------------------------
// Scalar kernels: one group of G values (or a row, for F16)
// ---------------------------------------------------------------------------------------

INLINE void q8_quant_scalar(const float *x, const int G, uint8_t *out) { // (G,) -> block_q8
    float amax = 0.0f;
    for (int j = 0; j < G; j++) amax = pmaxf(amax, __builtin_fabsf(x[j]));
    uint16_t d16;
    float id = q8_params(amax, &d16);
    store16(out, d16);
    int8_t *qs = (int8_t *)(out + sizeof(block_q8));
    for (int j = 0; j < G; j++) {
        float v = pminf(127.0f, pmaxf(-127.0f, __builtin_rintf(x[j] * id)));
        qs[j] = (int8_t)__builtin_wasm_trunc_saturate_s_i32_f32(v);
    }
}

INLINE void q8_dequant_scalar(const uint8_t *in, const int G, float *y) { // block_q8 -> (G,)
    float df = f16_to_f32(load16(in));
    const int8_t *qs = (const int8_t *)(in + sizeof(block_q8));
    for (int j = 0; j < G; j++) y[j] = (float)qs[j] * df;
}

INLINE void q4_quant_scalar(const float *x, const int G, uint8_t *out) { // (G,) -> block_q4
    float mn = __builtin_inff(), mx = -__builtin_inff();
    for (int j = 0; j < G; j++) {
        mn = pminf(mn, x[j]);
        mx = pmaxf(mx, x[j]);
    }
    uint16_t d16, m16;
    float mf, id = qa_params(mn, mx, 15.0f, &d16, &m16, &mf);
    store16(out, d16);
    store16(out + 2, m16);
    uint8_t *qs = out + sizeof(block_q4);
    for (int j = 0; j < G / 2; j++) {
        float a = pminf(15.0f, pmaxf(0.0f, __builtin_rintf((x[j] - mf) * id)));
        float b = pminf(15.0f, pmaxf(0.0f, __builtin_rintf((x[j + G / 2] - mf) * id)));
        qs[j] = (uint8_t)(__builtin_wasm_trunc_saturate_s_i32_f32(a) |
                          (__builtin_wasm_trunc_saturate_s_i32_f32(b) << 4));
    }
}

INLINE void q4_dequant_scalar(const uint8_t *in, const int G, float *y) { // block_q4 -> (G,)
    float df = f16_to_f32(load16(in)), mf = f16_to_f32(load16(in + 2));
    const uint8_t *qs = in + sizeof(block_q4);
    for (int j = 0; j < G / 2; j++) {
        y[j] = (float)(qs[j] & 15) * df + mf;
        y[j + G / 2] = (float)(qs[j] >> 4) * df + mf;
    }
}

static void f16_quant_scalar(const float *x, int n, uint8_t *out) { // (n,) -> (n,) fp16
    for (int i = 0; i < n; i++) store16(out + 2 * i, f32_to_f16(x[i]));
}

static void f16_dequant_scalar(const uint8_t *in, int n, float *y) { // (n,) fp16 -> (n,)
    for (int i = 0; i < n; i++) y[i] = f16_to_f32(load16(in + 2 * i));
}

// ---------------------------------------------------------------------------------------
// SIMD kernels (v128): the same arithmetic, four lanes at a time
// ---------------------------------------------------------------------------------------

#ifdef __wasm_simd128__


static void f16_quant_simd(const float *x, int n, uint8_t *out) { // (n,) -> (n,) fp16
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v128_t a = f16_from_f32x4(wasm_v128_load(x + i));
        v128_t b = f16_from_f32x4(wasm_v128_load(x + i + 4));
        wasm_v128_store(out + 2 * i, wasm_u16x8_narrow_i32x4(a, b)); // lanes <= 0xffff: exact
    }
    f16_quant_scalar(x + i, n - i, out + 2 * i);
}

static void f16_dequant_simd(const uint8_t *in, int n, float *y) { // (n,) fp16 -> (n,)
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v128_t h = wasm_v128_load(in + 2 * i);
        wasm_v128_store(y + i, f16_to_f32x4(wasm_u32x4_extend_low_u16x8(h)));
        wasm_v128_store(y + i + 4, f16_to_f32x4(wasm_u32x4_extend_high_u16x8(h)));
    }
    f16_dequant_scalar(in + 2 * i, n - i, y + i);
}

INLINE void q8_quant_simd(const float *x, const int G, uint8_t *out) { // (G,) -> block_q8
    v128_t vmax = F32(0.0f);
    for (int j = 0; j < G; j += 4) vmax = wasm_f32x4_pmax(vmax, wasm_f32x4_abs(wasm_v128_load(x + j)));
    uint16_t d16;
    float id = q8_params(hmax4(vmax), &d16);
    store16(out, d16);
    // quant16 computes nearest((x - 0.0f) * id): x - (+0) == x for every x (-0 stays -0),
    // so this is the scalar nearest(x * id) exactly
    for (int j = 0; j < G; j += 16)
        wasm_v128_store(out + sizeof(block_q8) + j,
                        quant16(x + j, F32(0.0f), F32(id), F32(-127.0f), F32(127.0f)));
}

INLINE void q8_dequant_simd(const uint8_t *in, const int G, float *y) { // block_q8 -> (G,)
    v128_t vd = F32(f16_to_f32(load16(in)));
    for (int j = 0; j < G; j += 16) {
        v128_t q = wasm_v128_load(in + sizeof(block_q8) + j);
        v128_t lo = wasm_i16x8_extend_low_i8x16(q), hi = wasm_i16x8_extend_high_i8x16(q);
        v128_t w[4] = {wasm_i32x4_extend_low_i16x8(lo), wasm_i32x4_extend_high_i16x8(lo),
                       wasm_i32x4_extend_low_i16x8(hi), wasm_i32x4_extend_high_i16x8(hi)};
        for (int k = 0; k < 4; k++)
            wasm_v128_store(y + j + 4 * k, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(w[k]), vd));
    }
}

INLINE void q4_quant_simd(const float *x, const int G, uint8_t *out) { // (G,) -> block_q4
    v128_t vmn = F32(__builtin_inff()), vmx = F32(-__builtin_inff());
    for (int j = 0; j < G; j += 4) {
        v128_t v = wasm_v128_load(x + j);
        vmn = wasm_f32x4_pmin(vmn, v);
        vmx = wasm_f32x4_pmax(vmx, v);
    }
    uint16_t d16, m16;
    float mf, id = qa_params(hmin4(vmn), hmax4(vmx), 15.0f, &d16, &m16, &mf);
    store16(out, d16);
    store16(out + 2, m16);
    uint8_t *qs = out + sizeof(block_q4);
    v128_t q[KV_GROUP_MAX / 16]; // (G/16, 16) quants 0..15, one byte each
    for (int c = 0; c < G / 16; c++) q[c] = quant16(x + 16 * c, F32(mf), F32(id), F32(0.0f), F32(15.0f));
    if (G == 16) { // byte j = q[j] | q[j + 8] << 4, j < 8
        v128_t hi = wasm_i8x16_shuffle(q[0], q[0], 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
        wasm_v128_store64_lane(qs, wasm_v128_or(q[0], wasm_i8x16_shl(hi, 4)), 0);
    } else { // byte j = q[j] | q[j + G/2] << 4, 16 bytes at a time
        for (int c = 0; c < G / 32; c++)
            wasm_v128_store(qs + 16 * c, wasm_v128_or(q[c], wasm_i8x16_shl(q[c + G / 32], 4)));
    }
}

INLINE void q4_dequant_simd(const uint8_t *in, const int G, float *y) { // block_q4 -> (G,)
    v128_t vd = F32(f16_to_f32(load16(in))), vm = F32(f16_to_f32(load16(in + 2)));
    const uint8_t *qs = in + sizeof(block_q4);
    if (G == 16) {
        v128_t b = wasm_v128_load64_zero(qs); // 8 bytes: elements j (low) and j + 8 (high)
        v128_t q = wasm_i8x16_shuffle(wasm_v128_and(b, wasm_u8x16_splat(15)), wasm_u8x16_shr(b, 4),
                                      0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        for (int k = 0; k < 4; k++) wasm_v128_store(y + 4 * k, u8_expand4(q, k, vd, vm));
        return;
    }
    for (int c = 0; c < G / 32; c++) {
        v128_t b = wasm_v128_load(qs + 16 * c);
        v128_t lo = wasm_v128_and(b, wasm_u8x16_splat(15)), hi = wasm_u8x16_shr(b, 4);
        for (int k = 0; k < 4; k++) {
            wasm_v128_store(y + 16 * c + 4 * k, u8_expand4(lo, k, vd, vm));
            wasm_v128_store(y + G / 2 + 16 * c + 4 * k, u8_expand4(hi, k, vd, vm));
        }
    }
}

#define Q8_QUANT q8_quant_simd
#define Q8_DEQUANT q8_dequant_simd
#define Q4_QUANT q4_quant_simd
#define Q4_DEQUANT q4_dequant_simd
#define F16_QUANT f16_quant_simd
#define F16_DEQUANT f16_dequant_simd
#else
#define Q8_QUANT q8_quant_scalar
#define Q8_DEQUANT q8_dequant_scalar
#define Q4_QUANT q4_quant_scalar
#define Q4_DEQUANT q4_dequant_scalar
#define F16_QUANT f16_quant_scalar
#define F16_DEQUANT f16_dequant_scalar
#endif

// ---------------------------------------------------------------------------------------
// Copies (F32 rows)
// ---------------------------------------------------------------------------------------

// wasmtime compiles memory.copy into a call to its runtime, which costs more than moving a
// 256-byte row by hand (measured: f32 commits were 2-3x slower than q8 ones). Large
// copies still use memory.copy.
static void copy_bytes(uint8_t *restrict dst, const uint8_t *restrict src, size_t n) {
    if (n >= 4096) {
        __builtin_memmove(dst, src, n);
        return;
    }
    size_t i = 0;
#ifdef __wasm_simd128__
    for (; i + 16 <= n; i += 16) wasm_v128_store(dst + i, wasm_v128_load(src + i));
#else
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        __builtin_memcpy(&v, src + i, 8); // a constant 8: one i64.load, not memory.copy
        __builtin_memcpy(dst + i, &v, 8);
    }
#endif
    for (; i < n; i++) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------
// Rows: dispatch on format and group size (G a constant inside each loop, so the group
// kernels unroll completely)
// ---------------------------------------------------------------------------------------

int32_t kv_valid_format(int32_t fmt, int32_t group, int32_t n) {
    if (fmt < 0 || fmt >= KV_N_FORMATS || n < 0) return 0;
    if (group != 16 && group != 32 && group != 64) return 0;
    if (fmt >= KV_Q8 && fmt != KV_NONE && n % group) return 0; // the formats from Q8 on are group-wise
    return 1;
}

size_t kv_row_bytes(int32_t fmt, int32_t group, int32_t n) {
    switch (fmt) {
    case KV_F32: return 4u * (size_t)n;
    case KV_F16: return 2u * (size_t)n;
    case KV_Q8: return (size_t)(n / group) * Q8_BLOCK_BYTES(group);
    case KV_Q4: return (size_t)(n / group) * Q4_BLOCK_BYTES(group);
    case KV_Q3: case KV_Q2: case KV_Q4_0: return (size_t)(n / group) * kv_lowbit_block_bytes(fmt, group);
    case KV_TURBO2: case KV_TURBO3: case KV_TURBO4:
        return (size_t)(n / group) * TURBO_BLOCK_BYTES(group, fmt - KV_TURBO2 + 2);
    case KV_NONE: return 0;
    }
    return 0;
}

// (n,) f32 -> kv_row_bytes(fmt, group, n) bytes
void kv_quantize_row(int32_t fmt, int32_t group, const float *x, int32_t n, uint8_t *dst) {
    int32_t groups = n / group;
    switch (fmt) {
    case KV_F32: copy_bytes(dst, (const uint8_t *)x, 4u * (size_t)n); break;
    case KV_F16: F16_QUANT(x, n, dst); break;
    case KV_Q8:
        FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++)
                              Q8_QUANT(x + g * g_, g_, dst + g * Q8_BLOCK_BYTES(g_)));
        break;
    case KV_Q4:
        FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++)
                              Q4_QUANT(x + g * g_, g_, dst + g * Q4_BLOCK_BYTES(g_)));
        break;
    case KV_Q3: case KV_Q2: case KV_Q4_0: kv_lowbit_quantize_row(fmt, group, x, n, dst); break;
    case KV_NONE: break; // nothing is stored
    default: kv_turbo_quantize_row(fmt, group, x, n, dst); break;
    }
}

// kv_row_bytes(fmt, group, n) bytes -> (n,) f32
void kv_dequantize_row(int32_t fmt, int32_t group, const uint8_t *src, int32_t n, float *y) {
    int32_t groups = n / group;
    switch (fmt) {
    case KV_F32: copy_bytes((uint8_t *)y, src, 4u * (size_t)n); break;
    case KV_F16: F16_DEQUANT(src, n, y); break;
    case KV_Q8:
        FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++)
                              Q8_DEQUANT(src + g * Q8_BLOCK_BYTES(g_), g_, y + g * g_));
        break;
    case KV_Q4:
        FOR_GROUPS(group, for (int32_t g = 0; g < groups; g++)
                              Q4_DEQUANT(src + g * Q4_BLOCK_BYTES(g_), g_, y + g * g_));
        break;
    case KV_Q3: case KV_Q2: case KV_Q4_0: kv_lowbit_dequantize_row(fmt, group, src, n, y); break;
    case KV_NONE: __builtin_memset(y, 0, 4u * (size_t)n); break;
    default: kv_turbo_dequantize_row(fmt, group, src, n, y); break;
    }
}

// ---------------------------------------------------------------------------------------
// Exports (kernels for tests and benchmarks)
// ---------------------------------------------------------------------------------------

// Quantize n f32 at src into fmt at dst; returns bytes written (or KV_EINVAL).
KV_EXPORT(kv_quantize)
int32_t kv_quantize(int32_t fmt, int32_t group, int32_t src, int32_t n, int32_t dst) {
    if (!kv_valid_format(fmt, group, n)) return KV_EINVAL;
    kv_quantize_row(fmt, group, (const float *)(uintptr_t)(uint32_t)src, n, (uint8_t *)(uintptr_t)(uint32_t)dst);
    return (int32_t)kv_row_bytes(fmt, group, n);
}

// Dequantize n values in fmt at src into f32 at dst; returns n (or KV_EINVAL).
KV_EXPORT(kv_dequantize)
int32_t kv_dequantize(int32_t fmt, int32_t group, int32_t src, int32_t n, int32_t dst) {
    if (!kv_valid_format(fmt, group, n)) return KV_EINVAL;
    kv_dequantize_row(fmt, group, (const uint8_t *)(uintptr_t)(uint32_t)src, n, (float *)(uintptr_t)(uint32_t)dst);
    return n;
}

// Bytes that n values take in fmt with this group size (or KV_EINVAL).
KV_EXPORT(kv_format_bytes) int32_t kv_format_bytes(int32_t fmt, int32_t group, int32_t n) {
    if (!kv_valid_format(fmt, group, n) || n > (1 << 28)) return KV_EINVAL;
    return (int32_t)kv_row_bytes(fmt, group, n);
}

// 1 when this build's kernels are the v128 ones.
KV_EXPORT(kv_simd) int32_t kv_simd(void) {
#ifdef __wasm_simd128__
    return 1;
#else
    return 0;
#endif
}

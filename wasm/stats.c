// KV Cache Lab: quality statistics over the vocabulary (the loops the quality harness
// must not run in Python).
//
// kv_logit_stats compares two next-token distributions given as logits: `ref` (the full
// cache's) and `cmp` (a compressed cache's), at one position with a known next token.
// Everything is accumulated in f64 with the maximum subtracted first (no overflow, and the
// sums keep ~15 digits), from f32 logits; the results are rounded to f32 once, at the end.
// exp and log are our own (no libm): f64 polynomials accurate to a few ulp, so the scalar
// and SIMD builds (this file is scalar in both) and every host give the same numbers.
//

#include "kvstore.h"
#include "mathf64.h"

// ---------------------------------------------------------------------------------------
// kv_logit_stats
// ---------------------------------------------------------------------------------------

#define KV_STATS_N 8 // f32 words written by kv_logit_stats

// Compare two logit vectors of n f32 (ref = the full cache, cmp = the compressed one) at a
// position whose true next token is `target` (-1: none). Writes KV_STATS_N f32 at out:
//
//   out[0] log p_cmp(target)    nats (0 if target < 0)
//   out[1] log p_ref(target)    nats (0 if target < 0)
//   out[2] KL(ref || cmp)       nats, sum p_ref (log p_ref - log p_cmp), clamped at >= 0
//   out[3] top-1 agreement      1 if argmax ref == argmax cmp (first index on ties), else 0
//   out[4] entropy of cmp       nats
//   out[5] entropy of ref       nats
//   out[6] argmax of cmp        (an index, exact in f32 below 2^24)
//   out[7] argmax of ref
//
// With p = e^(x - max) / Z:  log p_i = x_i - max - ln Z;  H = ln Z - sum e_i (x_i - max) / Z;
// KL = sum er_i (r_i - c_i) / Zr - (max_r + ln Zr) + (max_c + ln Zc), which is exactly 0
// when ref == cmp. NaN logits are given no probability; both vectors must have a finite
// maximum (KV_EINVAL otherwise). Returns KV_OK.
KV_EXPORT(kv_logit_stats)
int32_t kv_logit_stats(int32_t ref_ptr, int32_t cmp_ptr, int32_t n, int32_t target, int32_t out_ptr) {
    if (n < 1 || target >= n) return KV_EINVAL;
    const float *r = (const float *)(uintptr_t)(uint32_t)ref_ptr; // (n,)
    const float *c = (const float *)(uintptr_t)(uint32_t)cmp_ptr; // (n,)
    float *out = (float *)(uintptr_t)(uint32_t)out_ptr;           // (KV_STATS_N,)

    // pass 1: maxima and their first indices
    float mr = -__builtin_inff(), mc = -__builtin_inff();
    int32_t ar = 0, ac = 0;
    for (int32_t i = 0; i < n; i++) {
        if (r[i] > mr) { mr = r[i]; ar = i; }
        if (c[i] > mc) { mc = c[i]; ac = i; }
    }
    if (!(mr > -__builtin_inff() && mr < __builtin_inff())) return KV_EINVAL;
    if (!(mc > -__builtin_inff() && mc < __builtin_inff())) return KV_EINVAL;

    // pass 2: partition sums and the weighted sums, all in f64
    double zr = 0.0, zc = 0.0, a = 0.0, hr = 0.0, hc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double xr = (double)r[i] - (double)mr, xc = (double)c[i] - (double)mc;
        double er = exp_f64(xr), ec = exp_f64(xc);
        zr += er;
        zc += ec;
        if (er > 0.0) { a += er * ((double)r[i] - (double)c[i]); hr += er * xr; }
        if (ec > 0.0) hc += ec * xc;
    }
    double lzr = log_f64(zr), lzc = log_f64(zc);
    double kl = a / zr - ((double)mr + lzr) + ((double)mc + lzc);
    if (!(kl > 0.0)) kl = 0.0; // rounding can leave a tiny negative; KL is never below 0

    out[0] = target >= 0 ? (float)((double)c[target] - (double)mc - lzc) : 0.0f;
    out[1] = target >= 0 ? (float)((double)r[target] - (double)mr - lzr) : 0.0f;
    out[2] = (float)kl;
    out[3] = ar == ac ? 1.0f : 0.0f;
    out[4] = (float)(lzc - hc / zc);
    out[5] = (float)(lzr - hr / zr);
    out[6] = (float)ac;
    out[7] = (float)ar;
    return KV_OK;
}

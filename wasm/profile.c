// KV Cache Lab: the head profiler's kernels (the loops over tokens and channels that the
// pure-Python profiler, site/kvlab/profile.py, must not run itself).
//
//   kv_rope_unrotate   post-RoPE cached keys -> pre-RoPE keys (the inverse rotation)
//   kv_moments         per-channel sums and energy of a block of rows (collapse scores)
//   kv_moment_scores   collapse score and cross-input cosine from per-input moments
//   kv_range_sums      attention mass on a range of positions, per row (recency, sinks,
//                      retrieval spans)
//   kv_add_rows        accumulate attention rows (heavy hitters)
//   kv_cumshare        cumulative share of the largest values (heavy-hitter concentration)
//
// They run a few thousand times per profile, not per token of a generation, so they are
// plain scalar C in both builds (same bits everywhere); sums are accumulated in f64 and
// rounded to f32 once. Reference: tests/reference/profile_ref.py.

#include "kvstore.h"
#include "mathf64.h"

#define F32P(p) ((float *)(uintptr_t)(uint32_t)(p))
#define F64P(p) ((double *)(uintptr_t)(uint32_t)(p))

// ---------------------------------------------------------------------------------------
// Pre-RoPE keys
// ---------------------------------------------------------------------------------------

// Undo rotate-half RoPE on n rows of `dim` f32 (src and dst: (n, dim); they may be the same
// buffer). Row t was rotated at position pos0 + t, with the angles computed exactly as the
// graph computes them (kv_rope_table, kv_rope_turn in collapse.c: the store's one RoPE),
// the inverse in f64 from the f32 angle: what is left is the f32 rounding of the graph's
// own rotation (~1e-7 relative). Returns KV_OK, or KV_EINVAL (odd or absurd dim, n < 0,
// pos0 < 0, theta <= 1).
KV_EXPORT(kv_rope_unrotate)
int32_t kv_rope_unrotate(int32_t src_ptr, int32_t n, int32_t dim, int32_t pos0, float theta, int32_t dst_ptr) {
    if (n < 0 || dim < 2 || dim > 4096 || (dim & 1) || pos0 < 0 || !(theta > 1.0f)) return KV_EINVAL;
    static float inv[2048];
    kv_rope_table(theta, dim, inv);
    for (int32_t t = 0; t < n; t++)
        kv_rope_turn(F32P(src_ptr) + (size_t)t * dim, dim, inv, pos0 + t, 1, F32P(dst_ptr) + (size_t)t * dim);
    return KV_OK;
}

// ---------------------------------------------------------------------------------------
// Moments and collapse scores
// ---------------------------------------------------------------------------------------

// Accumulate n rows of `dim` f32 (src: (n, dim)) into acc, (dim + 2) f64:
//   acc[0..dim)  += sum over rows of x      acc[dim] += sum of |x|^2      acc[dim+1] += n
// Returns KV_OK or KV_EINVAL.
KV_EXPORT(kv_moments)
int32_t kv_moments(int32_t src_ptr, int32_t n, int32_t dim, int32_t acc_ptr) {
    if (n < 0 || dim < 1 || dim > 4096) return KV_EINVAL;
    const float *src = F32P(src_ptr); // (n, dim)
    double *acc = F64P(acc_ptr);      // (dim + 2,)
    double energy = 0.0;
    for (int32_t t = 0; t < n; t++) {
        const float *x = src + (size_t)t * dim;
        for (int32_t j = 0; j < dim; j++) {
            acc[j] += (double)x[j];
            energy += (double)x[j] * (double)x[j];
        }
    }
    acc[dim] += energy;
    acc[dim + 1] += (double)n;
    return KV_OK;
}

// From the moments of m inputs (acc: (m, dim + 2) f64, each row as kv_moments fills it)
// write out (2,) f32:
//   out[0] collapse  = |mu|^2 / mean |x|^2, mu the mean row over ALL rows of all inputs:
//                      the share of the energy carried by one shared mean vector, in [0, 1]
//                      (1: every row is the same vector; ~0: rows scatter around zero)
//   out[1] cross-input cosine = mean over input pairs of cos(mu_a, mu_b), mu_a the mean
//                      row of input a (1 when m == 1; 0 for a zero mean)
// Returns KV_OK, or KV_EINVAL (m < 1, or no rows / no energy at all).
KV_EXPORT(kv_moment_scores)
int32_t kv_moment_scores(int32_t acc_ptr, int32_t m, int32_t dim, int32_t out_ptr) {
    if (m < 1 || m > 4096 || dim < 1 || dim > 4096) return KV_EINVAL;
    const double *acc = F64P(acc_ptr); // (m, dim + 2)
    float *out = F32P(out_ptr);        // (2,)
    const int32_t w = dim + 2;
    double rows = 0.0, energy = 0.0, mu2 = 0.0;
    for (int32_t a = 0; a < m; a++) {
        energy += acc[(size_t)a * w + dim];
        rows += acc[(size_t)a * w + dim + 1];
    }
    if (!(rows > 0.0) || !(energy > 0.0)) return KV_EINVAL;
    for (int32_t j = 0; j < dim; j++) {
        double s = 0.0;
        for (int32_t a = 0; a < m; a++) s += acc[(size_t)a * w + j];
        mu2 += (s / rows) * (s / rows);
    }
    double share = mu2 / (energy / rows);
    out[0] = (float)(share > 1.0 ? 1.0 : share); // <= 1 by Jensen; clamp rounding

    double cos_sum = 0.0;
    int32_t pairs = 0;
    for (int32_t a = 0; a < m; a++) {
        for (int32_t b = a + 1; b < m; b++) {
            const double *sa = acc + (size_t)a * w, *sb = acc + (size_t)b * w;
            double dot = 0.0, na = 0.0, nb = 0.0; // the 1/n factors cancel in the cosine
            for (int32_t j = 0; j < dim; j++) {
                dot += sa[j] * sb[j];
                na += sa[j] * sa[j];
                nb += sb[j] * sb[j];
            }
            cos_sum += (na > 0.0 && nb > 0.0) ? dot / __builtin_sqrt(na * nb) : 0.0;
            pairs++;
        }
    }
    out[1] = pairs ? (float)(cos_sum / pairs) : 1.0f;
    return KV_OK;
}

// ---------------------------------------------------------------------------------------
// Attention rows
// ---------------------------------------------------------------------------------------

// out[r] = sum of src[r * stride + t] for t in [lo, hi), for r < rows (f64 sums, f32 out).
// For an attention output (q_heads, P + S) this is the mass each query head puts on a
// range of positions. Returns KV_OK or KV_EINVAL (bad range).
KV_EXPORT(kv_range_sums)
int32_t kv_range_sums(int32_t src_ptr, int32_t rows, int32_t stride, int32_t lo, int32_t hi, int32_t out_ptr) {
    if (rows < 0 || lo < 0 || hi < lo || hi > stride) return KV_EINVAL;
    const float *src = F32P(src_ptr); // (rows, stride)
    float *out = F32P(out_ptr);       // (rows,)
    for (int32_t r = 0; r < rows; r++) {
        double s = 0.0;
        const float *row = src + (size_t)r * stride;
        for (int32_t t = lo; t < hi; t++) s += (double)row[t];
        out[r] = (float)s;
    }
    return KV_OK;
}

// dst[r * n + t] += src[r * stride + t] for r < rows, t < n (f32): adds the first n
// entries of each attention row into a (rows, n) accumulator. Returns KV_OK or KV_EINVAL.
KV_EXPORT(kv_add_rows)
int32_t kv_add_rows(int32_t dst_ptr, int32_t src_ptr, int32_t rows, int32_t n, int32_t stride) {
    if (rows < 0 || n < 0 || n > stride) return KV_EINVAL;
    float *dst = F32P(dst_ptr);       // (rows, n)
    const float *src = F32P(src_ptr); // (rows, stride)
    for (int32_t r = 0; r < rows; r++)
        for (int32_t t = 0; t < n; t++) dst[(size_t)r * n + t] += src[(size_t)r * stride + t];
    return KV_OK;
}

// Sift-down for a min-heap of floats (heapsort below sorts in descending order).
static void sift_down(float *a, int32_t i, int32_t n) {
    for (;;) {
        int32_t l = 2 * i + 1, m = i;
        if (l < n && a[l] < a[m]) m = l;
        if (l + 1 < n && a[l + 1] < a[m]) m = l + 1;
        if (m == i) return;
        float t = a[i];
        a[i] = a[m];
        a[m] = t;
        i = m;
    }
}

// dst[j] = (sum of the j + 1 largest of the n values at src) / (sum of all), for j < n:
// the concentration curve of accumulated attention (dst[k - 1] is the share held by the
// top k tokens). Values should be >= 0; NaN counts as 0. All zero: dst is all zero.
// src is not changed (dst may not overlap it). Returns KV_OK or KV_EINVAL.
KV_EXPORT(kv_cumshare)
int32_t kv_cumshare(int32_t src_ptr, int32_t n, int32_t dst_ptr) {
    if (n < 0) return KV_EINVAL;
    const float *src = F32P(src_ptr); // (n,)
    float *a = F32P(dst_ptr);         // (n,): sorted in place, then the shares
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) {
        a[i] = src[i] == src[i] ? src[i] : 0.0f;
        total += (double)a[i];
    }
    // heapsort with a min-heap: descending order, in place, O(n log n), no scratch
    for (int32_t i = n / 2 - 1; i >= 0; i--) sift_down(a, i, n);
    for (int32_t end = n - 1; end > 0; end--) {
        float t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(a, 0, end);
    }
    double run = 0.0;
    for (int32_t i = 0; i < n; i++) {
        run += (double)a[i];
        a[i] = total > 0.0 ? (float)(run / total) : 0.0f;
    }
    return KV_OK;
}

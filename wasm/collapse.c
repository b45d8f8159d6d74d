// KV Cache Lab: collapsed keys (kv_collapse) and the one RoPE of the store.
//
// Seed 000 (the KV collapse profiler): some KV heads produce nearly the same pre-RoPE key
// whatever the input, so their keys are one mean vector mu plus a small residual. A
// collapsed head's K entries are stored that way:
//
//   u = RoPE^-1(k, pos)          the cached key back to its pre-RoPE value (the graph's angles)
//   r = u - mu                   the residual, stored in the head's K format (KV_NONE: nothing)
//   staged = RoPE(mu + r', pos)  r' the residual as the format holds it
//
// so the model reads a key rotated to its own position by the same angles the graph uses,
// and what the cache holds is the residual (plus mu once per head: 4 head_dim bytes).
// mu comes from the caller (the head profile's texts) or from the first step that fills
// the head (the prompt's first run; computed here at commit, in f64, rounded once).
//
// RoPE is rotate-half with the graph's angles (builder/onnx_graph.py): inv_freq[j] =
// f32(1 / theta^(2j/dim)), angle = f32(f32(pos) * inv_freq[j]); the rotation itself in f64
// from the f32 angle, rounded to f32 once (reference: tests/reference/profile_ref.py).

#include "cache.h"
#include "mathf64.h"

// inv[j] = f32(1 / theta^(2j/dim)) for j < dim/2: the graph's table (numpy in f64, then f32).
void kv_rope_table(float theta, int32_t dim, float *inv) {
    const double ln_theta = log_f64((double)theta);
    for (int32_t j = 0; j < dim / 2; j++) inv[j] = (float)exp_f64(-ln_theta * (double)(2 * j) / (double)dim);
}

// The angles' cos and sin at one position (c, s: (dim/2,) f64).
static void rope_angles(int32_t dim, const float *inv, int32_t pos, double *c, double *s) {
    const float p = (float)pos;
    for (int32_t j = 0; j < dim / 2; j++) {
        const float a = p * inv[j]; // the f32 product, as onnxruntime's Mul computes it
        sincos_f64((double)a, &s[j], &c[j]);
    }
}

// x (dim,) turned by the angles (c, s) (inverse != 0: turned back) into y; y may be x.
// Forward: y1 = x1 cos a - x2 sin a, y2 = x2 cos a + x1 sin a (x1 = x[j], x2 = x[j + dim/2]).
static void rope_apply(const float *x, int32_t dim, const double *c, const double *s, int32_t inverse, float *y) {
    const int32_t half = dim / 2;
    for (int32_t j = 0; j < half; j++) {
        const double sn = inverse ? -s[j] : s[j];
        const double x1 = x[j], x2 = x[j + half];
        y[j] = (float)(x1 * c[j] - x2 * sn);
        y[j + half] = (float)(x2 * c[j] + x1 * sn);
    }
}

static double rope_c[2048], rope_s[2048]; // the angles of one position, shared by both turns

// One row x (dim,) turned by RoPE at position pos (inverse != 0: turned back) into y; y may
// be x.
void kv_rope_turn(const float *x, int32_t dim, const float *inv, int32_t pos, int32_t inverse, float *y) {
    rope_angles(dim, inv, pos, rope_c, rope_s);
    rope_apply(x, dim, rope_c, rope_s, inverse, y);
}

static inline float *mean_of(const kv_layer *L, int32_t h) { return L->kmean + (size_t)h * kv.head_dim; }
static inline const float *inv_of(const kv_layer *L) { return L->kmean + (size_t)kv.n_kv_heads * kv.head_dim; }

// Collapse the keys of one KV head of a layer: from its next entry on, they are stored as
// the residual from one mean pre-RoPE key mu (head_dim f32 at src; src = 0: the mean of
// the keys of the first step committed after this call or a reset, i.e. the prompt's first
// run), rotated back with RoPE at base theta when staged (one base per layer: the last
// call's, as a model has one). src = -1 uncollapses the head. The
// residual takes the head's K format (kv_configure / kv_configure_head, after which this
// is called: kv_configure clears it; KV_NONE keeps mu alone). KV_EINVAL for a bad layer,
// head, src or theta, an odd head_dim, or per-channel keys (kv_age axis 1: their blocks
// are not residuals); KV_ESTATE if the layer holds entries; KV_ENOMEM (nothing changed).
KV_EXPORT(kv_collapse) int32_t kv_collapse(int32_t layer, int32_t head, float theta, int32_t src) {
    if (!kv.ready) return KV_ESTATE;
    const int32_t H = kv.n_kv_heads, D = kv.head_dim;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= H || src < -1 || (D & 1) || !(theta > 1.0f) ||
        theta > 1e12f)
        return KV_EINVAL;
    kv_layer *L = &kv.layer[layer];
    if (L->axis[0]) return KV_EINVAL;
    if (L->used > 0) return KV_ESTATE;
    if (src == -1) {
        L->cmode[head] = 0;
        int32_t any = 0;
        for (int32_t h = 0; h < H; h++) any |= L->cmode[h];
        if (!any) kv_mfree(L->kmean), L->kmean = 0;
        return KV_OK;
    }
    if (!L->kmean) {
        float *m = kv_malloc(4ull * ((size_t)H * D + D / 2));
        if (!m) return KV_ENOMEM;
        __builtin_memset(m, 0, 4ull * H * D);
        L->kmean = m;
    }
    kv_rope_table(theta, D, L->kmean + (size_t)H * D); // one base per model: the last call's
    if (src) __builtin_memcpy(mean_of(L, head), (const float *)(uintptr_t)(uint32_t)src, 4ull * D);
    else __builtin_memset(mean_of(L, head), 0, 4ull * D);
    L->cmode[head] = src ? 1 : 2;
    return KV_OK;
}

// Whether (and how) a head is collapsed: 0 no, 1 mean given, 2 mean of the first step (not
// taken yet), 3 mean of the first step (taken).
KV_EXPORT(kv_collapsed) int32_t kv_collapsed(int32_t layer, int32_t head) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads) return KV_EINVAL;
    return kv.layer[layer].cmode[head];
}

// Every KV head's collapse mode (as kv_collapsed), in one call: (n_layers, kv_heads) i32 at
// dst. Returns the words written.
KV_EXPORT(kv_collapse_map) int32_t kv_collapse_map(int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    int32_t *out = (int32_t *)(uintptr_t)(uint32_t)dst, w = 0;
    for (int32_t l = 0; l < kv.n_layers; l++)
        for (int32_t h = 0; h < kv.n_kv_heads; h++) out[w++] = kv.layer[l].cmode[h];
    return w;
}

// Copy a collapsed head's mean pre-RoPE key (head_dim f32) to dst; KV_EINVAL if the head
// is not collapsed. (Mode 2: zeros until the first step; mode 3: that step's mean.)
KV_EXPORT(kv_collapse_mean) int32_t kv_collapse_mean(int32_t layer, int32_t head, int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads || !kv.layer[layer].cmode[head])
        return KV_EINVAL;
    __builtin_memcpy((float *)(uintptr_t)(uint32_t)dst, mean_of(&kv.layer[layer], head), 4ull * kv.head_dim);
    return KV_OK;
}

static float row_buf[4096]; // (head_dim,) one pre-RoPE key

// Mode 2 -> 3: mu = the mean pre-RoPE key of the S rows x (S, head_dim) at positions pos0 ...
void kv_collapse_take_mean(kv_layer *L, int32_t h, const float *x, int32_t S, int32_t pos0) {
    const int32_t D = kv.head_dim;
    static double sum[4096];
    for (int32_t j = 0; j < D; j++) sum[j] = 0.0;
    for (int32_t s = 0; s < S; s++) {
        kv_rope_turn(x + (size_t)s * D, D, inv_of(L), pos0 + s, 1, row_buf);
        for (int32_t j = 0; j < D; j++) sum[j] += row_buf[j];
    }
    float *mu = mean_of(L, h);
    for (int32_t j = 0; j < D; j++) mu[j] = (float)(sum[j] / (double)S);
    L->cmode[h] = 3;
}

// The residual of key x (head_dim,) at position pos: RoPE^-1(x, pos) - mu, into r. The
// position's angles stay for kv_collapse_stage, which turns the same entry back.
void kv_collapse_residual(const kv_layer *L, int32_t h, const float *x, int32_t pos, float *r) {
    const int32_t D = kv.head_dim;
    const float *mu = mean_of(L, h);
    rope_angles(D, inv_of(L), pos, rope_c, rope_s);
    rope_apply(x, D, rope_c, rope_s, 1, r);
    for (int32_t j = 0; j < D; j++) r[j] -= mu[j];
}

// The staged key from the residual as held, in place: slot = RoPE(mu + slot, pos) at the
// position of the last kv_collapse_residual call (the same entry's, just before: its
// angles are reused).
void kv_collapse_stage(const kv_layer *L, int32_t h, float *slot) {
    const int32_t D = kv.head_dim;
    const float *mu = mean_of(L, h);
    for (int32_t j = 0; j < D; j++) slot[j] += mu[j];
    rope_apply(slot, D, rope_c, rope_s, 0, slot);
}

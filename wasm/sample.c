// KV Cache Lab: choosing the next token (the vocabulary-sized loops Python must not run).
//
// Determinism: the PRNG is PCG32 and exp() is our own polynomial, so a seed gives the same
// tokens in wasmtime and in the browser (wasm float arithmetic is deterministic), and the
// scalar and SIMD builds give the same tokens too (nothing here depends on the build).

#include "kvstore.h"

#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

// ---------------------------------------------------------------------------------------
// PCG32 (O'Neill, pcg32_srandom_r / pcg32_random_r; 64-bit state stays inside the module)
// ---------------------------------------------------------------------------------------

static uint64_t rng_state = 0x853c49e6748fea9bull, rng_inc = 0xda3e39cb94b95bdbull;

static uint32_t pcg32(void) {
    uint64_t old = rng_state;
    rng_state = old * 6364136223846793005ull + rng_inc;
    uint32_t xs = (uint32_t)(((old >> 18) ^ old) >> 27);
    uint32_t rot = (uint32_t)(old >> 59);
    return (xs >> rot) | (xs << ((-rot) & 31));
}

// Seed the sampler (a u32 passed as i32); the stream id is fixed (54, as in PCG's demo).
KV_EXPORT(kv_seed) int32_t kv_seed(int32_t seed) {
    rng_state = 0;
    rng_inc = (54ull << 1) | 1u;
    pcg32();
    rng_state += (uint32_t)seed;
    pcg32();
    return KV_OK;
}

static float uniform01(void) { return (float)(pcg32() >> 8) * (1.0f / 16777216.0f); } // [0, 1)

// ---------------------------------------------------------------------------------------
// exp for the softmax (no libm): Cephes expf, about 1 ulp on the range used here
// ---------------------------------------------------------------------------------------

static float exp_f32(float x) {
    if (!(x > -87.0f)) return 0.0f; // also NaN -> probability 0
    if (x > 88.0f) x = 88.0f;
    float k = __builtin_rintf(x * 1.44269504088896341f);
    x = x - k * 0.693359375f; // ln 2 split in two (Cody-Waite) for an exact reduction
    x = x - k * -2.12194440e-4f;
    float z = x * x;
    float p = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x +
                4.1665795894e-2f) * x + 1.6666665459e-1f) * x + 5.0000001201e-1f;
    p = p * z + x + 1.0f;
    uint32_t e = (uint32_t)((int32_t)k + 127) << 23; // k in [-126, 127]: a normal 2^k
    float s;
    __builtin_memcpy(&s, &e, 4);
    return p * s;
}

// ---------------------------------------------------------------------------------------
// argmax
// ---------------------------------------------------------------------------------------

// Index of the largest of n f32 (the first on ties; NaN ignored; 0 if all are -inf/NaN).
KV_EXPORT(kv_argmax) int32_t kv_argmax(int32_t ptr, int32_t n) {
    if (n < 1) return KV_EINVAL;
    const float *x = (const float *)(uintptr_t)(uint32_t)ptr;
    int32_t i = 0;
    float best = -__builtin_inff();
#ifdef __wasm_simd128__
    // pass 1: the maximum (pmax drops NaN like the scalar '>' does), pass 2: its first index
    v128_t vm = wasm_f32x4_splat(best);
    for (; i + 4 <= n; i += 4) vm = wasm_f32x4_pmax(vm, wasm_v128_load(x + i));
    for (int lane = 0; lane < 4; lane++) {
        float v = wasm_f32x4_extract_lane(vm, 0);
        vm = wasm_i32x4_shuffle(vm, vm, 1, 2, 3, 0);
        if (v > best) best = v;
    }
    for (; i < n; i++)
        if (x[i] > best) best = x[i];
    if (!(best > -__builtin_inff())) return 0;
    for (i = 0; i < n; i++)
        if (x[i] == best) return i;
    return 0;
#else
    int32_t bi = 0;
    for (; i < n; i++)
        if (x[i] > best) {
            best = x[i];
            bi = i;
        }
    return bi;
#endif
}

// ---------------------------------------------------------------------------------------
// Candidate selection: quickselect on (prob desc, index asc), a total order; no sorting
// ---------------------------------------------------------------------------------------

typedef struct {
    float p;   // unnormalised probability exp((logit - max) / T)
    int32_t i; // token id
} cand;

static cand *scratch;     // (scratch_n,) candidates, kept between calls
static int32_t scratch_n;

// Make room for n candidates. kv_init reserves the vocabulary's worth up front, so this
// block sits below all token memory and a reset cache refills into the same layout.
int32_t kv_sample_reserve(int32_t n) {
    if (scratch_n >= n) return KV_OK;
    cand *s = kv_malloc(sizeof(cand) * (size_t)n);
    if (!s) return KV_ENOMEM;
    kv_mfree(scratch);
    scratch = s;
    scratch_n = n;
    return KV_OK;
}

static inline int better(cand a, cand b) { return a.p > b.p || (a.p == b.p && a.i < b.i); }
static inline void swap(cand *c, int32_t a, int32_t b) {
    cand t = c[a];
    c[a] = c[b];
    c[b] = t;
}

// Partition c[lo, hi) (hi - lo >= 2) around a median-of-three pivot; returns its final
// place s: c[lo, s) are better than c[s], c(s, hi) worse.
static int32_t partition(cand *c, int32_t lo, int32_t hi) {
    int32_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (better(c[mid], c[lo])) swap(c, mid, lo); // lo, mid, last best-first
    if (better(c[last], c[lo])) swap(c, last, lo);
    if (better(c[last], c[mid])) swap(c, last, mid);
    swap(c, mid, last); // the median is the pivot, parked at the end
    cand pv = c[last];
    int32_t s = lo;
    for (int32_t i = lo; i < last; i++)
        if (better(c[i], pv)) swap(c, i, s++);
    swap(c, s, last);
    return s;
}

// Reorder c[0, n) so that its k best come first, in no particular order (1 <= k < n).
static void select_best(cand *c, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n; // invariant: c[0, lo) are kept, c[hi, n) are not
    while (lo < k && k < hi) {
        int32_t s = partition(c, lo, hi);
        if (s == k || s + 1 == k) return;
        if (k < s) hi = s;
        else lo = s + 1;
    }
}

// Reorder c[0, n) so that the smallest set of the best candidates whose mass reaches
// `target` comes first; returns its size (>= 1) and its mass in *kept_mass. The same
// quickselect, steered by mass instead of count: O(n) expected, never a full sort.
static int32_t select_mass(cand *c, int32_t n, float target, float *kept_mass) {
    int32_t lo = 0, hi = n; // c[0, lo) are kept (mass acc < target), the cut is in [lo, hi)
    float acc = 0.0f;
    while (hi - lo > 1) {
        int32_t s = partition(c, lo, hi);
        float m = 0.0f;
        for (int32_t i = lo; i < s; i++) m += c[i].p;
        if (acc + m >= target) {
            hi = s; // the better side alone reaches it
        } else if (acc + m + c[s].p >= target) {
            lo = hi = s + 1; // exactly through the pivot
            acc += m + c[s].p;
        } else {
            acc += m + c[s].p; // keep all of it, pivot included, and look further down
            lo = s + 1;
        }
    }
    if (hi - lo == 1) acc += c[lo++].p; // the last one needed
    if (lo == 0) acc = c[lo++].p;        // at least one token stays
    *kept_mass = acc;
    return lo;
}

// ---------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------

// Sample a token id from n logits at ptr: softmax(logits / temperature), restricted to
// the top_k most likely (top_k <= 0 or >= n: no limit), then to the smallest set of the
// most likely whose mass >= top_p of what is left (top_p <= 0 or >= 1: no limit; at least
// one token always stays). temperature <= 0: argmax. Ties rank the lower id first.
// Returns the id, or KV_EINVAL / KV_ENOMEM (scratch for n candidates).
KV_EXPORT(kv_sample)
int32_t kv_sample(int32_t ptr, int32_t n, float temperature, int32_t top_k, float top_p) {
    if (n < 1 || n > (1 << 24)) return KV_EINVAL;
    if (!(temperature > 0.0f) || n == 1) return kv_argmax(ptr, n);
    const float *x = (const float *)(uintptr_t)(uint32_t)ptr;
    if (kv_sample_reserve(n) != KV_OK) return KV_ENOMEM;
    cand *c = scratch;

    float m = -__builtin_inff();
    for (int32_t i = 0; i < n; i++)
        if (x[i] > m) m = x[i];
    if (!(m > -__builtin_inff()) || m == __builtin_inff()) return kv_argmax(ptr, n);
    for (int32_t i = 0; i < n; i++) c[i] = (cand){exp_f32((x[i] - m) / temperature), i};

    // ---- top-k: the k best to the front (unordered)
    int32_t k = (top_k > 0 && top_k < n) ? top_k : n;
    if (k < n) select_best(c, n, k);
    float z = 0.0f;
    for (int32_t i = 0; i < k; i++) z += c[i].p;

    // ---- top-p: within those, the smallest best set whose mass reaches top_p of theirs
    int32_t keep = k;
    if (top_p > 0.0f && top_p < 1.0f) keep = select_mass(c, k, top_p * z, &z);

    // ---- draw: walk the kept candidates until the running mass passes u * z
    float u = uniform01() * z, acc = 0.0f;
    int32_t pick = c[0].i;
    for (int32_t i = 0; i < keep; i++) {
        acc += c[i].p;
        if (c[i].p > 0.0f) pick = c[i].i; // a rounding overshoot falls back on the last
        if (acc > u) break;                // positive candidate
    }
    return pick;
}

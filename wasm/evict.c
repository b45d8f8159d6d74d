// KV Cache Lab: eviction. Scorers write one score per live entry (higher = keep), one
// selection keeps the best per KV head and compacts, the layer then shrinks to fit.
//
// Order per step (kvpress's ComposedPress warns that a scorer run after a pruning step
// sees stale attention): every scorer first, then one kv_select. A scorer reads the last
// committed step's outputs (attn, staging), mapped onto entries as cache.h describes; any
// eviction or new step ends that mapping (KV_ESTATE for the attention scorers then).
//
// Selection is deterministic: per head, entries rank by (protected first, score
// descending, original position ascending), a total order, so ties go to the earlier
// position and the same scores always keep the same set. Protected: the first `sinks`
// positions, the `recent` newest entries, and entries a scorer marked +inf (the observation
// window of SnapKV, the newest token of TOVA).

#include "cache.h"

#define INF (__builtin_inff())

enum {
    KV_SCORE_ATTN = 0,   // += kernel × attention summed over the KV head's query group (H2O
                         // with kernel 1; a growing kernel weights later steps higher; held)
    KV_SCORE_WINDOW = 1, // SnapKV: the last step's queries, mean, average-pooled, group mean
    KV_SCORE_LAST = 2,   // TOVA: the last step's attention, mean over every query head
    KV_SCORE_KNORM = 3,  // minus the L2 norm of the staged key (K-norm)
    KV_SCORE_RECENT = 4, // the original position: newer ranks higher (StreamingLLM)
    KV_SCORE_MAX = 5,    // the largest, over steps, of the group's mean attention per query
                         // in a step: (sum over group and queries) / (S · G) (held)
    KV_N_SCORES = 6,
};

// ---------------------------------------------------------------------------------------
// Scorers
// ---------------------------------------------------------------------------------------

// Attention column of entry e of head h in the last step's attn (q_heads, step_P + S).
static inline int32_t column(const kv_layer *L, int32_t h, int32_t e) {
    return e < L->prev[h] ? e : L->step_P + (e - L->prev[h]);
}

// Scores shared by every KV head (TOVA, chosen query heads) need every head to hold the
// same entries, so one attention column means one position for all of them.
static int heads_alike(const kv_layer *L) {
    for (int32_t h = 1; h < kv.n_kv_heads; h++) {
        if (L->live[h] != L->live[0] || L->prev[h] != L->prev[0]) return 0;
        if (L->pos)
            for (int32_t e = 0; e < L->live[0]; e++)
                if (L->pos[(size_t)h * L->ccap + e] != L->pos[e]) return 0;
    }
    return 1;
}

// SnapKV's pooled window score of query head q over the entries before the last step of a
// head with m such entries: raw[e] = attn[q][e] / S, pooled[e] = (sum of raw over
// [e - k/2, e + k/2] inside [0, m)) / k (zero padding counted: avg_pool1d's default).
static float pooled(const float *attn_q, int32_t m, int32_t e, int32_t kernel, float S) {
    int32_t r = kernel / 2;
    float acc = 0.0f;
    for (int32_t j = e - r; j <= e + r; j++)
        if (j >= 0 && j < m) acc += attn_q[j] / S;
    return acc / (float)kernel;
}

static void score_layer(kv_layer *L, int32_t kind, int32_t kernel, const float *w) {
    const int32_t H = kv.n_kv_heads, Q = kv.n_q_heads, G = Q / H, D = kv.head_dim;
    const float *attn = (const float *)(uintptr_t)kv_table_layer((int32_t)(L - kv.layer))[6];
    const int32_t T = L->step_P + kv.last_S; // attn row length
    const float S = (float)kv.last_S;
    float wsum = 0.0f;
    if (w)
        for (int32_t q = 0; q < Q; q++) wsum += w[q];
    for (int32_t h = 0; h < H; h++) {
        float *sc = L->score + (size_t)h * L->ccap;
        const int32_t n = L->live[h], m = L->prev[h];
        for (int32_t e = 0; e < n; e++) {
            float s = 0.0f;
            switch (kind) {
            case KV_SCORE_ATTN:
                for (int32_t q = h * G; q < (h + 1) * G; q++) s += attn[(size_t)q * T + column(L, h, e)];
                s = s * (float)kernel + sc[e];
                break;
            case KV_SCORE_MAX:
                for (int32_t q = h * G; q < (h + 1) * G; q++) s += attn[(size_t)q * T + column(L, h, e)];
                s = s / (S * (float)G);
                if (!(s > sc[e])) s = sc[e];
                break;
            case KV_SCORE_WINDOW:
                if (e >= m) {
                    s = INF;
                } else if (w) {
                    for (int32_t q = 0; q < Q; q++)
                        if (w[q] != 0.0f) s += w[q] * pooled(attn + (size_t)q * T, m, e, kernel, S);
                    s /= wsum;
                } else {
                    for (int32_t q = h * G; q < (h + 1) * G; q++) s += pooled(attn + (size_t)q * T, m, e, kernel, S);
                    s /= (float)G;
                }
                break;
            case KV_SCORE_LAST:
                if (e >= m) {
                    s = INF;
                } else {
                    for (int32_t q = 0; q < Q; q++) s += attn[(size_t)q * T + column(L, h, e)];
                    s /= S * (float)Q;
                }
                break;
            case KV_SCORE_KNORM: {
                const float *k = L->stage[0] + ((size_t)h * L->pcap + e) * D;
                for (int32_t d = 0; d < D; d++) s += k[d] * k[d];
                s = -__builtin_sqrtf(s);
                break;
            }
            default: // KV_SCORE_RECENT
                s = (float)kv_entry_pos(L, h, e);
            }
            sc[e] = s;
        }
    }
}

// Score every live entry of a layer (-1: all layers) with one scorer (KV_SCORE_*). kernel:
// SnapKV's pooling width (odd, >= 1); ATTN's weight of this step (>= 1). weights: 0, or (q_heads,) f32 per layer ((n_layers,
// q_heads) for layer -1): WINDOW then weighs the chosen query heads and gives every KV head
// of the layer the same scores. The attention scorers need the last step's outputs
// (KV_ESTATE after an eviction or before any step); shared scores need heads that hold
// the same entries (KV_ESTATE). Scores live until kv_select (ATTN, MAX: across steps,
// counted in kv_bytes(., 2)). KV_ENOMEM if the score lists cannot be allocated; nothing changed.
KV_EXPORT(kv_score) int32_t kv_score(int32_t layer, int32_t kind, int32_t kernel, int32_t weights) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < -1 || layer >= kv.n_layers || kind < 0 || kind >= KV_N_SCORES) return KV_EINVAL;
    if (kind == KV_SCORE_WINDOW && (kernel < 1 || kernel % 2 == 0)) return KV_EINVAL;
    const int32_t lo = layer < 0 ? 0 : layer, hi = layer < 0 ? kv.n_layers : layer + 1, Q = kv.n_q_heads;
    const float *wt = (const float *)(uintptr_t)(uint32_t)weights;
    if (kind == KV_SCORE_ATTN && kernel < 1) return KV_EINVAL;
    const int needs_attn = kind <= KV_SCORE_LAST || kind == KV_SCORE_MAX;
    const int held = kind == KV_SCORE_ATTN || kind == KV_SCORE_MAX;
    for (int32_t l = lo; l < hi; l++) {
        const kv_layer *L = &kv.layer[l];
        if (needs_attn && (!L->step_ok || kv.last_S < 1)) return KV_ESTATE;
        if (kind == KV_SCORE_LAST || (kind == KV_SCORE_WINDOW && wt)) {
            if (!heads_alike(L)) return KV_ESTATE;
        }
        if (kind == KV_SCORE_WINDOW && wt) {
            float s = 0.0f;
            for (int32_t q = 0; q < Q; q++) {
                float x = wt[(size_t)(l - lo) * Q + q];
                if (!(x >= 0.0f) || x == INF) return KV_EINVAL;
                s += x;
            }
            if (!(s > 0.0f)) return KV_EINVAL;
        }
    }
    // Allocate every missing list first, all or nothing. A list made here is marked
    // (score_held = -1, only inside this function) until all exist, so that a failure frees
    // exactly those and leaves the lists a layer already had (scratch or held) untouched.
    for (int32_t l = lo; l < hi; l++) {
        kv_layer *L = &kv.layer[l];
        if (L->score || !L->ccap) continue;
        if (!(L->score = kv_malloc(4ull * kv.n_kv_heads * L->ccap))) {
            for (int32_t j = lo; j < l; j++)
                if (kv.layer[j].score_held < 0) {
                    kv_mfree(kv.layer[j].score);
                    kv.layer[j].score = 0;
                    kv.layer[j].score_held = 0;
                }
            return KV_ENOMEM;
        }
        L->score_held = -1;
    }
    for (int32_t l = lo; l < hi; l++) { // cannot fail from here
        kv_layer *L = &kv.layer[l];
        if (L->score_held < 0) L->score_held = 0;
        if (held && !L->score_held) { // a held accumulation starts at zero
            __builtin_memset(L->score, 0, 4ull * kv.n_kv_heads * L->ccap);
            L->score_held = 1;
        }
        if (L->score) score_layer(L, kind, kernel, wt ? wt + (size_t)(l - lo) * Q : 0);
    }
    return KV_OK;
}

// Write one head's scores (entry order, f32) to dst; returns how many (its live entries),
// or KV_ESTATE while the layer holds no scores.
KV_EXPORT(kv_scores) int32_t kv_scores(int32_t layer, int32_t head, int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads || !dst) return KV_EINVAL;
    const kv_layer *L = &kv.layer[layer];
    if (!L->score) return KV_ESTATE;
    __builtin_memcpy((void *)(uintptr_t)(uint32_t)dst, L->score + (size_t)head * L->ccap, 4ull * L->live[head]);
    return L->live[head];
}

// Stop holding accumulated scores (a layer, -1 all): their memory goes back to the heap.
KV_EXPORT(kv_score_drop) int32_t kv_score_drop(int32_t layer) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < -1 || layer >= kv.n_layers) return KV_EINVAL;
    for (int32_t l = layer < 0 ? 0 : layer; l < (layer < 0 ? kv.n_layers : layer + 1); l++) {
        kv_mfree(kv.layer[l].score);
        kv.layer[l].score = 0;
        kv.layer[l].score_held = 0;
    }
    return KV_OK;
}

// ---------------------------------------------------------------------------------------
// Selection and compaction
// ---------------------------------------------------------------------------------------

typedef struct {
    const kv_layer *L;
    int32_t h, n, sinks, recent;
} ranking;

static inline int protected_entry(const ranking *r, int32_t e) {
    return kv_entry_pos(r->L, r->h, e) < r->sinks || e >= r->n - r->recent ||
           r->L->score[(size_t)r->h * r->L->ccap + e] == INF;
}

// 1 if entry a ranks before entry b: protected first, then the higher score (NaN lowest),
// then the earlier position.
static int before(const ranking *r, int32_t a, int32_t b) {
    int pa = protected_entry(r, a), pb = protected_entry(r, b);
    if (pa != pb) return pa;
    const float *sc = r->L->score + (size_t)r->h * r->L->ccap;
    float sa = sc[a] == sc[a] ? sc[a] : -INF, sb = sc[b] == sc[b] ? sc[b] : -INF;
    if (sa != sb) return sa > sb;
    return kv_entry_pos(r->L, r->h, a) < kv_entry_pos(r->L, r->h, b);
}

// Rearrange idx[0, n) so that its first k are the k best (quickselect, median-of-three).
static void select_best(const ranking *r, int32_t *idx, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2, a = idx[lo], b = idx[mid], c = idx[hi], pivot;
        if (before(r, a, b)) pivot = before(r, b, c) ? b : (before(r, a, c) ? c : a);
        else pivot = before(r, a, c) ? a : (before(r, b, c) ? c : b);
        int32_t i = lo, j = hi;
        while (i <= j) { // Hoare partition: [lo, j] rank before-or-equal, [i, hi] after-or-equal
            while (before(r, idx[i], pivot)) i++;
            while (before(r, pivot, idx[j])) j--;
            if (i <= j) {
                int32_t t = idx[i];
                idx[i++] = idx[j];
                idx[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

// Part p of head h keeps the flagged entries, in order: the rows of those in the format,
// the waiting ones of an aging window, and on a per-channel part each block's count of
// survivors (a block's params go with its last entry). Before live changes.
static void compact_part(kv_layer *L, int p, int32_t h, const uint8_t *keep) {
    const int32_t D = kv.head_dim, n = L->live[h], aged = kv_aged(L, p, h);
    const size_t row = (size_t)L->row[p][h];
    uint8_t *base = kv_row_at(L, p, h, 0);
    float *res = L->res[p] ? L->res[p] + (size_t)h * L->rcap[p] * D : 0;
    int32_t j = 0, kept_aged = 0;
    for (int32_t e = 0; e < n; e++) {
        if (!keep[e]) continue;
        if (e < aged) {
            if (j != e) __builtin_memmove(base + (size_t)j * row, base + (size_t)e * row, row);
            kept_aged++;
        } else if (j - kept_aged != e - aged) {
            __builtin_memmove(res + (size_t)(j - kept_aged) * D, res + (size_t)(e - aged) * D, 4ull * D);
        }
        j++;
    }
    if (L->axis[p]) {
        const size_t pb = KV_CHANNEL_PARAM_BYTES(D);
        int32_t *cnt = L->bcnt[p] + (size_t)h * L->bcap;
        uint8_t *par = L->bpar[p] + (size_t)h * L->bcap * pb;
        int32_t e = 0, nb = 0;
        for (int32_t b = 0; b < L->nblk[p][h]; b++) {
            int32_t left = 0;
            for (int32_t t = 0; t < cnt[b]; t++) left += keep[e++];
            if (!left) continue;
            if (nb != b) __builtin_memmove(par + (size_t)nb * pb, par + (size_t)b * pb, pb);
            cnt[nb++] = left;
        }
        L->nblk[p][h] = nb;
    }
    L->fresh[p][h] = j - kept_aged;
}

// Keep the entries of head h whose flag is set, in order; the rest go (rows, staging,
// positions, scores). pos must exist.
static void compact_head(kv_layer *L, int32_t h, const uint8_t *keep) {
    const int32_t D = kv.head_dim, n = L->live[h];
    for (int p = 0; p < 2; p++) compact_part(L, p, h, keep);
    int32_t j = 0;
    for (int32_t e = 0; e < n; e++) {
        if (!keep[e]) continue;
        if (j != e) {
            for (int p = 0; p < 2; p++) {
                float *st = L->stage[p] + (size_t)h * L->pcap * D;
                __builtin_memmove(st + (size_t)j * D, st + (size_t)e * D, 4ull * D);
            }
            L->pos[(size_t)h * L->ccap + j] = L->pos[(size_t)h * L->ccap + e];
            if (L->score) L->score[(size_t)h * L->ccap + j] = L->score[(size_t)h * L->ccap + e];
        }
        j++;
    }
    for (int p = 0; p < 2; p++) // empty slots are zero, as after a growth
        __builtin_memset(L->stage[p] + ((size_t)h * L->pcap + j) * D, 0, 4ull * (n - j) * D);
    L->live[h] = j;
}

// Give a layer its position lists (identity: entry e is position e until now).
static int32_t *identity_positions(const kv_layer *L) {
    int32_t *pos = kv_malloc(4ull * kv.n_kv_heads * L->ccap);
    if (pos)
        for (int32_t h = 0; h < kv.n_kv_heads; h++)
            for (int32_t e = 0; e < L->ccap; e++) pos[(size_t)h * L->ccap + e] = e;
    return pos;
}

// After compaction: the staging mask, the slots in use, the mapping, the transient scores,
// and the buffers shrunk to fit.
static void settle_layer(kv_layer *L) {
    const int32_t H = kv.n_kv_heads;
    int32_t used = 0;
    for (int32_t h = 0; h < H; h++) used = L->live[h] > used ? L->live[h] : used;
    L->used = used;
    for (int32_t h = 0; h < H; h++)
        for (int32_t t = 0; t < L->pcap; t++) L->mask[(size_t)h * L->pcap + t] = t < L->live[h] ? 0.0f : MASK_EMPTY;
    L->step_ok = 0;
    if (L->score && !L->score_held) {
        kv_mfree(L->score);
        L->score = 0;
    }
    kv_fit_layer(L);
}

// Keep at most budgets[l * kv_heads + h] entries of each head (< 0: keep all), chosen by
// the scores (see the ranking above); `sinks` first positions and `recent` newest entries
// are protected. A head over its budget needs scores (KV_ESTATE). Cancels an open step.
// KV_ENOMEM (nothing changed) if the scratch or a layer's first position list cannot be
// allocated. Returns the number of entries evicted.
KV_EXPORT(kv_select) int32_t kv_select(int32_t budgets, int32_t sinks, int32_t recent) {
    if (!kv.ready) return KV_ESTATE;
    if (sinks < 0 || recent < 0 || budgets <= 0) return KV_EINVAL;
    const int32_t *B = (const int32_t *)(uintptr_t)(uint32_t)budgets, H = kv.n_kv_heads;
    int32_t most = 0;
    for (int32_t l = 0; l < kv.n_layers; l++)
        for (int32_t h = 0; h < H; h++) {
            int32_t b = B[l * H + h];
            if (b < 0 || b >= kv.layer[l].live[h]) continue;
            if (!kv.layer[l].score) return KV_ESTATE;
            if (kv.layer[l].live[h] > most) most = kv.layer[l].live[h];
        }
    if (!most) return 0;
    // ---- allocate everything first: scratch, and the position lists of first evictions
    int32_t *idx = kv_malloc(4ull * most);
    uint8_t *keep = kv_malloc((size_t)most);
    int32_t **made = kv_malloc(sizeof(int32_t *) * (size_t)kv.n_layers);
    int failed = !idx || !keep || !made;
    for (int32_t l = 0; l < kv.n_layers && made; l++) {
        kv_layer *L = &kv.layer[l];
        int cut = 0;
        for (int32_t h = 0; h < H; h++) cut |= B[l * H + h] >= 0 && B[l * H + h] < L->live[h];
        made[l] = 0;
        if (!failed && cut && !L->pos && !(made[l] = identity_positions(L))) failed = 1;
    }
    if (failed) {
        for (int32_t l = 0; l < kv.n_layers && made; l++) kv_mfree(made[l]);
        kv_mfree(made);
        kv_mfree(idx);
        kv_mfree(keep);
        return KV_ENOMEM;
    }
    for (int32_t l = 0; l < kv.n_layers; l++)
        if (made[l]) kv.layer[l].pos = made[l];
    kv_mfree(made);
    // ---- select and compact
    int32_t dropped = 0;
    kv.open_S = 0;
    for (int32_t l = 0; l < kv.n_layers; l++) {
        kv_layer *L = &kv.layer[l];
        int cut = 0;
        for (int32_t h = 0; h < H; h++) {
            int32_t b = B[l * H + h], n = L->live[h];
            if (b < 0 || b >= n) continue;
            ranking r = {L, h, n, sinks, recent};
            for (int32_t e = 0; e < n; e++) idx[e] = e;
            if (b > 0) select_best(&r, idx, n, b);
            __builtin_memset(keep, 0, (size_t)n);
            for (int32_t i = 0; i < b; i++) keep[idx[i]] = 1;
            compact_head(L, h, keep);
            dropped += n - b;
            cut = 1;
        }
        if (cut) settle_layer(L);
    }
    kv_mfree(idx);
    kv_mfree(keep);
    return dropped;
}

// Keep exactly the listed entries of one head (n ascending entry indices at keep_ptr, i32;
// n = 0 keeps none): a tool for tests and hand-made policies. KV_EINVAL for a list that is
// not strictly ascending inside [0, live). Cancels an open step. Returns entries evicted.
KV_EXPORT(kv_evict) int32_t kv_evict(int32_t layer, int32_t head, int32_t keep_ptr, int32_t n) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads || n < 0) return KV_EINVAL;
    kv_layer *L = &kv.layer[layer];
    const int32_t *list = (const int32_t *)(uintptr_t)(uint32_t)keep_ptr, live = L->live[head];
    if (n > live || (n && !keep_ptr)) return KV_EINVAL;
    for (int32_t i = 0; i < n; i++)
        if (list[i] < 0 || list[i] >= live || (i && list[i] <= list[i - 1])) return KV_EINVAL;
    if (n == live) return 0;
    uint8_t *keep = kv_malloc((size_t)live);
    if (!keep) return KV_ENOMEM;
    if (!L->pos && !(L->pos = identity_positions(L))) {
        kv_mfree(keep);
        return KV_ENOMEM;
    }
    __builtin_memset(keep, 0, (size_t)live);
    for (int32_t i = 0; i < n; i++) keep[list[i]] = 1;
    kv.open_S = 0;
    compact_head(L, head, keep);
    settle_layer(L);
    kv_mfree(keep);
    return live - n;
}

// ---------------------------------------------------------------------------------------
// Summaries: a span of positions replaced by one entry (seed 004's chunk summaries)
// ---------------------------------------------------------------------------------------

enum {
    KV_SUM_MEAN = 0,     // K and V: the mean of the span's staged rows (post-RoPE keys)
    KV_SUM_ZERO_KEY = 1, // K = 0 (every query gives it logit 0), V: the mean
    KV_SUM_ZERO = 2,     // K = 0 and V = 0: an entry that only occupies its place
    KV_N_SUMS = 3,
};

// Replace the entries of head h whose positions lie in each span [lo, hi) (n spans of
// three i32 at sp: lo, hi, at) by one entry at position `at`: its K and V are the mean of
// the replaced entries' staged rows (f64 sums in entry order, one f32 rounding) or zeros
// (mode), put into the head's formats like any new entry (so a quantized head's summary
// is quantized, a collapsed key stores its residual at `at`). summary: (2, head_dim) f32
// scratch. Sets keep[] for compaction; returns the entries removed.
static int32_t summarize_head(kv_layer *L, int32_t h, const int32_t *sp, int32_t n, int32_t mode, uint8_t *keep,
                              float *summary) {
    const int32_t D = kv.head_dim, live = L->live[h];
    int32_t removed = 0, e = 0;
    __builtin_memset(keep, 1, (size_t)live);
    for (int32_t i = 0; i < n; i++) {
        const int32_t lo = sp[3 * i], hi = sp[3 * i + 1], at = sp[3 * i + 2];
        while (e < live && kv_entry_pos(L, h, e) < lo) e++;
        int32_t e1 = e;
        while (e1 < live && kv_entry_pos(L, h, e1) < hi) e1++;
        if (e1 == e) continue; // this head keeps nothing there
        for (int p = 0; p < 2; p++) {
            float *x = summary + (size_t)p * D;
            if (mode == KV_SUM_ZERO || (p == 0 && mode == KV_SUM_ZERO_KEY)) {
                __builtin_memset(x, 0, 4ull * D);
                continue;
            }
            for (int32_t d = 0; d < D; d++) {
                double acc = 0.0;
                for (int32_t j = e; j < e1; j++) acc += (double)L->stage[p][((size_t)h * L->pcap + j) * D + d];
                x[d] = (float)(acc / (double)(e1 - e));
            }
        }
        for (int p = 0; p < 2; p++) {
            if (e < kv_aged(L, p, h)) {
                kv_store_entry(L, p, h, e, summary + (size_t)p * D, at);
            } else { // inside an aging window: it waits exact, like the entries it replaces
                float *res = L->res[p] + ((size_t)h * L->rcap[p] + (e - kv_aged(L, p, h))) * D;
                __builtin_memcpy(res, summary + (size_t)p * D, 4ull * D);
                __builtin_memcpy(L->stage[p] + ((size_t)h * L->pcap + e) * D, summary + (size_t)p * D, 4ull * D);
            }
        }
        if (L->score) { // a held score (H2O's attention) is the span's total
            float *sc = L->score + (size_t)h * L->ccap, t = 0.0f;
            for (int32_t j = e; j < e1; j++) t += sc[j];
            sc[e] = t;
        }
        L->pos[(size_t)h * L->ccap + e] = at;
        for (int32_t j = e + 1; j < e1; j++) keep[j] = 0;
        removed += e1 - e - 1;
        e = e1;
    }
    return removed;
}

// Replace spans of positions by one summary entry each, in every KV head of a layer (-1:
// all layers): sp holds n spans (lo, hi, at) as i32, ascending and disjoint (lo < hi <=
// next lo, hi <= tokens appended), with lo <= at < hi: the summary's position (the cache map and the position
// list show it there; its key is whatever the mode makes it, never re-rotated). A head
// that keeps no entry in a span is left as it is there. mode: KV_SUM_*. KV_ESTATE on a
// per-channel part (its blocks span entries: a summary cannot replace part of one);
// KV_ENOMEM (nothing changed) if the scratch or a position list cannot be allocated.
// Cancels an open step. Returns the entries removed.
KV_EXPORT(kv_summarize) int32_t kv_summarize(int32_t layer, int32_t spans, int32_t n, int32_t mode) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < -1 || layer >= kv.n_layers || n < 0 || (n && !spans) || mode < 0 || mode >= KV_N_SUMS)
        return KV_EINVAL;
    const int32_t *sp = (const int32_t *)(uintptr_t)(uint32_t)spans, H = kv.n_kv_heads;
    for (int32_t i = 0; i < n; i++) {
        const int32_t lo = sp[3 * i], hi = sp[3 * i + 1], at = sp[3 * i + 2];
        if (lo < 0 || hi <= lo || hi > kv.appended || at < lo || at >= hi || (i && lo < sp[3 * i - 2]))
            return KV_EINVAL;
    }
    const int32_t l0 = layer < 0 ? 0 : layer, l1 = layer < 0 ? kv.n_layers : layer + 1;
    int32_t most = 0;
    for (int32_t l = l0; l < l1; l++) {
        const kv_layer *L = &kv.layer[l];
        if (L->axis[0] || L->axis[1]) return KV_ESTATE;
        for (int32_t h = 0; h < H; h++) most = L->live[h] > most ? L->live[h] : most;
    }
    if (!n || !most) return 0;
    // ---- allocate first: the summary's K and V (f32, aligned first) then the flags, and the
    // position lists of layers that have none
    float *summary = kv_malloc(8ull * kv.head_dim + (size_t)most);
    uint8_t *keep = summary ? (uint8_t *)(summary + 2 * (size_t)kv.head_dim) : 0;
    int32_t **made = kv_malloc(sizeof(int32_t *) * (size_t)kv.n_layers);
    int failed = !keep || !made;
    for (int32_t l = 0; l < kv.n_layers && made; l++) {
        made[l] = 0;
        if (!failed && l >= l0 && l < l1 && !kv.layer[l].pos && !(made[l] = identity_positions(&kv.layer[l])))
            failed = 1;
    }
    if (failed) {
        for (int32_t l = 0; l < kv.n_layers && made; l++) kv_mfree(made[l]);
        kv_mfree(made);
        kv_mfree(summary);
        return KV_ENOMEM;
    }
    for (int32_t l = 0; l < kv.n_layers; l++)
        if (made[l]) kv.layer[l].pos = made[l];
    kv_mfree(made);
    // ---- summarize and compact (cannot fail from here)
    int32_t removed = 0;
    kv.open_S = 0;
    for (int32_t l = l0; l < l1; l++) {
        kv_layer *L = &kv.layer[l];
        for (int32_t h = 0; h < H; h++) {
            int32_t r = summarize_head(L, h, sp, n, mode, keep, summary);
            if (r) compact_head(L, h, keep);
            removed += r;
        }
        settle_layer(L);
    }
    kv_mfree(summary);
    return removed;
}

// ---------------------------------------------------------------------------------------
// What is kept: positions, the cache map
// ---------------------------------------------------------------------------------------

// Write the original positions of one head's live entries (ascending) to dst (i32);
// returns how many.
KV_EXPORT(kv_positions) int32_t kv_positions(int32_t layer, int32_t head, int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads) return KV_EINVAL;
    const kv_layer *L = &kv.layer[layer];
    int32_t *out = (int32_t *)(uintptr_t)(uint32_t)dst;
    for (int32_t e = 0; e < L->live[head]; e++) out[e] = kv_entry_pos(L, head, e);
    return L->live[head];
}

// The cache map of a layer: for each position t in [0, n), the byte '0' + (bit h set when
// KV head h keeps t), in the digits-then-letters alphabet '0'..'9', 'a'..'v' (kv_heads <= 5).
// Returns n.
KV_EXPORT(kv_keep_map) int32_t kv_keep_map(int32_t layer, int32_t dst, int32_t n) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || n < 0 || kv.n_kv_heads > 5) return KV_EINVAL;
    const kv_layer *L = &kv.layer[layer];
    uint8_t *out = (uint8_t *)(uintptr_t)(uint32_t)dst;
    __builtin_memset(out, 0, (size_t)n);
    for (int32_t h = 0; h < kv.n_kv_heads; h++)
        for (int32_t e = 0; e < L->live[h]; e++) {
            int32_t p = kv_entry_pos(L, h, e);
            if (p < n) out[p] |= (uint8_t)(1u << h);
        }
    for (int32_t t = 0; t < n; t++) out[t] = (uint8_t)(out[t] < 10 ? '0' + out[t] : 'a' + out[t] - 10);
    return n;
}

// KV Cache Lab: the cache (compressed streams + staging) and the step protocol.
//
// Per layer and KV head the cache keeps K and V twice (layout in cache.h):
//   - the compressed stream, in the layer's formats (what the byte counts measure);
//   - the staging copy, fp32, dequantized from the compressed stream: the "materialized
//     past" handed to the model. An entry is dequantized once, when appended, so the model
//     sees exactly what the compressed cache holds and decode never re-dequantizes the past.
// Eviction (evict.c) drops entries per KV head: their rows, staging slots, positions and
// scores go, and the layer's buffers shrink to fit (kv_fit_layer), so the model's P_i
// shrinks too.
//
// The engine runs the model on S new tokens per step:
//   table = kv_step_begin(S)   reserves everything the commit needs (staging capacity,
//                              stream capacity, I/O buffers) or fails changing nothing;
//   host: model(past = staging, new tokens) -> writes new K/V, attn, entropy, logits into
//         the I/O buffers named by the table;
//   kv_step_commit(S)          quantizes the S new tokens of every layer into the streams
//                              and their dequantized values into staging; cannot fail.
//
// Step table (int32 words, stays valid until the next kv_step_begin / reset / init):
//   [0] n_layers  [1] S  [2] logits_ptr (vocab,) f32  [3] reserved (0)
//   per layer i at word 4 + 8 i:
//     past_k_ptr, past_v_ptr   (kv_heads, P_i, head_dim) f32   staging, read by the model
//     past_mask_ptr            (kv_heads, P_i) f32             0 live, -1e9 empty
//     P_i                      staging capacity in slots (the model gets all P_i slots)
//     new_k_ptr, new_v_ptr     (kv_heads, S, head_dim) f32     written by the host
//     attn_ptr                 (q_heads, P_i + S) f32          written by the host
//     entropy_ptr              (q_heads,) f32                  written by the host

#include "cache.h"

kv_state kv;

// What kv_step_begin allocated for one layer before it commits to anything.
typedef struct {
    float *stage[2];
    float *mask;
    int32_t pcap;
    uint8_t *data[2];
    int32_t *pos;
    float *score;
    int32_t ccap;
    float *res[2];
    uint8_t *bpar[2];
    int32_t *bcnt[2];
    int32_t bcap;
} kv_grow;

static kv_grow *grow; // (n_layers,) scratch of kv_step_begin

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

static int32_t round_slots(int64_t n) { return (int32_t)((n + SLOT_ROUND - 1) / SLOT_ROUND * SLOT_ROUND); }

// Capacity for `need` slots: unchanged if it fits, else grow by >= 25% (amortised
// re-layout copies), rounded up to a multiple of 64. 0 if the size is absurd.
static int32_t grow_cap(int32_t cur, int64_t need) {
    if (need <= cur) return cur;
    int64_t c = (int64_t)cur + cur / 4;
    if (c < need) c = need;
    c = round_slots(c);
    return c > (1 << 26) ? 0 : (int32_t)c;
}

static void *alloc_bytes(uint64_t n) { return n > MAX_BYTES ? 0 : kv_malloc((size_t)n); }

// The aging buffers of a layer (res, block params and counts) go; the settings stay.
static void free_aging(kv_layer *L) {
    for (int p = 0; p < 2; p++) {
        kv_mfree(L->res[p]);
        kv_mfree(L->bpar[p]);
        kv_mfree(L->bcnt[p]);
        L->res[p] = 0;
        L->bpar[p] = 0;
        L->bcnt[p] = 0;
        for (int32_t h = 0; h < kv.n_kv_heads; h++) L->fresh[p][h] = L->nblk[p][h] = 0;
    }
    L->bcap = 0;
}

static void free_layer(kv_layer *L) {
    for (int p = 0; p < 2; p++) {
        kv_mfree(L->stage[p]);
        kv_mfree(L->data[p]);
        L->stage[p] = 0;
        L->data[p] = 0;
    }
    free_aging(L);
    kv_mfree(L->mask);
    kv_mfree(L->pos);
    kv_mfree(L->score);
    L->mask = 0;
    L->pos = 0;
    L->score = 0;
    L->score_held = 0;
    L->ccap = L->pcap = L->used = 0;
    L->step_P = L->step_ok = 0;
    for (int32_t h = 0; h < kv.n_kv_heads; h++) {
        L->live[h] = L->prev[h] = 0;
        if (L->cmode[h] == 3) L->cmode[h] = 2; // the next fill's first step gives the mean again
    }
}

static void free_grow(kv_grow *g) {
    for (int p = 0; p < 2; p++) {
        kv_mfree(g->stage[p]);
        kv_mfree(g->data[p]);
    }
    kv_mfree(g->mask);
    kv_mfree(g->pos);
    kv_mfree(g->score);
    for (int p = 0; p < 2; p++) {
        kv_mfree(g->res[p]);
        kv_mfree(g->bpar[p]);
        kv_mfree(g->bcnt[p]);
    }
    *g = (kv_grow){0};
}

static void free_all(void) {
    for (int32_t l = 0; l < kv.n_layers; l++) free_layer(&kv.layer[l]);
    kv_mfree(kv.io);
    kv.io = 0;
    kv.io_cap = 0;
    kv.open_S = 0;
    kv.last_S = 0;
    kv.appended = 0;
}

// The layers a call names: [lo, hi) for layer in [0, n_layers), all for -1; 0 if invalid.
static int32_t layer_range(int32_t layer, int32_t *lo, int32_t *hi) {
    if (layer < -1 || layer >= kv.n_layers) return 0;
    *lo = layer < 0 ? 0 : layer;
    *hi = layer < 0 ? kv.n_layers : layer + 1;
    return 1;
}

// Recompute a layer's row sizes of part p from its heads' formats, group and axis; 1 if
// they changed (the reserved streams then no longer fit).
static int set_rows(kv_layer *L, int p) {
    int changed = 0;
    int32_t off = 0;
    for (int32_t h = 0; h < kv.n_kv_heads; h++) {
        int32_t f = L->fmt[p][h];
        int32_t row = L->axis[p] ? (int32_t)kv_channel_row_bytes(kv_channel_bits(f), kv.head_dim)
                                 : (int32_t)kv_row_bytes(f, L->group, kv.head_dim);
        changed |= row != L->row[p][h];
        L->row[p][h] = row;
        L->off[p][h] = off;
        off += row;
    }
    L->rows[p] = off;
    return changed;
}

// A layer's streams, scores and stream capacity go (a new row layout): the position list
// stays, since a layer emptied by eviction is not "entry e is position e" again (the next
// token is kv.appended, not 0); with ccap = 0 the next kv_step_begin re-lays it out
// keeping nothing. (After a reset it is 0.)
static void drop_streams(kv_layer *L) {
    for (int p = 0; p < 2; p++) kv_mfree(L->data[p]), L->data[p] = 0;
    kv_mfree(L->score), L->score = 0;
    L->score_held = 0;
    L->ccap = 0;
}

// Move part p's stream from (per head) old_cap to new_cap rows, keeping the first `keep`
// of each head and zeroing the rest. dst may be src (in place) when new_cap <= old_cap.
static void relayout_stream(const kv_layer *L, int p, uint8_t *dst, const uint8_t *src, int32_t old_cap,
                            int32_t new_cap, int32_t keep) {
    for (int32_t h = 0; h < kv.n_kv_heads; h++) { // ascending h: in place, each head moves down or stays
        size_t row = (size_t)L->row[p][h];
        uint8_t *dh = dst + (size_t)new_cap * L->off[p][h];
        if (keep) __builtin_memmove(dh, src + (size_t)old_cap * L->off[p][h], (size_t)keep * row);
        __builtin_memset(dh + (size_t)keep * row, 0, (size_t)(new_cap - keep) * row);
    }
}

// Move a head-major array (H, old, w) to (H, new, w) elements of `size` bytes, keeping the
// first `keep` of each head and zeroing the rest. dst may be src (in place) when new <= old.
static void relayout(void *dst, const void *src, int32_t H, int32_t old_cap, int32_t new_cap, int32_t keep,
                     size_t width) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    for (int32_t h = 0; h < H; h++) { // ascending h: in place, each head moves down or stays
        uint8_t *dh = d + (size_t)h * new_cap * width;
        if (keep) __builtin_memmove(dh, s + (size_t)h * old_cap * width, (size_t)keep * width);
        __builtin_memset(dh + (size_t)keep * width, 0, (size_t)(new_cap - keep) * width);
    }
}

static void fill_mask(float *mask, int32_t pcap, const int32_t *live, int32_t H) {
    for (int32_t h = 0; h < H; h++)
        for (int32_t t = 0; t < pcap; t++) mask[(size_t)h * pcap + t] = t < live[h] ? 0.0f : MASK_EMPTY;
}

// ---------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------

// Set the model's shape; every layer starts as K = V = F32, G = 32, empty. A second call
// drops the previous cache (after the new state is allocated: on failure it is kept).
KV_EXPORT(kv_init)
int32_t kv_init(int32_t n_layers, int32_t n_kv_heads, int32_t n_q_heads, int32_t head_dim, int32_t vocab) {
    if (n_layers < 1 || n_layers > 4096 || n_kv_heads < 1 || n_kv_heads > 1024 || n_q_heads < 1 ||
        n_q_heads > 4096 || n_q_heads % n_kv_heads || head_dim < 1 || head_dim > 4096 || vocab < 1 ||
        vocab > (1 << 24))
        return KV_EINVAL;
    kv_layer *layer = kv_malloc(sizeof(kv_layer) * (size_t)n_layers);
    kv_grow *g = kv_malloc(sizeof(kv_grow) * (size_t)n_layers);
    int32_t *table = kv_malloc(4u * (size_t)(TABLE_HEAD + TABLE_LAYER * n_layers));
    // per layer and head: live, prev, fresh K / V, nblk K / V, fmt K / V, row K / V, off K / V, cmode
    int32_t *heads = kv_malloc(4u * 13u * (size_t)n_layers * (size_t)n_kv_heads);
    if (!layer || !g || !table || !heads || kv_sample_reserve(vocab) != KV_OK) {
        kv_mfree(layer);
        kv_mfree(g);
        kv_mfree(table);
        kv_mfree(heads);
        return KV_ENOMEM;
    }
    if (kv.ready) {
        free_all();
        for (int32_t l = 0; l < kv.n_layers; l++) kv_mfree(kv.layer[l].kmean);
        kv_mfree(kv.layer[0].live);
        kv_mfree(kv.layer);
        kv_mfree(grow);
        kv_mfree(kv.table);
    }
    kv.n_layers = n_layers;
    kv.n_kv_heads = n_kv_heads;
    kv.n_q_heads = n_q_heads;
    kv.head_dim = head_dim;
    kv.vocab = vocab;
    kv.layer = layer;
    grow = g;
    kv.table = table;
    __builtin_memset(heads, 0, 4u * 13u * (size_t)n_layers * (size_t)n_kv_heads);
    for (int32_t l = 0; l < n_layers; l++) {
        int32_t *at = heads + (size_t)13 * l * n_kv_heads;
        layer[l] = (kv_layer){.fmt = {at + 6 * n_kv_heads, at + 7 * n_kv_heads}, .group = KV_GROUP_DEFAULT,
                              .row = {at + 8 * n_kv_heads, at + 9 * n_kv_heads},
                              .off = {at + 10 * n_kv_heads, at + 11 * n_kv_heads},
                              .live = at, .prev = at + n_kv_heads,
                              .fresh = {at + 2 * n_kv_heads, at + 3 * n_kv_heads},
                              .nblk = {at + 4 * n_kv_heads, at + 5 * n_kv_heads},
                              .cmode = at + 12 * n_kv_heads};
        set_rows(&layer[l], 0); // every head F32 (0)
        set_rows(&layer[l], 1);
        g[l] = (kv_grow){0};
    }
    kv.io = 0;
    kv.io_cap = 0;
    kv.open_S = 0;
    kv.last_S = 0;
    kv.appended = 0;
    kv.ready = 1;
    return KV_OK;
}

// Choose the storage formats of a layer (-1: all layers). KV_ESTATE if a chosen layer
// holds entries (nothing changes then). Cancels an open step (its reservation may no
// longer fit): call kv_step_begin again.
KV_EXPORT(kv_configure)
int32_t kv_configure(int32_t layer, int32_t k_fmt, int32_t v_fmt, int32_t group) {
    if (!kv.ready) return KV_ESTATE;
    int32_t lo, hi;
    if (!layer_range(layer, &lo, &hi)) return KV_EINVAL;
    if (!kv_valid_format(k_fmt, group, kv.head_dim) || !kv_valid_format(v_fmt, group, kv.head_dim))
        return KV_EINVAL;
    for (int32_t l = lo; l < hi; l++)
        if (kv.layer[l].used > 0) return KV_ESTATE;
    int32_t fmts[2] = {k_fmt, v_fmt};
    for (int32_t l = lo; l < hi; l++) {
        kv_layer *L = &kv.layer[l];
        L->group = group;
        int changed = 0;
        for (int p = 0; p < 2; p++) {
            for (int32_t h = 0; h < kv.n_kv_heads; h++) L->fmt[p][h] = fmts[p];
            L->rot[p] = 0; // a new choice of formats starts unrotated (kv_rotate after it)
            L->recent[p] = L->axis[p] = L->rcap[p] = 0; // and without aging (kv_age after it)
            changed |= set_rows(L, p);
        }
        free_aging(L);
        for (int32_t h = 0; h < kv.n_kv_heads; h++) L->cmode[h] = 0; // and without collapsed keys
        kv_mfree(L->kmean), L->kmean = 0;
        if (changed || !L->data[0] || !L->data[1]) drop_streams(L); // streams are reserved in pairs
    }
    kv.open_S = 0;
    return KV_OK;
}

// Give one KV head of a layer its own K and V formats (after kv_configure, which sets every
// head's; the layer's group size, rotation and aging stay): per-head bit allocations.
// KV_EINVAL for a bad head or a format the group cannot hold (or one without per-channel
// blocks on a per-channel part); KV_ESTATE if the layer holds entries (nothing changes).
// Cancels an open step.
KV_EXPORT(kv_configure_head)
int32_t kv_configure_head(int32_t layer, int32_t head, int32_t k_fmt, int32_t v_fmt) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads) return KV_EINVAL;
    kv_layer *L = &kv.layer[layer];
    int32_t fmts[2] = {k_fmt, v_fmt};
    for (int p = 0; p < 2; p++) {
        if (!kv_valid_format(fmts[p], L->group, kv.head_dim)) return KV_EINVAL;
        if (L->axis[p] && !kv_channel_ok(fmts[p], L->group, kv.head_dim)) return KV_EINVAL;
    }
    if (L->used > 0) return KV_ESTATE;
    int changed = 0;
    for (int p = 0; p < 2; p++) {
        L->fmt[p][head] = fmts[p];
        changed |= set_rows(L, p);
    }
    if (changed) drop_streams(L);
    kv.open_S = 0;
    return KV_OK;
}

// The format of part 0 (K) or 1 (V) of one KV head of a layer.
KV_EXPORT(kv_head_format) int32_t kv_head_format(int32_t layer, int32_t head, int32_t part) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads || part < 0 || part > 1)
        return KV_EINVAL;
    return kv.layer[layer].fmt[part][head];
}

// Drop every entry and return all token memory (staging, streams, I/O) to the allocator.
// The formats stay. The wasm memory itself cannot shrink: kv_heap_bytes() stays, and the
// next fill reuses it.
// Rotate a layer's K and/or V rows (-1: all layers) before their format: each row goes
// through a random-sign Walsh-Hadamard rotation (kv_rotate_row) when stored and back when
// staged, so outlier channels are spread before quantization. KV_EINVAL unless head_dim is
// a power of two <= 64; KV_ESTATE if a chosen layer holds entries (nothing changes then).
// kv_configure clears it.
KV_EXPORT(kv_rotate) int32_t kv_rotate(int32_t layer, int32_t k_on, int32_t v_on) {
    if (!kv.ready) return KV_ESTATE;
    int32_t lo, hi;
    if (!layer_range(layer, &lo, &hi) || !kv_rotatable(kv.head_dim)) return KV_EINVAL;
    for (int32_t l = lo; l < hi; l++)
        if (kv.layer[l].used > 0) return KV_ESTATE;
    for (int32_t l = lo; l < hi; l++) {
        kv.layer[l].rot[0] = k_on != 0;
        kv.layer[l].rot[1] = v_on != 0;
    }
    return KV_OK;
}

// Age part `part` (0 K, 1 V) of a layer (-1: all layers): each head's newest `recent`
// entries wait exact (fp32, counted in kv_bytes) and go into the format when they leave
// that window (axis 0: seed 001's progressive keys, k128); with axis 1 the format is
// applied per channel to blocks of G = group entries (KIVI: Q4, Q3 or Q2 only, head_dim a
// multiple of 16 up to KV_CHANNEL_DMAX), a block once recent + G entries wait. recent = 0
// with axis 0 turns aging off. KV_EINVAL for a bad setting, KV_ESTATE if a chosen layer
// holds entries (nothing changes then). kv_configure clears it.
KV_EXPORT(kv_age) int32_t kv_age(int32_t layer, int32_t part, int32_t recent, int32_t axis) {
    if (!kv.ready) return KV_ESTATE;
    int32_t lo, hi;
    if (!layer_range(layer, &lo, &hi) || part < 0 || part > 1 || recent < 0 || recent > (1 << 20) || axis < 0 ||
        axis > 1)
        return KV_EINVAL;
    for (int32_t l = lo; l < hi; l++) {
        if (kv.layer[l].used > 0) return KV_ESTATE;
        for (int32_t h = 0; h < kv.n_kv_heads && axis; h++)
            if (!kv_channel_ok(kv.layer[l].fmt[part][h], kv.layer[l].group, kv.head_dim) ||
                (part == 0 && kv.layer[l].cmode[h]))
                return KV_EINVAL;
    }
    for (int32_t l = lo; l < hi; l++) {
        kv_layer *L = &kv.layer[l];
        free_aging(L);
        L->recent[part] = recent;
        L->axis[part] = axis;
        L->rcap[part] = axis ? recent + L->group - 1 : recent;
        if (set_rows(L, part)) drop_streams(L); // streams are reserved in pairs, for their row sizes
    }
    kv.open_S = 0;
    return KV_OK;
}

KV_EXPORT(kv_reset) int32_t kv_reset(void) {
    if (!kv.ready) return KV_ESTATE;
    free_all();
    return KV_OK;
}

// ---------------------------------------------------------------------------------------
// Aging: entries wait exact in res, then go into the format (kv_age)
// ---------------------------------------------------------------------------------------

static int32_t most_blocks(const kv_layer *L) {
    int32_t most = 0;
    for (int p = 0; p < 2; p++)
        for (int32_t h = 0; h < kv.n_kv_heads; h++) most = L->nblk[p][h] > most ? L->nblk[p][h] : most;
    return most;
}

// Entries of a head that a commit of S tokens puts into the format: the oldest of its
// waiting ones and the new ones, beyond the window (whole blocks on axis 1).
static int32_t to_age(const kv_layer *L, int p, int32_t h, int32_t S) {
    int32_t n = L->fresh[p][h] + S - L->recent[p];
    if (n < 0) n = 0;
    return L->axis[p] ? n - n % L->group : n;
}

// Block slots per head a commit of S tokens needs (0 without per-channel parts).
static int64_t blocks_needed(const kv_layer *L, int32_t S) {
    int64_t need = 0;
    for (int p = 0; p < 2; p++)
        if (L->axis[p])
            for (int32_t h = 0; h < kv.n_kv_heads; h++) {
                int64_t b = (int64_t)L->nblk[p][h] + to_age(L, p, h, S) / L->group;
                need = b > need ? b : need;
            }
    return need;
}

static float resid[4096]; // (head_dim,) a collapsed key's residual

// One entry e of head h (at position pos) into part p's format from x (D,), and its value
// as the cache now holds it into the staging slot. A collapsed key stores its residual.
void kv_store_entry(kv_layer *L, int p, int32_t h, int32_t e, const float *x, int32_t pos) {
    const int32_t D = kv.head_dim, f = L->fmt[p][h];
    const int collapsed = p == 0 && L->cmode[h];
    uint8_t *row = kv_row_at(L, p, h, e);
    float *slot = L->stage[p] + ((size_t)h * L->pcap + e) * D;
    if (collapsed) {
        kv_collapse_residual(L, h, x, pos, resid);
        x = resid;
    }
    if (L->rot[p]) { // rotate into the slot, store that, stage it rotated back
        kv_rotate_row(x, D, slot);
        x = slot;
    }
    kv_quantize_row(f, L->group, x, D, row);
    kv_dequantize_row(f, L->group, row, D, slot);
    if (L->rot[p]) kv_unrotate_row(slot, D);
    if (collapsed) kv_collapse_stage(L, h, slot); // at pos: the residual's angles
}

// Position of entry e of head h during a commit that appends after its n live entries.
static int32_t commit_pos(const kv_layer *L, int32_t h, int32_t e, int32_t n) {
    return e < n ? kv_entry_pos(L, h, e) : kv.appended + (e - n);
}

static float block_in[KV_GROUP_MAX * KV_CHANNEL_DMAX]; // (G, D) one block's values

// Waiting item i of head h during a commit: its i-th waiting entry (i < f), else new row i - f.
static const float *waiting(const kv_layer *L, int p, int32_t h, int32_t f, const float *x, int32_t i) {
    const int32_t D = kv.head_dim;
    return i < f ? L->res[p] + ((size_t)h * L->rcap[p] + i) * D : x + (size_t)(i - f) * D;
}

// Waiting items i0 .. i0 + G - 1 as one per-channel block: entries e0 .. e0 + G - 1.
static void store_block(kv_layer *L, int p, int32_t h, int32_t e0, int32_t f, const float *x, int32_t i0) {
    const int32_t D = kv.head_dim, G = L->group, bits = kv_channel_bits(L->fmt[p][h]);
    for (int32_t t = 0; t < G; t++) {
        const float *xi = waiting(L, p, h, f, x, i0 + t);
        if (L->rot[p]) kv_rotate_row(xi, D, block_in + (size_t)t * D);
        else __builtin_memcpy(block_in + (size_t)t * D, xi, 4ull * D);
    }
    int32_t b = L->nblk[p][h]++;
    uint8_t *params = L->bpar[p] + ((size_t)h * L->bcap + b) * KV_CHANNEL_PARAM_BYTES(D);
    uint8_t *codes = kv_row_at(L, p, h, e0);
    float *slots = L->stage[p] + ((size_t)h * L->pcap + e0) * D;
    L->bcnt[p][(size_t)h * L->bcap + b] = G;
    kv_channel_quantize(bits, G, block_in, D, params, codes);
    kv_channel_dequantize(bits, G, params, codes, D, slots);
    if (L->rot[p])
        for (int32_t t = 0; t < G; t++) kv_unrotate_row(slots + (size_t)t * D, D);
}

// Append S new rows x (S, D) to part p of head h (live n) on an aging layer: what leaves
// the window goes into the format, the rest waits in res (and is staged exact).
static void append_aging(kv_layer *L, int p, int32_t h, int32_t n, const float *x, int32_t S) {
    const int32_t D = kv.head_dim, f = L->fresh[p][h], e0 = n - f, c = f + S, aged = to_age(L, p, h, S);
    if (L->axis[p])
        for (int32_t i = 0; i < aged; i += L->group) store_block(L, p, h, e0 + i, f, x, i);
    else
        for (int32_t i = 0; i < aged; i++)
            kv_store_entry(L, p, h, e0 + i, waiting(L, p, h, f, x, i), commit_pos(L, h, e0 + i, n));
    float *res = L->res[p] + (size_t)h * L->rcap[p] * D;
    if (aged && aged < f) __builtin_memmove(res, res + (size_t)aged * D, 4ull * (f - aged) * D);
    for (int32_t i = aged > f ? aged : f; i < c; i++) {
        const float *xi = x + (size_t)(i - f) * D;
        __builtin_memcpy(res + (size_t)(i - aged) * D, xi, 4ull * D);
        __builtin_memcpy(L->stage[p] + ((size_t)h * L->pcap + e0 + i) * D, xi, 4ull * D);
    }
    L->fresh[p][h] = c - aged;
}

// ---------------------------------------------------------------------------------------
// Step protocol
// ---------------------------------------------------------------------------------------

static inline float *f32_at(uint8_t *base, uint64_t off) { return (float *)(base + off); }
static inline uint64_t r4(uint64_t n) { return (n + 3) & ~3ull; } // keeps I/O regions 16-byte aligned

// Reserve what appending S tokens needs and lay out the step's I/O; returns the table
// pointer, or KV_ENOMEM (nothing changed), KV_EINVAL, KV_ESTATE.
KV_EXPORT(kv_step_begin) int32_t kv_step_begin(int32_t S) {
    if (!kv.ready) return KV_ESTATE;
    if (S < 1 || S > (1 << 24)) return KV_EINVAL;
    const int64_t H = kv.n_kv_heads, D = kv.head_dim, Q = kv.n_q_heads;
    int failed = 0;

    // ---- 1. allocate (nothing is changed until everything is there)
    uint64_t io_floats = 0; // (vocab,) logits, then per layer new_k, new_v, attn, entropy
    io_floats += r4((uint64_t)kv.vocab);
    for (int32_t l = 0; l < kv.n_layers; l++) {
        kv_layer *L = &kv.layer[l];
        kv_grow *g = &grow[l];
        *g = (kv_grow){0};
        g->pcap = grow_cap(L->pcap, (int64_t)L->used + S);
        g->ccap = grow_cap(L->ccap, (int64_t)L->used + S);
        if (!g->pcap || !g->ccap) {
            failed = 1;
            break;
        }
        if (g->pcap != L->pcap) {
            for (int p = 0; p < 2; p++) g->stage[p] = alloc_bytes(4ull * H * g->pcap * D);
            g->mask = alloc_bytes(4ull * H * g->pcap);
            if (!g->stage[0] || !g->stage[1] || !g->mask) failed = 1;
        }
        if (g->ccap != L->ccap || !L->data[0]) {
            for (int p = 0; p < 2; p++) g->data[p] = alloc_bytes((uint64_t)g->ccap * L->rows[p]);
            if (!g->data[0] || !g->data[1]) failed = 1;
            if (L->pos && !(g->pos = alloc_bytes(4ull * H * g->ccap))) failed = 1;
            if (L->score && !(g->score = alloc_bytes(4ull * H * g->ccap))) failed = 1;
        }
        for (int p = 0; p < 2 && !failed; p++) // the aging window: fixed size, made once
            if (L->rcap[p] && !L->res[p] && !(g->res[p] = alloc_bytes(4ull * H * L->rcap[p] * D))) failed = 1;
        int64_t blocks = blocks_needed(L, S);
        if (!failed && blocks > L->bcap) {
            g->bcap = blocks + blocks / 4 + 1;
            for (int p = 0; p < 2; p++)
                if (L->axis[p] && (!(g->bpar[p] = alloc_bytes((uint64_t)H * g->bcap * KV_CHANNEL_PARAM_BYTES(D))) ||
                                   !(g->bcnt[p] = alloc_bytes(4ull * H * g->bcap))))
                    failed = 1;
        }
        if (failed) break;
        io_floats += 2 * r4((uint64_t)(H * S * D)) + r4((uint64_t)(Q * (g->pcap + S))) + r4((uint64_t)Q);
    }
    uint8_t *io_new = 0;
    uint64_t io_bytes = 4 * io_floats;
    if (!failed && io_bytes > kv.io_cap && !(io_new = alloc_bytes(io_bytes))) failed = 1;
    // a step that needs far less than the buffer holds (decode after a long prompt) gets a
    // buffer of its own size, so the working memory follows what the model needs; if that
    // allocation fails the big buffer simply stays
    if (!failed && io_bytes * 4 < kv.io_cap) io_new = alloc_bytes(io_bytes);
    if (failed) {
        for (int32_t l = 0; l < kv.n_layers; l++) free_grow(&grow[l]);
        return KV_ENOMEM;
    }

    // ---- 2. apply: re-layout grown staging and streams (cannot fail from here)
    for (int32_t l = 0; l < kv.n_layers; l++) {
        kv_layer *L = &kv.layer[l];
        kv_grow *g = &grow[l];
        if (g->mask) {
            for (int p = 0; p < 2; p++) {
                relayout(g->stage[p], L->stage[p], (int32_t)H, L->pcap, g->pcap, L->used, 4ull * D);
                kv_mfree(L->stage[p]);
                L->stage[p] = g->stage[p];
            }
            kv_mfree(L->mask);
            L->mask = g->mask;
            L->pcap = g->pcap;
            fill_mask(L->mask, L->pcap, L->live, (int32_t)H);
        }
        if (g->data[0]) {
            for (int p = 0; p < 2; p++) {
                relayout_stream(L, p, g->data[p], L->data[p], L->ccap, g->ccap, L->used);
                kv_mfree(L->data[p]);
                L->data[p] = g->data[p];
            }
            if (g->pos) {
                relayout(g->pos, L->pos, (int32_t)H, L->ccap, g->ccap, L->used, 4);
                kv_mfree(L->pos);
                L->pos = g->pos;
            }
            if (g->score) {
                relayout(g->score, L->score, (int32_t)H, L->ccap, g->ccap, L->used, 4);
                kv_mfree(L->score);
                L->score = g->score;
            }
            L->ccap = g->ccap;
        }
        for (int p = 0; p < 2; p++)
            if (g->res[p]) L->res[p] = g->res[p]; // new: nothing waits yet
        if (g->bcap) {
            int32_t most = most_blocks(L);
            for (int p = 0; p < 2; p++) {
                if (!L->axis[p]) continue;
                relayout(g->bpar[p], L->bpar[p], (int32_t)H, L->bcap, g->bcap, most, KV_CHANNEL_PARAM_BYTES(D));
                relayout(g->bcnt[p], L->bcnt[p], (int32_t)H, L->bcap, g->bcap, most, 4);
                kv_mfree(L->bpar[p]);
                kv_mfree(L->bcnt[p]);
                L->bpar[p] = g->bpar[p];
                L->bcnt[p] = g->bcnt[p];
            }
            L->bcap = g->bcap;
        }
        L->step_ok = 0; // a new step: the last one's attention no longer maps onto entries
        *g = (kv_grow){0};
    }
    if (io_new) {
        kv_mfree(kv.io);
        kv.io = io_new;
        kv.io_cap = io_bytes;
    }

    // ---- 3. the table
    int32_t *t = kv.table;
    uint64_t off = 0;
    t[0] = kv.n_layers;
    t[1] = S;
    t[2] = (int32_t)(uintptr_t)f32_at(kv.io, off);
    t[3] = 0;
    off += 4 * r4((uint64_t)kv.vocab);
    for (int32_t l = 0; l < kv.n_layers; l++) {
        kv_layer *L = &kv.layer[l];
        int32_t *e = t + TABLE_HEAD + TABLE_LAYER * l;
        e[0] = (int32_t)(uintptr_t)L->stage[0];
        e[1] = (int32_t)(uintptr_t)L->stage[1];
        e[2] = (int32_t)(uintptr_t)L->mask;
        e[3] = L->pcap;
        e[4] = (int32_t)(uintptr_t)f32_at(kv.io, off);
        off += 4 * r4((uint64_t)(H * S * D));
        e[5] = (int32_t)(uintptr_t)f32_at(kv.io, off);
        off += 4 * r4((uint64_t)(H * S * D));
        e[6] = (int32_t)(uintptr_t)f32_at(kv.io, off);
        off += 4 * r4((uint64_t)(Q * (L->pcap + S)));
        e[7] = (int32_t)(uintptr_t)f32_at(kv.io, off);
        off += 4 * r4((uint64_t)Q);
    }
    kv.open_S = S;
    kv.last_S = 0;
    return (int32_t)(uintptr_t)t;
}

// Append the open step's S new tokens to every head of every layer: quantize each (token,
// head) row of new_k / new_v into the head's stream, and write its dequantized value into
// the staging slot after the head's live entries.
KV_EXPORT(kv_step_commit) int32_t kv_step_commit(int32_t S) {
    if (!kv.ready || kv.open_S == 0) return KV_ESTATE;
    if (S != kv.open_S) return KV_EINVAL;
    const int32_t H = kv.n_kv_heads, D = kv.head_dim;
    for (int32_t l = 0; l < kv.n_layers; l++) {
        kv_layer *L = &kv.layer[l];
        const int32_t *e = kv_table_layer(l);
        const float *src[2] = {(const float *)(uintptr_t)e[4], (const float *)(uintptr_t)e[5]}; // (H, S, D)
        for (int32_t h = 0; h < H; h++) {
            const int32_t n = L->live[h];
            for (int p = 0; p < 2; p++) {
                const float *x = src[p] + (size_t)h * S * D; // (S, D)
                if (p == 0 && L->cmode[h] == 2) kv_collapse_take_mean(L, h, x, S, kv.appended);
                if (L->rcap[p]) append_aging(L, p, h, n, x, S);
                else
                    for (int32_t s = 0; s < S; s++) kv_store_entry(L, p, h, n + s, x + (size_t)s * D, kv.appended + s);
            }
            for (int32_t s = 0; s < S; s++) {
                L->mask[(size_t)h * L->pcap + n + s] = 0.0f;
                if (L->pos) L->pos[(size_t)h * L->ccap + n + s] = kv.appended + s;
                if (L->score) L->score[(size_t)h * L->ccap + n + s] = 0.0f;
            }
            L->prev[h] = n;
            L->live[h] = n + S;
        }
        L->used += S;
        L->step_P = L->pcap;
        L->step_ok = 1;
    }
    kv.appended += S;
    kv.last_S = S;
    kv.open_S = 0;
    return KV_OK;
}

// ---------------------------------------------------------------------------------------
// Fitting a layer to its entries (after an eviction)
// ---------------------------------------------------------------------------------------

// Shrink staging and streams to round64(used + 1) slots: the model's P_i follows the live
// entries down, and a decode step of one token after a rolling eviction needs no growth
// (used + 1 fits). Buffers are re-laid in place and their tails given back to the heap.
void kv_fit_layer(kv_layer *L) {
    const int32_t H = kv.n_kv_heads, D = kv.head_dim;
    int32_t cap = round_slots((int64_t)L->used + 1);
    if (cap < L->pcap) {
        for (int p = 0; p < 2; p++) {
            relayout(L->stage[p], L->stage[p], H, L->pcap, cap, L->used, 4ull * D);
            kv_mshrink(L->stage[p], 4ull * H * cap * D);
        }
        L->pcap = cap;
        fill_mask(L->mask, cap, L->live, H);
        kv_mshrink(L->mask, 4ull * H * cap);
    }
    if (cap < L->ccap) {
        for (int p = 0; p < 2; p++) {
            relayout_stream(L, p, L->data[p], L->data[p], L->ccap, cap, L->used);
            kv_mshrink(L->data[p], (size_t)cap * L->rows[p]);
        }
        if (L->pos) {
            relayout(L->pos, L->pos, H, L->ccap, cap, L->used, 4);
            kv_mshrink(L->pos, 4ull * H * cap);
        }
        if (L->score) {
            relayout(L->score, L->score, H, L->ccap, cap, L->used, 4);
            kv_mshrink(L->score, 4ull * H * cap);
        }
        L->ccap = cap;
    }
    int32_t bcap = most_blocks(L) + 1; // room for the block a decode step may age
    if (L->bcap && bcap < L->bcap) {
        for (int p = 0; p < 2; p++) {
            if (!L->axis[p]) continue;
            relayout(L->bpar[p], L->bpar[p], H, L->bcap, bcap, bcap - 1, KV_CHANNEL_PARAM_BYTES(D));
            kv_mshrink(L->bpar[p], (size_t)H * bcap * KV_CHANNEL_PARAM_BYTES(D));
            relayout(L->bcnt[p], L->bcnt[p], H, L->bcap, bcap, bcap - 1, 4);
            kv_mshrink(L->bcnt[p], 4ull * H * bcap);
        }
        L->bcap = bcap;
    }
}

// ---------------------------------------------------------------------------------------
// Tools: roll back, hide from attention
// ---------------------------------------------------------------------------------------

// Drop every token appended after the first n (all layers): the cache is as it was when it
// held n tokens, and the next token's position is n. Lets a tool read a long prefix once
// and then try several continuations of it (the profiler's layer-sensitivity pass).
// KV_EINVAL if n is not in [0, appended]; KV_ESTATE once any layer has evicted (entries are
// no longer the appended tokens in order), or if n would cut a per-channel block. Entries
// that had left an aging window stay in their format. Cancels an open step. Memory stays
// reserved.
KV_EXPORT(kv_truncate) int32_t kv_truncate(int32_t n) {
    if (!kv.ready) return KV_ESTATE;
    if (n < 0 || n > kv.appended) return KV_EINVAL;
    const int32_t H = kv.n_kv_heads, D = kv.head_dim;
    for (int32_t l = 0; l < kv.n_layers; l++) {
        const kv_layer *L = &kv.layer[l];
        if (L->pos || L->used != kv.appended) return KV_ESTATE;
        for (int32_t h = 0; h < H; h++) {
            if (L->live[h] != kv.appended) return KV_ESTATE;
            for (int p = 0; p < 2; p++)
                if (L->axis[p] && n < kv_aged(L, p, h)) return KV_ESTATE;
        }
    }
    for (int32_t l = 0; l < kv.n_layers; l++) {
        kv_layer *L = &kv.layer[l];
        for (int32_t h = 0; h < H; h++) { // empty slots are masked and zero, as after a growth
            for (int p = 0; p < 2; p++)
                __builtin_memset(L->stage[p] + ((size_t)h * L->pcap + n) * D, 0, 4ull * (L->used - n) * D);
            for (int32_t t = n; t < L->used; t++) L->mask[(size_t)h * L->pcap + t] = MASK_EMPTY;
            for (int p = 0; p < 2; p++) { // the waiting entries before n stay where they are
                int32_t aged = kv_aged(L, p, h);
                L->fresh[p][h] = n > aged ? n - aged : 0;
            }
            L->live[h] = n;
        }
        L->used = n;
        L->step_ok = 0;
    }
    kv.appended = n;
    kv.open_S = 0;
    kv.last_S = 0;
    return KV_OK;
}

// Hide the slots [lo, hi) of a layer from attention (hidden = 1: mask -1e9 for every KV
// head) or show them again (hidden = 0; only a head's live slots). The model then attends
// as if those tokens were evicted, but nothing is freed and the byte counts do not change: a
// measuring tool, not a technique. Slots appended later are visible. KV_EINVAL for a bad
// layer or range.
KV_EXPORT(kv_hide) int32_t kv_hide(int32_t layer, int32_t lo, int32_t hi, int32_t hidden) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || lo < 0 || hi < lo) return KV_EINVAL;
    kv_layer *L = &kv.layer[layer];
    if (hi > L->used) return KV_EINVAL;
    for (int32_t h = 0; h < kv.n_kv_heads; h++)
        for (int32_t t = lo; t < hi; t++)
            L->mask[(size_t)h * L->pcap + t] = hidden || t >= L->live[h] ? MASK_EMPTY : 0.0f;
    return KV_OK;
}

// ---------------------------------------------------------------------------------------
// Accounting and inspection
// ---------------------------------------------------------------------------------------

// Exact bytes held for `part` of a layer (-1: all layers): 0 = K (rows with their scales,
// the entries waiting exact in an aging window at 4 head_dim bytes each, the per-channel
// blocks' params), 1 = V likewise, 2 = the index: 4 bytes per live entry for its original
// position once the layer has evicted, plus 4 per live entry for its score while scores
// accumulate across steps (H2O), plus 4 per per-channel block for its live count once the
// layer has evicted (before, every block holds G); a collapsed head's K adds its mean key
// (4 head_dim bytes) while the head holds entries. Capacity slack is not counted (see
// kv_heap_bytes).
KV_EXPORT(kv_bytes) int32_t kv_bytes(int32_t layer, int32_t part) {
    if (!kv.ready) return KV_ESTATE;
    int32_t lo, hi;
    if (!layer_range(layer, &lo, &hi) || part < 0 || part > 2) return KV_EINVAL;
    uint64_t total = 0;
    for (int32_t l = lo; l < hi; l++) {
        const kv_layer *L = &kv.layer[l];
        for (int32_t h = 0; h < kv.n_kv_heads; h++) {
            uint64_t live = (uint64_t)L->live[h];
            if (part < 2)
                total += (uint64_t)kv_aged(L, part, h) * L->row[part][h] + 4ull * kv.head_dim * L->fresh[part][h] +
                         (L->axis[part] ? KV_CHANNEL_PARAM_BYTES(kv.head_dim) * L->nblk[part][h] : 0) +
                         (part == 0 && L->cmode[h] && live ? 4ull * kv.head_dim : 0);
            else
                total += live * (4u * (L->pos != 0) + 4u * (L->score != 0 && L->score_held)) +
                         (L->pos ? 4ull * ((uint64_t)L->nblk[0][h] + L->nblk[1][h]) : 0);
        }
    }
    return (int32_t)total;
}

// Live tokens of a layer: the most any of its heads holds (= the staging slots in use);
// layer -1: tokens appended since reset (the next position).
KV_EXPORT(kv_tokens) int32_t kv_tokens(int32_t layer) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < -1 || layer >= kv.n_layers) return KV_EINVAL;
    return layer < 0 ? kv.appended : kv.layer[layer].used;
}

// Everything the meter shows per layer, in one call: (n_layers, 3 + kv_heads) i32 at dst =
// K bytes, V bytes, index bytes (as kv_bytes), then each KV head's live entries. Returns
// the words written.
KV_EXPORT(kv_meter) int32_t kv_meter(int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    int32_t *out = (int32_t *)(uintptr_t)(uint32_t)dst, w = 0;
    for (int32_t l = 0; l < kv.n_layers; l++) {
        for (int32_t part = 0; part < 3; part++) out[w++] = kv_bytes(l, part);
        for (int32_t h = 0; h < kv.n_kv_heads; h++) out[w++] = kv.layer[l].live[h];
    }
    return w;
}

// Every KV head's formats, in one call: (n_layers, kv_heads, 2) i32 at dst = K format, V
// format. Returns the words written.
KV_EXPORT(kv_formats) int32_t kv_formats(int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    int32_t *out = (int32_t *)(uintptr_t)(uint32_t)dst, w = 0;
    for (int32_t l = 0; l < kv.n_layers; l++)
        for (int32_t h = 0; h < kv.n_kv_heads; h++)
            for (int p = 0; p < 2; p++) out[w++] = kv.layer[l].fmt[p][h];
    return w;
}

// Live entries of one KV head of a layer.
KV_EXPORT(kv_live) int32_t kv_live(int32_t layer, int32_t head) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads) return KV_EINVAL;
    return kv.layer[layer].live[head];
}

// Staging capacity (P_i) of a layer.
KV_EXPORT(kv_capacity) int32_t kv_capacity(int32_t layer) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers) return KV_EINVAL;
    return kv.layer[layer].pcap;
}

// Bytes of the staging buffers (K, V, mask at full capacity, all layers).
KV_EXPORT(kv_staging_bytes) int32_t kv_staging_bytes(void) {
    if (!kv.ready) return KV_ESTATE;
    uint64_t total = 0;
    for (int32_t l = 0; l < kv.n_layers; l++)
        total += 4ull * kv.n_kv_heads * kv.layer[l].pcap * (2ull * kv.head_dim + 1);
    return (int32_t)total;
}

// Bytes of the step I/O buffer (logits, new K/V, attn, entropy).
KV_EXPORT(kv_io_bytes) int32_t kv_io_bytes(void) { return kv.ready ? (int32_t)kv.io_cap : KV_ESTATE; }

// A layer's buffers, for tests and tools: 0 staging K, 1 staging V, 2 mask (as in the
// table), 3 compressed K, 4 compressed V (per head (ccap, row) bytes, heads in order; see
// kv_rows for one head's live rows). 0 when not allocated. Valid until the next kv_step_begin / kv_reset /
// kv_init / eviction.
KV_EXPORT(kv_layer_ptr) int32_t kv_layer_ptr(int32_t layer, int32_t which) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || which < 0 || which > 4) return KV_EINVAL;
    kv_layer *L = &kv.layer[layer];
    void *p[5] = {L->stage[0], L->stage[1], L->mask, L->data[0], L->data[1]};
    return (int32_t)(uintptr_t)p[which];
}

// Copy what one head holds for part 0 (K) or 1 (V) to dst: the rows of the entries in the
// format (row bytes each, entry order), then on a per-channel part the blocks' params (4
// head_dim bytes each, block order), then the entries waiting in the aging window (fp32,
// oldest first), then a collapsed key's mean (fp32). Returns the bytes written (= this
// head's share of kv_bytes).
KV_EXPORT(kv_rows) int32_t kv_rows(int32_t layer, int32_t head, int32_t part, int32_t dst) {
    if (!kv.ready) return KV_ESTATE;
    if (layer < 0 || layer >= kv.n_layers || head < 0 || head >= kv.n_kv_heads || part < 0 || part > 1)
        return KV_EINVAL;
    const kv_layer *L = &kv.layer[layer];
    uint8_t *out = (uint8_t *)(uintptr_t)(uint32_t)dst;
    size_t n = (size_t)kv_aged(L, part, head) * L->row[part][head];
    if (n) __builtin_memmove(out, kv_row_at(L, part, head, 0), n);
    if (L->axis[part]) {
        size_t b = KV_CHANNEL_PARAM_BYTES(kv.head_dim) * L->nblk[part][head];
        if (b) __builtin_memmove(out + n, L->bpar[part] + (size_t)head * L->bcap * KV_CHANNEL_PARAM_BYTES(kv.head_dim), b);
        n += b;
    }
    size_t w = 4ull * kv.head_dim * L->fresh[part][head];
    if (w) __builtin_memmove(out + n, L->res[part] + (size_t)head * L->rcap[part] * kv.head_dim, w);
    n += w;
    if (part == 0 && L->cmode[head] && L->live[head]) {
        __builtin_memmove(out + n, L->kmean + (size_t)head * kv.head_dim, 4ull * kv.head_dim);
        n += 4ull * kv.head_dim;
    }
    return (int32_t)n;
}

// The ABI version (KV_VERSION).
KV_EXPORT(kv_version) int32_t kv_version(void) { return KV_VERSION; }

// KV Cache Lab: the cache's state, shared by cache.c (store, staging, step protocol) and
// evict.c (scorers, selection, compaction). Internal: nothing here is part of the ABI.
//
// Per layer and KV head the cache keeps a list of ENTRIES in position order (appends add
// at the end, eviction keeps the order). Entry e of head h lives at
//   - row e of the head's compressed stream:   data[p] + (h * ccap + e) * row[p]  bytes
//   - slot e of the head's staging:            stage[p] + (h * pcap + e) * head_dim  f32
//   - index e of the head's position list:     pos[h * ccap + e]  (only once evicted)
//   - index e of the head's score list:        score[h * ccap + e]  (only while scoring)
// so a head's live entries are always the slots [0, live[h]) and every other slot is
// masked (-1e9) and zero. Heads of a layer may hold different numbers of entries; the
// model is handed the layer's staging capacity pcap >= max live, the shorter heads masked.

#ifndef KV_CACHE_H
#define KV_CACHE_H

#include "kvstore.h"

#define SLOT_ROUND 64       // capacities are multiples of this many entries
#define MASK_EMPTY (-1e9f)  // additive attention mask of an empty / evicted slot
#define MAX_BYTES 0x7fff0000u

typedef struct {
    // configuration
    int32_t *fmt[2];  // (kv_heads,) storage format of K [0] and V [1] per KV head (kv_format)
    int32_t group;    // group size G along head_dim (quantized formats)
    int32_t *row[2];  // (kv_heads,) bytes of one entry's row of K / V, per KV head
    int32_t *off[2];  // (kv_heads,) row bytes of the heads before: head h's stream starts at ccap * off
    int32_t rows[2];  // row bytes summed over the heads: the stream's bytes per entry slot
    int32_t rot[2];   // 1: K / V rows are rotated (kv_rotate_row) before their format
    // compressed streams, head-major: per head (ccap, row[h]) bytes, for K [0] and V [1]
    uint8_t *data[2];
    int32_t ccap;     // entry capacity of every stream (and of pos / score)
    int32_t *live;    // (kv_heads,) live entries per head
    int32_t used;     // max over heads of live: the staging slots in use
    int32_t *pos;     // (kv_heads, ccap) i32 original positions; 0 until the first eviction
                      // (before it, entry e is position e and no index is held)
    float *score;     // (kv_heads, ccap) f32 per-entry scores; 0 unless a scorer wrote them
    int32_t score_held; // 1: the scores accumulate across steps (H2O), so they are held
                        // state and counted in kv_bytes(., 2); 0: scratch of one selection;
                        // -1 only inside kv_score: allocated by this call (undone on failure)
    // staging, head-major like the model's past input
    float *stage[2];  // K / V: (kv_heads, pcap, head_dim) f32, dequantized
    float *mask;      // (kv_heads, pcap) f32: 0 live, -1e9 empty
    int32_t pcap;     // staging capacity in slots (P_i)
    // the last committed step, for the scorers: its attention columns are
    //   [0, step_P): staging slots as they were, slot e = entry e while e < prev[h]
    //   [step_P, step_P + step_S): the step's new tokens = entries prev[h] + s
    int32_t *prev;    // (kv_heads,) live entries before the last commit
    int32_t step_P;   // the P the model saw in that step
    int32_t step_ok;  // 1 while that mapping holds (an eviction or a new step ends it)
    // aging (kv_age), per part: the newest entries of each head wait exact, in fp32, in
    // `res`; an entry is put into the format when it leaves the window of `recent` (axis
    // 0), or G = group at a time as one per-channel block (axis 1, KIVI: once recent + G
    // wait). Entry e of head h is in the format iff e < live[h] - fresh[p][h].
    int32_t recent[2]; // the window (0 with axis 0: no aging, every entry in the format)
    int32_t axis[2];   // 0: one row per entry; 1: per-channel blocks of G entries
    int32_t rcap[2];   // res slots per head: recent (axis 0), recent + G - 1 (axis 1); 0: none
    int32_t *fresh[2]; // (kv_heads,) entries held in res
    float *res[2];     // (kv_heads, rcap, head_dim) f32, oldest first
    uint8_t *bpar[2];  // axis 1: (kv_heads, bcap, 4 head_dim) each block's params
    int32_t *bcnt[2];  // axis 1: (kv_heads, bcap) each block's live entries (in entry order)
    int32_t *nblk[2];  // axis 1: (kv_heads,) blocks held
    int32_t bcap;      // block capacity per head
    // collapsed keys (kv_collapse, collapse.c): a head with cmode[h] != 0 stores each key as
    // its residual from one mean pre-RoPE key, in the head's K format
    int32_t *cmode;    // (kv_heads,) 0: not collapsed, 1: mean given, 2 / 3: mean of the first
                       // step after kv_collapse or a reset, not taken yet / taken
    float *kmean;      // (kv_heads, head_dim) the means, then (head_dim / 2) RoPE inverse
                       // frequencies; 0 while no head is collapsed
} kv_layer;

typedef struct {
    int32_t ready;
    int32_t n_layers, n_kv_heads, n_q_heads, head_dim, vocab;
    kv_layer *layer;  // (n_layers,)
    int32_t *table;   // the step table words
    uint8_t *io;      // the I/O buffers of the open step, one allocation
    size_t io_cap;    // bytes of io
    int32_t open_S;   // S of the open step, 0 when none
    int32_t last_S;   // S of the last committed step (its outputs stay readable)
    int32_t appended; // tokens appended since reset: the next token's position
} kv_state;

extern kv_state kv;

#define TABLE_HEAD 4  // words before the per-layer entries
#define TABLE_LAYER 8 // words per layer

// A layer's step-table entry (valid while the step's outputs are).
static inline const int32_t *kv_table_layer(int32_t l) { return kv.table + TABLE_HEAD + TABLE_LAYER * l; }

// Position of entry e of head h (identity until the layer first evicts).
static inline int32_t kv_entry_pos(const kv_layer *L, int32_t h, int32_t e) {
    return L->pos ? L->pos[(size_t)h * L->ccap + e] : e;
}

// Row e of head h in part p's stream.
static inline uint8_t *kv_row_at(const kv_layer *L, int p, int32_t h, int32_t e) {
    return L->data[p] + (size_t)L->ccap * L->off[p][h] + (size_t)e * L->row[p][h];
}

// Entries of head h held in the format of part p (the rest wait in res).
static inline int32_t kv_aged(const kv_layer *L, int p, int32_t h) { return L->live[h] - L->fresh[p][h]; }

// collapse.c: collapsed keys' residuals (x, r, slot: (head_dim,))
void kv_collapse_take_mean(kv_layer *L, int32_t h, const float *x, int32_t S, int32_t pos0);
void kv_collapse_residual(const kv_layer *L, int32_t h, const float *x, int32_t pos, float *r);
void kv_collapse_stage(const kv_layer *L, int32_t h, float *slot); // after kv_collapse_residual

// cache.c: entry e of head h (at position pos) into part p's format from x (head_dim,),
// and staged as the cache then holds it (rotation, collapse, quantization as configured).
void kv_store_entry(kv_layer *L, int p, int32_t h, int32_t e, const float *x, int32_t pos);

// cache.c: shrink a layer's staging and streams to fit its live entries (plus one slot of
// room for the next decode step); never fails (a shrink that cannot return memory keeps it).
void kv_fit_layer(kv_layer *L);

// alloc.c: give back the tail of an allocation beyond its first n bytes (in place).
void kv_mshrink(void *p, size_t n);

#endif

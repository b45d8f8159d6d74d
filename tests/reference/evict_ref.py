"""NumPy model of the KV store with eviction (wasm/cache.c + wasm/evict.c).

Two parts:

- the SCORERS of kv_score, written to repeat the C's float32 operations in the C's order
  (f32 sums from 0 in ascending index order, divisions exactly where the C divides), so
  that their results are bit-exact, not merely close;
- ``CacheModel``: what the cache holds per (layer, KV head): the original positions of the
  live entries, their compressed rows (bytes) and dequantized staging rows for K and V, the
  per-entry scores, plus the capacities, the byte counts and the step mapping, updated by
  the same operations as the store's exports. Every method returns what the export does
  (a count, 0, or an error code); ENOMEM is not modelled (the model never runs out).

Shapes: a head's ``pos`` is (n,) int64, its ``rows[p]`` (a, row bytes) uint8 for the a
entries in the format, its ``res[p]`` (n - a, head_dim) f32 for the ones waiting exact in
an aging window (kv_age; a = n without one), its ``stage[p]`` (n, head_dim) f32, n = the
head's live entries, in entry order (ascending position: appends add at the end, eviction
keeps the order). A per-channel part (axis 1) also has ``blocks[p]``: [params bytes, live
entries] per block, in entry order.
"""

from __future__ import annotations

import functools

import numpy as np

from . import kvstore_ref as kref

OK, ENOMEM, EINVAL, ESTATE = 0, -1, -2, -3
ATTN, WINDOW, LAST, KNORM, RECENT, MAX = range(6)  # KV_SCORE_* in wasm/evict.c
N_SCORES = 6
SUM_MEAN, SUM_ZERO_KEY, SUM_ZERO = range(3)  # KV_SUM_* (kv_summarize's modes)
SLOT_ROUND = 64
F32 = np.float32
INF = np.float32(np.inf)


def round_slots(n: int) -> int:
    return (n + SLOT_ROUND - 1) // SLOT_ROUND * SLOT_ROUND


def grow_cap(cur: int, need: int) -> int:
    """kv_step_begin's capacity: unchanged if need fits, else >= 25% more, multiple of 64."""
    if need <= cur:
        return cur
    return round_slots(max(cur + cur // 4, need))


def fit_cap(cur: int, used: int) -> int:
    """kv_fit_layer after an eviction: round64(used + 1) when that is smaller (room for one
    decode step without growth)."""
    return min(cur, round_slots(used + 1))


# ---------------------------------------------------------------------------------------
# Scorers (score_layer / pooled in wasm/evict.c), one KV head at a time
# ---------------------------------------------------------------------------------------


def _ieee(f):
    """inf and NaN scores are part of the tests (inf - inf, NaN + x): IEEE results, no
    NumPy warnings about them."""

    @functools.wraps(f)
    def quiet(*args, **kw):
        with np.errstate(invalid="ignore", over="ignore"):
            return f(*args, **kw)

    return quiet


def columns(prev: int, step_P: int, n: int) -> np.ndarray:
    """(n,) attention column of each entry: entries before the last step sat in staging slot
    e (column e), the step's new ones are column step_P + (e - prev)."""
    e = np.arange(n)
    return np.where(e < prev, e, step_P + (e - prev))


@_ieee
def score_attn(attn: np.ndarray, h: int, G: int, cols: np.ndarray, old: np.ndarray, weight: int = 1) -> np.ndarray:
    """H2O: the group's attention summed (from 0, query heads ascending), times the step's
    weight, then the old score added. attn: (q_heads, T); old: (n,) the held scores."""
    s = np.zeros(len(cols), F32)
    for q in range(h * G, (h + 1) * G):
        s = s + attn[q, cols]
    return s * F32(weight) + old


@_ieee
def score_max(attn: np.ndarray, h: int, G: int, cols: np.ndarray, old: np.ndarray, S: int) -> np.ndarray:
    """The largest per-query group mean a step gave: (group sum) / (S · G), kept where it
    beats the held score (NaN never does)."""
    s = np.zeros(len(cols), F32)
    for q in range(h * G, (h + 1) * G):
        s = s + attn[q, cols]
    s = s / (F32(S) * F32(G))
    return np.where(s > old, s, old).astype(F32)


@_ieee
def pooled(attn_q: np.ndarray, m: int, kernel: int, S: int) -> np.ndarray:
    """(m,) SnapKV's pooled window of one query head over the m entries before the step:
    raw = attn / S (f32 division), summed over [e - k/2, e + k/2] inside [0, m) in ascending
    order, then / kernel. Out-of-range terms are added as +0.0: exact, since the C's sum
    starts at +0.0 and so is never -0.0 (x + 0.0 == x for every other x, NaN and inf too)."""
    r = kernel // 2
    raw = np.zeros(m + 2 * r, F32)
    raw[r : r + m] = attn_q[:m] / F32(S)
    acc = np.zeros(m, F32)
    for o in range(kernel):  # j = e - r + o, ascending
        acc = acc + raw[o : o + m]
    return acc / F32(kernel)


@_ieee
def score_window(
    attn: np.ndarray, h: int, G: int, m: int, n: int, kernel: int, S: int, w: np.ndarray | None = None
) -> np.ndarray:
    """SnapKV: entries before the step get the pooled window score, averaged over the head's
    query group (or weighted by w, (q_heads,), over every query head, then / sum(w)); the
    step's own entries (the observation window) get +inf."""
    s = np.zeros(m, F32)
    if w is None:
        for q in range(h * G, (h + 1) * G):
            s = s + pooled(attn[q], m, kernel, S)
        s = s / F32(G)
    else:
        w = np.asarray(w, F32)
        wsum = F32(0)
        for x in w:
            wsum = F32(wsum + x)
        for q, x in enumerate(w):
            if x != 0:
                s = s + x * pooled(attn[q], m, kernel, S)
        s = s / wsum
    return np.concatenate([s, np.full(n - m, INF)])


@_ieee
def score_last(attn: np.ndarray, cols: np.ndarray, m: int, S: int) -> np.ndarray:
    """TOVA: the step's attention summed over every query head, / (S * q_heads); the step's
    own entries +inf."""
    Q = attn.shape[0]
    s = np.zeros(m, F32)
    for q in range(Q):
        s = s + attn[q, cols[:m]]
    s = s / (F32(S) * F32(Q))
    return np.concatenate([s, np.full(len(cols) - m, INF)])


@_ieee
def score_knorm(k: np.ndarray) -> np.ndarray:
    """Minus the L2 norm of each staged key, (n, head_dim) -> (n,): f32 squares summed over
    head_dim ascending, f32 sqrt (correctly rounded, like sqrtf)."""
    s = np.zeros(k.shape[0], F32)
    for d in range(k.shape[1]):
        s = s + k[:, d] * k[:, d]
    return -np.sqrt(s)


def score_recent(pos: np.ndarray) -> np.ndarray:
    """StreamingLLM: the original position (newer ranks higher)."""
    return np.asarray(pos).astype(F32)


# ---------------------------------------------------------------------------------------
# Selection (kv_select): the ranking
# ---------------------------------------------------------------------------------------


def protected(pos: np.ndarray, scores: np.ndarray, sinks: int, recent: int) -> np.ndarray:
    """(n,) bool: a sink position, one of the `recent` newest entries, or scored +inf."""
    n = len(pos)
    return (pos < sinks) | (np.arange(n) >= n - recent) | (scores == INF)


def rank(pos: np.ndarray, scores: np.ndarray, sinks: int, recent: int) -> np.ndarray:
    """Entry indices best first: protected first, then score descending (NaN lowest, like
    -inf), then original position ascending. A total order: positions are distinct."""
    s = np.where(np.isnan(scores), -INF, scores)
    prot = protected(pos, scores, sinks, recent)
    return np.lexsort((pos, -s + F32(0), ~prot))  # + 0: -0.0 and 0.0 tie, as in the C


def keep_best(pos: np.ndarray, scores: np.ndarray, budget: int, sinks: int, recent: int) -> np.ndarray:
    """The entry indices one head keeps for a budget (< 0 or >= live: all), ascending."""
    n = len(pos)
    if budget < 0 or budget >= n:
        return np.arange(n)
    return np.sort(rank(pos, scores, sinks, recent)[:budget])


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------


class Head:
    """One KV head of one layer: its live entries."""

    def __init__(self, D: int, rows: tuple[int, int]):
        self.pos = np.zeros(0, np.int64)  # (n,)
        self.rows = [np.zeros((0, r), np.uint8) for r in rows]  # K, V: (aged, row bytes)
        self.res = [np.zeros((0, D), F32) for _ in range(2)]  # K, V: (n - aged, D) waiting exact
        self.blocks: list[list[list]] = [[], []]  # K, V per-channel: [params, live entries]
        self.stage = [np.zeros((0, D), F32) for _ in range(2)]  # K, V: (n, D)
        self.score: np.ndarray | None = None  # (n,) f32 while the layer holds scores

    @property
    def n(self) -> int:
        return len(self.pos)

    def aged(self, p: int) -> int:
        return self.n - len(self.res[p])

    def take(self, idx: np.ndarray) -> None:
        """Keep the entries idx (ascending), in order."""
        idx = np.asarray(idx, np.int64)
        keep = np.zeros(self.n, bool)
        keep[idx] = True
        for p in range(2):
            a = self.aged(p)
            self.rows[p] = self.rows[p][idx[idx < a]]
            self.res[p] = self.res[p][idx[idx >= a] - a]
            start, left = 0, []
            for params, cnt in self.blocks[p]:
                k = int(keep[start : start + cnt].sum())
                start += cnt
                if k:
                    left.append([params, k])
            self.blocks[p] = left
        self.pos = self.pos[idx]
        self.stage = [s[idx] for s in self.stage]
        if self.score is not None:
            self.score = self.score[idx]


class Layer:
    """One layer: its formats, heads, capacities, held index / scores, last-step mapping."""

    def __init__(self, H: int, D: int):
        self.D, self.H = D, H
        self.fmt = [[kref.F32] * H, [kref.F32] * H]  # K, V: per KV head
        self.group = 32
        self.recent = [0, 0]  # kv_age's window per part
        self.axis = [0, 0]  # 1: per-channel blocks
        self.heads = [Head(D, self.head_rows(i)) for i in range(H)]
        self.pcap = 0  # staging capacity (the model's P)
        self.ccap = 0  # stream / index capacity (0: no streams allocated)
        self.evicted = False  # holds a position list (kv_bytes part 2)
        self.scored = False  # holds score lists
        self.held = False  # score_held: ATTN accumulates across steps
        self.prev = [0] * H  # live entries before the last commit
        self.step_P = 0
        self.step_ok = False
        self.attn: np.ndarray | None = None  # (q_heads, step_P + S) of the last commit

    @property
    def row(self) -> list[list[int]]:
        """[part][head] bytes of one entry's row."""
        return [[kref.channel_row_bytes(f, self.D) if a else kref.row_bytes(f, self.group, self.D) for f in fs]
                for fs, a in zip(self.fmt, self.axis)]

    def head_rows(self, i: int) -> tuple[int, int]:
        return self.row[0][i], self.row[1][i]

    def new_rows(self) -> None:
        """The (empty) heads' row arrays, for the current formats."""
        for i, h in enumerate(self.heads):
            h.rows = [np.zeros((0, r), np.uint8) for r in self.head_rows(i)]

    def aging(self, p: int) -> bool:
        return self.recent[p] > 0 or self.axis[p] == 1

    def to_age(self, h: Head, p: int, S: int) -> int:
        """Entries a commit of S tokens puts into the format (to_age in wasm/cache.c)."""
        n = max(0, len(h.res[p]) + S - self.recent[p])
        return n - n % self.group if self.axis[p] else n

    @property
    def used(self) -> int:
        return max(h.n for h in self.heads)

    def clear(self) -> None:
        """free_layer: every entry and buffer gone (formats stay)."""
        self.heads = [Head(self.D, self.head_rows(i)) for i in range(self.H)]
        self.pcap = self.ccap = 0
        self.evicted = self.scored = self.held = self.step_ok = False
        self.prev = [0] * len(self.heads)
        self.step_P = 0
        self.attn = None

    def drop_scores(self) -> None:
        self.scored = self.held = False
        for h in self.heads:
            h.score = None

    def relaid(self, old_row: list, fresh: bool = False) -> None:
        """After a change of formats or aging: a new row width (or, with ``fresh``, streams
        never laid out) drops the streams and scores — the position list stays: the next
        token is still ``appended``, not entry 0 — and the (empty) rows take the new width."""
        if self.row != old_row or (fresh and self.ccap == 0):
            self.ccap = 0
            self.drop_scores()
        self.new_rows()

    def settle(self) -> None:
        """After a compaction: the mapping ends, scratch scores go, the buffers shrink."""
        self.step_ok = False
        if self.scored and not self.held:
            self.drop_scores()
        self.pcap = fit_cap(self.pcap, self.used)
        self.ccap = fit_cap(self.ccap, self.used)

    def alike(self) -> bool:
        """heads_alike: every head holds the same entries and had the same before the step."""
        h0 = self.heads[0]
        return all(h.n == h0.n and p == self.prev[0] and np.array_equal(h.pos, h0.pos)
                   for h, p in zip(self.heads, self.prev))

    def nbytes(self, part: int) -> int:
        """kv_bytes(layer, part)."""
        entries = sum(h.n for h in self.heads)
        if part < 2:
            return sum(h.aged(part) * self.row[part][i] + 4 * self.D * (len(h.res[part]) + len(h.blocks[part]))
                       for i, h in enumerate(self.heads))
        blocks = sum(len(h.blocks[0]) + len(h.blocks[1]) for h in self.heads)
        return entries * (4 * self.evicted + 4 * (self.scored and self.held)) + 4 * blocks * self.evicted


class CacheModel:
    """The store's state after the same export calls (kv_init shape; every layer f32/f32)."""

    def __init__(self, n_layers: int, n_kv_heads: int, n_q_heads: int, head_dim: int):
        self.H, self.Q, self.D = n_kv_heads, n_q_heads, head_dim
        self.G = n_q_heads // n_kv_heads
        self.layers = [Layer(n_kv_heads, head_dim) for _ in range(n_layers)]
        self.appended = 0  # the next token's position
        self.open_S = 0
        self.last_S = 0

    # ---- setup

    def configure(self, layer: int, kf: int, vf: int, group: int) -> int:
        """kv_configure with formats the C accepts (the model does not validate them)."""
        sel = self._layers(layer)
        if sel is None:
            return EINVAL
        if any(L.used > 0 for L in sel):
            return ESTATE
        for L in sel:
            old = L.row
            L.fmt, L.group = [[kf] * self.H, [vf] * self.H], group
            L.recent, L.axis = [0, 0], [0, 0]
            L.relaid(old, fresh=True)
        self.open_S = 0
        return OK

    def age(self, layer: int, part: int, recent: int, axis: int) -> int:
        """kv_age with a setting the C accepts (the model does not validate it)."""
        sel = self._layers(layer)
        if any(L.used > 0 for L in sel):
            return ESTATE
        for L in sel:
            old = L.row
            L.recent[part], L.axis[part] = recent, axis
            L.relaid(old, fresh=True)
        self.open_S = 0
        return OK

    def configure_head(self, layer: int, head: int, kf: int, vf: int) -> int:
        """kv_configure_head with formats the C accepts (the model does not validate them)."""
        L = self.layers[layer]
        if L.used > 0:
            return ESTATE
        old = L.row
        L.fmt[0][head], L.fmt[1][head] = kf, vf
        L.relaid(old)
        self.open_S = 0
        return OK

    def reset(self) -> int:
        for L in self.layers:
            L.clear()
        self.appended = self.open_S = self.last_S = 0
        return OK

    # ---- steps

    def step_begin(self, S: int) -> int:
        if S < 1:
            return EINVAL
        for L in self.layers:
            L.pcap = grow_cap(L.pcap, L.used + S)
            L.ccap = grow_cap(L.ccap, L.used + S)
            L.step_ok = False
        self.open_S, self.last_S = S, 0
        return OK

    def step_commit(self, S: int, k: list, v: list, attn: list) -> int:
        """k, v: per layer (kv_heads, S, head_dim) f32 as written to new_k / new_v; attn: per
        layer (q_heads, P + S) f32 as written to the attn buffer (what the scorers read)."""
        if self.open_S == 0:
            return ESTATE
        if S != self.open_S:
            return EINVAL
        for L, kl, vl, al in zip(self.layers, k, v, attn):
            for i, h in enumerate(L.heads):
                L.prev[i] = h.n
                h.pos = np.concatenate([h.pos, np.arange(self.appended, self.appended + S)])
                for p, x in enumerate((kl, vl)):
                    x = np.asarray(x, F32)[i]  # (S, D) this head's new rows
                    if L.aging(p):
                        self._append_aging(L, h, p, x, L.fmt[p][i])
                        continue
                    raw = kref.quantize(L.fmt[p][i], L.group, x)  # every row at once
                    row = kref.row_bytes(L.fmt[p][i], L.group, self.D)
                    h.rows[p] = np.concatenate([h.rows[p], np.frombuffer(raw, np.uint8).reshape(S, row)])
                    h.stage[p] = np.concatenate([h.stage[p], kref.dequantize(L.fmt[p][i], L.group, raw,
                                                                             S * self.D).reshape(S, -1)])
                if L.scored:
                    h.score = np.concatenate([h.score, np.zeros(S, F32)])
            L.step_P, L.step_ok = L.pcap, True
            L.attn = np.asarray(al, F32).reshape(self.Q, L.pcap + S)
        self.appended += S
        self.last_S, self.open_S = S, 0
        return OK

    def _append_aging(self, L: Layer, h: Head, p: int, x: np.ndarray, fmt: int) -> None:
        """x (S, D): what leaves the window goes into the format, the rest waits exact."""
        S, D = len(x), self.D
        a0 = len(h.rows[p])  # entries in the format (pos already holds the new ones)
        aged = L.to_age(h, p, S)
        waiting = np.concatenate([h.res[p], x])  # entries a0 .. a0 + f + S - 1
        stage = np.concatenate([h.stage[p], x])
        go = waiting[:aged]
        if L.axis[p]:
            rows = []
            for b in range(0, aged, L.group):
                params, codes = kref.quantize_channel(fmt, go[b : b + L.group])
                h.blocks[p].append([params, L.group])
                rows.append(codes)
                stage[a0 + b : a0 + b + L.group] = kref.dequantize_channel(fmt, params, codes)
            rows = np.concatenate(rows) if rows else np.zeros((0, h.rows[p].shape[1]), np.uint8)
        else:
            raw = kref.quantize(fmt, L.group, go) if aged else b""
            rows = np.frombuffer(raw, np.uint8).reshape(aged, h.rows[p].shape[1])
            if aged:
                stage[a0 : a0 + aged] = kref.dequantize(fmt, L.group, raw, aged * D).reshape(aged, D)
        h.rows[p] = np.concatenate([h.rows[p], rows])
        h.res[p] = waiting[aged:].copy()
        h.stage[p] = stage

    def truncate(self, n: int) -> int:
        if n < 0 or n > self.appended:
            return EINVAL
        for L in self.layers:
            if L.evicted or any(h.n != self.appended for h in L.heads):
                return ESTATE
            if any(L.axis[p] and n < h.aged(p) for h in L.heads for p in range(2)):
                return ESTATE
        for L in self.layers:
            for h in L.heads:
                h.take(np.arange(n))
            L.step_ok = False
        self.appended, self.open_S, self.last_S = n, 0, 0
        return OK

    # ---- scorers

    def score(self, layer: int, kind: int, kernel: int = 1, weights: np.ndarray | None = None) -> int:
        """kv_score; weights: (q_heads,) for one layer, (n_layers, q_heads) for layer -1."""
        sel = self._layers(layer)
        if sel is None or not 0 <= kind < N_SCORES:
            return EINVAL
        if kind == WINDOW and (kernel < 1 or kernel % 2 == 0):
            return EINVAL
        if kind == ATTN and kernel < 1:
            return EINVAL
        w = None if weights is None else np.asarray(weights, F32).reshape(len(sel), self.Q)
        for i, L in enumerate(sel):
            if (kind <= LAST or kind == MAX) and (not L.step_ok or self.last_S < 1):
                return ESTATE
            if (kind == LAST or (kind == WINDOW and w is not None)) and not L.alike():
                return ESTATE
            if kind == WINDOW and w is not None:
                total = F32(0)
                for x in w[i]:
                    if not x >= 0 or x == INF:
                        return EINVAL
                    total = F32(total + x)
                if not total > 0:
                    return EINVAL
        for i, L in enumerate(sel):
            if not L.scored and L.ccap:  # a fresh list: its values are all written below
                L.scored = True
                for h in L.heads:
                    h.score = np.zeros(h.n, F32)
            if kind in (ATTN, MAX) and not L.held:  # a held accumulation starts at zero
                for h in L.heads:
                    if h.score is not None:
                        h.score[:] = 0
                L.held = True
        for i, L in enumerate(sel):
            if L.scored:
                self._score_layer(L, kind, kernel, None if w is None else w[i])
        return OK

    def _score_layer(self, L: Layer, kind: int, kernel: int, w) -> None:
        S = self.last_S
        for i, h in enumerate(L.heads):
            n, m = h.n, L.prev[i]
            cols = columns(m, L.step_P, n)
            if kind == ATTN:
                h.score = score_attn(L.attn, i, self.G, cols, h.score, kernel)
            elif kind == MAX:
                h.score = score_max(L.attn, i, self.G, cols, h.score, S)
            elif kind == WINDOW:
                h.score = score_window(L.attn, i, self.G, m, n, kernel, S, w)
            elif kind == LAST:
                h.score = score_last(L.attn, cols, m, S)
            elif kind == KNORM:
                h.score = score_knorm(h.stage[0])
            else:
                h.score = score_recent(h.pos)

    def score_drop(self, layer: int) -> int:
        sel = self._layers(layer)
        if sel is None:
            return EINVAL
        for L in sel:
            L.drop_scores()
        return OK

    # ---- eviction

    def select(self, budgets, sinks: int, recent: int) -> int:
        """kv_select; budgets: (n_layers, kv_heads). Returns the entries evicted."""
        if sinks < 0 or recent < 0:
            return EINVAL
        B = np.asarray(budgets).reshape(len(self.layers), self.H)
        cut = [[0 <= B[i, j] < h.n for j, h in enumerate(L.heads)] for i, L in enumerate(self.layers)]
        for i, L in enumerate(self.layers):
            if any(cut[i]) and not L.scored:
                return ESTATE
        if not any(map(any, cut)):
            return 0
        dropped = 0
        self.open_S = 0
        for i, L in enumerate(self.layers):
            if not any(cut[i]):
                continue
            L.evicted = True
            for j, h in enumerate(L.heads):
                if cut[i][j]:
                    dropped += h.n - B[i, j]
                    h.take(keep_best(h.pos, h.score, B[i, j], sinks, recent))
            L.settle()
        return int(dropped)

    def evict(self, layer: int, head: int, keep) -> int:
        """kv_evict: keep exactly the listed entry indices of one head."""
        if not 0 <= layer < len(self.layers) or not 0 <= head < self.H:
            return EINVAL
        L = self.layers[layer]
        h = L.heads[head]
        keep = np.asarray(keep, np.int64)
        if len(keep) > h.n or np.any(keep < 0) or np.any(keep >= h.n) or np.any(np.diff(keep) <= 0):
            return EINVAL
        if len(keep) == h.n:
            return 0
        dropped = h.n - len(keep)
        L.evicted = True
        self.open_S = 0
        h.take(keep)
        L.settle()
        return dropped

    @_ieee
    def summarize(self, layer: int, spans, mode: int) -> int:
        """kv_summarize: in every head of the layer(s), the entries whose positions lie in
        each span (lo, hi, at) become one entry at ``at``: the mean of their staged rows
        (f64 sums in entry order, one f32 rounding) or zeros, stored in the head's format
        like a new entry (quantized, or waiting exact inside an aging window)."""
        sel = self._layers(layer)
        spans = [tuple(int(x) for x in s) for s in spans]
        if sel is None or not 0 <= mode < 3:
            return EINVAL
        for i, (lo, hi, at) in enumerate(spans):
            if lo < 0 or hi <= lo or hi > self.appended or not lo <= at < hi or (i and lo < spans[i - 1][1]):
                return EINVAL
        if any(L.axis[0] or L.axis[1] for L in sel):
            return ESTATE
        if not spans or all(h.n == 0 for L in sel for h in L.heads):
            return 0
        removed = 0
        self.open_S = 0
        for L in sel:
            L.evicted = True
            for i, h in enumerate(L.heads):
                keep = np.ones(h.n, bool)
                for lo, hi, at in spans:
                    where = np.flatnonzero((h.pos >= lo) & (h.pos < hi))
                    if not len(where):
                        continue
                    e, e1 = int(where[0]), int(where[-1]) + 1
                    for p in range(2):
                        if mode == SUM_ZERO or (p == 0 and mode == SUM_ZERO_KEY):
                            x = np.zeros(self.D, F32)
                        else:
                            x = (np.cumsum(h.stage[p][e:e1].astype(np.float64), axis=0)[-1] / (e1 - e)).astype(F32)
                        a = h.aged(p)
                        if e < a:
                            raw = kref.quantize(L.fmt[p][i], L.group, x[None])
                            h.rows[p][e] = np.frombuffer(raw, np.uint8)
                            h.stage[p][e] = kref.dequantize(L.fmt[p][i], L.group, raw, self.D)
                        else:
                            h.res[p][e - a] = x
                            h.stage[p][e] = x
                    if h.score is not None:
                        t = F32(0)
                        for v in h.score[e:e1]:
                            t = F32(t + v)
                        h.score[e] = t
                    h.pos[e] = at
                    keep[e + 1:e1] = False
                    removed += e1 - e - 1
                if not keep.all():
                    h.take(np.flatnonzero(keep))
            L.settle()
        return removed

    # ---- what the store shows

    def staging(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K, V (kv_heads, pcap, head_dim) and mask (kv_heads, pcap): live slots hold the
        dequantized rows, the rest are zero and masked."""
        L = self.layers[layer]
        K, V = (np.zeros((self.H, L.pcap, self.D), F32) for _ in range(2))
        mask = np.full((self.H, L.pcap), kref.MASK_EMPTY, F32)
        for i, h in enumerate(L.heads):
            K[i, : h.n], V[i, : h.n] = h.stage
            mask[i, : h.n] = 0
        return K, V, mask

    def rows(self, layer: int, head: int, part: int) -> bytes:
        """kv_rows: the rows in the format, the blocks' params, the waiting entries."""
        h = self.layers[layer].heads[head]
        return h.rows[part].tobytes() + b"".join(b[0] for b in h.blocks[part]) + h.res[part].tobytes()

    def meter(self) -> list[tuple[int, ...]]:
        """kv_meter: per layer K, V, index bytes, then each head's live entries."""
        return [tuple([L.nbytes(p) for p in range(3)] + [h.n for h in L.heads]) for L in self.layers]

    def bytes(self, layer: int, part: int) -> int:
        return sum(L.nbytes(part) for L in self._layers(layer))

    # ---- helpers

    def _layers(self, layer: int) -> list[Layer] | None:
        if layer == -1:
            return self.layers
        return [self.layers[layer]] if 0 <= layer < len(self.layers) else None

"""Eviction (wasm/evict.c, and the fitting in wasm/cache.c) against the NumPy model in
tests/reference/evict_ref.py, on both builds: the scorers bit for bit, the selection's
ranking, a long random run of store operations checked after every one, failures that
change nothing, and the capacity handed to the model.

No export shows the score lists, the stream capacity or the step mapping, so the checks
also read the store's own structs out of linear memory (``Peek``: white box, the layout of
wasm/cache.h, cross-checked against the exports so that a layout change fails loudly
instead of reading garbage). Each export call costs ~40 us through wasmtime-py, so the
check after every operation reads one zero-copy view of memory, and the exports
(``KVStore.rows``, ``positions``, ``meter``, ``kv_bytes``, ...) are checked every few.
"""

from __future__ import annotations

import collections
import contextlib
import math

import numpy as np
import pytest

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab import formats
from kvlab.store import TABLE_HEAD, TABLE_LAYER, StepTable
from tests.reference import evict_ref as ev
from tests.wasm.test_wasm_store import f32, new_store

SHAPE = dict(n_layers=3, n_kv_heads=3, n_q_heads=6, head_dim=64, vocab=100)
FMTS = list(formats.NAMES)  # every format
LAYER_FORMATS = [(formats.Q4, formats.F16, 16), (formats.Q3, formats.Q2, 64), (formats.Q4_0, formats.Q8, 32)]


@pytest.fixture(scope="module", params=[SIMD_NAME, SCALAR_NAME])
def wasm_path(request):
    return build_wasm() / request.param


# ---------------------------------------------------------------------------------------
# Reading the store's structs (white box)
# ---------------------------------------------------------------------------------------

# kv_state and kv_layer of wasm/cache.h, one 4-byte word per field (wasm32: int32_t,
# size_t and pointers are all 4 bytes; arrays spelled out)
STATE_FIELDS = "ready n_layers n_kv_heads n_q_heads head_dim vocab layer table io io_cap open_S last_S appended".split()
LAYER_FIELDS = (
    "fmt0 fmt1 group row0 row1 off0 off1 rows0 rows1 rot0 rot1 data0 data1 ccap live used pos score score_held "
    "stage0 stage1 mask pcap prev step_P step_ok "
    "recent0 recent1 axis0 axis1 rcap0 rcap1 fresh0 fresh1 res0 res1 bpar0 bpar1 bcnt0 bcnt1 nblk0 nblk1 bcap cmode kmean"
).split()


class Peek:
    """The store's kv_state / kv_layer structs, read from linear memory."""

    def __init__(self, m, shape: dict):
        self.m, self.shape = m, shape
        words = self.memory().view(np.int32)
        key = [1, shape["n_layers"], shape["n_kv_heads"], shape["n_q_heads"], shape["head_dim"], shape["vocab"]]
        hits = [int(i) for i in np.flatnonzero(words[: -len(STATE_FIELDS)] == 1) if list(words[i : i + 6]) == key]
        assert len(hits) == 1, f"kv_state not found (or not unique): {hits}"
        self.state_at = 4 * hits[0]
        st, layers, _ = self.read()
        for i, f in enumerate(layers):  # the layout agrees with what the exports say
            assert [f["stage0"], f["stage1"], f["mask"], f["data0"], f["data1"]] == [
                m.call("kv_layer_ptr", i, w) for w in range(5)
            ], "kv_layer layout changed: update LAYER_FIELDS"
            assert (f["pcap"], f["used"]) == (m.call("kv_capacity", i), m.call("kv_tokens", i))

    def memory(self) -> np.ndarray:
        """A zero-copy (bytes,) view: take it again after any call that may grow memory."""
        return np.frombuffer(self.m.buffer(0, self.m.memory_bytes()), np.uint8)

    def read(self) -> tuple[dict, list[dict], np.ndarray]:
        """(kv_state fields, [kv_layer fields per layer], the memory view)."""
        mem = self.memory()
        words = mem.view(np.int32)
        at = self.state_at // 4
        st = dict(zip(STATE_FIELDS, map(int, words[at : at + len(STATE_FIELDS)])))
        n = len(LAYER_FIELDS)
        layers = [
            dict(zip(LAYER_FIELDS, map(int, words[st["layer"] // 4 + n * i : st["layer"] // 4 + n * (i + 1)])))
            for i in range(st["n_layers"])
        ]
        return st, layers, mem


def at(mem: np.ndarray, ptr: int, dtype, shape) -> np.ndarray:
    """(shape) of dtype at ptr in a memory view."""
    n = math.prod(shape) * np.dtype(dtype).itemsize
    return mem[ptr : ptr + n].view(dtype).reshape(shape)


def same_f32(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, except that any NaN equals any NaN (wasm does not pin NaN payloads)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    ok = ~np.isnan(a)
    return np.array_equal(a[ok].view(np.uint32), b[ok].view(np.uint32))


# ---------------------------------------------------------------------------------------
# The store and its model, driven together
# ---------------------------------------------------------------------------------------


def attention(rng, shape, kind: str) -> np.ndarray:
    """Attention rows to write into a step's attn buffer: 'continuous' (no ties), 'ties'
    (values in {0, 1, 2}: ties everywhere) or 'wild' (ties plus +inf, NaN and -inf)."""
    if kind == "continuous":
        return rng.random(shape, np.float32)
    a = rng.integers(0, 3, shape).astype(np.float32)
    if kind == "wild":
        a[rng.random(shape) < 0.03] = np.inf
        a[rng.random(shape) < 0.03] = np.nan
        a[rng.random(shape) < 0.01] = -np.inf
    return a


class Twin:
    """A KVStore and the NumPy CacheModel, given the same calls: every operation asserts
    that both return the same (count or error code), ``check`` that both hold the same."""

    ARGS = 1 << 16  # bytes for the calls' argument lists (budgets, keep lists, weights)

    def __init__(self, path, shape=SHAPE):
        self.s, self.m = new_store(path, shape)
        self.L, self.H, self.Q, self.D = (shape[k] for k in ("n_layers", "n_kv_heads", "n_q_heads", "head_dim"))
        self.model = ev.CacheModel(self.L, self.H, self.Q, self.D)
        self.args = self.s.alloc(self.ARGS)  # allocated once: no operation allocates on the host side
        self.scratch = self.s.alloc(4 * self.L * (3 + self.H))  # kv_meter's output
        self.peek = Peek(self.m, shape)
        self.table = None  # the open step's table
        self.pending = None  # what the open step's host wrote: (k, v, attn) per layer

    def both(self, got: int, want: int, what) -> int:
        assert got == want, (what, got, want)
        return got

    def put(self, a) -> int:
        a = np.ascontiguousarray(a)
        assert a.nbytes <= self.ARGS
        self.m.write(self.args, a.tobytes())
        return self.args

    # ---- operations

    def configure(self, layer, kf, vf, G):
        return self.both(self.m.call("kv_configure", layer, kf, vf, G), self.model.configure(layer, kf, vf, G),
                         ("configure", layer, kf, vf, G))

    def reset(self):
        return self.both(self.m.call("kv_reset"), self.model.reset(), "reset")

    def configure_head(self, layer, head, kf, vf):
        """kv_configure_head; a format the layer's group cannot hold, or one without
        per-channel blocks on a per-channel part, is refused (EINVAL)."""
        got = self.m.call("kv_configure_head", layer, head, kf, vf)
        L = self.model.layers[layer]
        bad = any(not formats.valid(f, L.group, self.D) or (L.axis[p] and f not in formats.CHANNEL_BITS)
                  for p, f in enumerate((kf, vf)))
        want = formats.EINVAL if bad else self.model.configure_head(layer, head, kf, vf)
        return self.both(got, want, ("configure_head", layer, head, kf, vf))

    def age(self, layer, part, recent, axis):
        """kv_age; a per-channel axis on a format without one is refused (EINVAL)."""
        got = self.m.call("kv_age", layer, part, recent, axis)
        sel = self.model._layers(layer)
        if axis and any(f not in formats.CHANNEL_BITS for L in sel for f in L.fmt[part]):
            want = formats.ESTATE if any(L.used for L in sel) and got == formats.ESTATE else formats.EINVAL
            return self.both(got, want, ("age", layer, part, recent, axis))
        return self.both(got, self.model.age(layer, part, recent, axis), ("age", layer, part, recent, axis))

    def begin(self, S: int, rng, attn: str = "continuous") -> int:
        """kv_step_begin, then the host's writes (random K/V and attention) into the table."""
        r = self.m.call("kv_step_begin", S)
        code = self.model.step_begin(S)
        self.both(min(r, 0), code, ("begin", S))
        if r < 0:
            return r
        self.table = t = self._table(r)
        ks, vs, attns = [], [], []
        for i, lay in enumerate(t.layers):
            assert lay.P == self.model.layers[i].pcap
            k = (rng.standard_normal((self.H, S, self.D)) * rng.uniform(0.1, 4)).astype(np.float32)
            v = rng.standard_normal((self.H, S, self.D)).astype(np.float32)
            a = attention(rng, (self.Q, lay.P + S), attn)
            self.m.write(lay.new_k, k.tobytes())
            self.m.write(lay.new_v, v.tobytes())
            self.m.write(lay.attn, a.tobytes())
            ks.append(k)
            vs.append(v)
            attns.append(a)
        self.pending = (ks, vs, attns)
        return 0

    def _table(self, ptr: int) -> StepTable:
        return StepTable.parse(ptr, self.m.read(ptr, 4 * (TABLE_HEAD + TABLE_LAYER * self.L)))

    def commit(self, S: int) -> int:
        k, v, a = self.pending or (None, None, None)
        return self.both(self.m.call("kv_step_commit", S), self.model.step_commit(S, k, v, a), ("commit", S))

    def append(self, S: int, rng, attn: str = "continuous") -> None:
        assert self.begin(S, rng, attn) == 0
        assert self.commit(S) == 0

    def score(self, layer: int, kind: int, kernel: int = 1, weights=None) -> int:
        ptr = 0 if weights is None else self.put(np.asarray(weights, np.float32))
        return self.both(self.m.call("kv_score", layer, kind, kernel, ptr),
                         self.model.score(layer, kind, kernel, weights), ("score", layer, kind, kernel))

    def score_drop(self, layer: int) -> int:
        return self.both(self.m.call("kv_score_drop", layer), self.model.score_drop(layer), ("drop", layer))

    def select(self, budgets, sinks: int = 0, recent: int = 0) -> int:
        ptr = self.put(np.asarray(budgets, np.int32))
        return self.both(self.m.call("kv_select", ptr, sinks, recent), self.model.select(budgets, sinks, recent),
                         ("select", np.asarray(budgets).tolist(), sinks, recent))

    def evict(self, layer: int, head: int, keep) -> int:
        ptr = self.put(np.asarray(keep, np.int32)) if len(keep) else self.args
        return self.both(self.m.call("kv_evict", layer, head, ptr, len(keep)), self.model.evict(layer, head, keep),
                         ("evict", layer, head, list(keep)))

    def summarize(self, layer: int, spans, mode: int = ev.SUM_MEAN) -> int:
        spans = np.asarray(spans, np.int32).reshape(-1, 3)
        ptr = self.put(spans) if len(spans) else self.args
        return self.both(self.m.call("kv_summarize", layer, ptr, len(spans), mode),
                         self.model.summarize(layer, spans.tolist(), mode), ("summarize", layer, spans.tolist(), mode))

    def truncate(self, n: int) -> int:
        return self.both(self.m.call("kv_truncate", n), self.model.truncate(n), ("truncate", n))

    # ---- what both hold

    def check(self, full: bool = False) -> None:
        """The store's state equals the model's: from memory every time (allocates nothing,
        so it also runs under a heap limit), through the exports too when ``full``."""
        self.check_memory()
        if full:
            self.check_exports()

    def check_memory(self) -> None:
        model, H, D = self.model, self.H, self.D
        n = self.m.call("kv_meter", self.scratch)  # before the view: a call may move memory
        st, layers, mem = self.peek.read()
        meter = at(mem, self.scratch, np.int32, (n,)).reshape(self.L, 3 + H)
        assert [tuple(map(int, r)) for r in meter] == model.meter(), "kv_meter"
        assert (st["appended"], st["open_S"], st["last_S"]) == (model.appended, model.open_S, model.last_S)
        for i, (f, L) in enumerate(zip(layers, model.layers)):
            where = f"layer {i}"
            fmts = [at(mem, f[f"fmt{p}"], np.int32, (H,)).tolist() for p in range(2)]
            rows = [at(mem, f[f"row{p}"], np.int32, (H,)).tolist() for p in range(2)]
            offs = [at(mem, f[f"off{p}"], np.int32, (H,)).tolist() for p in range(2)]
            assert (fmts, f["group"], rows) == (L.fmt, L.group, L.row), where
            assert offs == [np.concatenate([[0], np.cumsum(r)[:-1]]).tolist() for r in rows], where
            assert [f["rows0"], f["rows1"]] == [sum(r) for r in rows], where
            assert (f["pcap"], f["ccap"], f["used"]) == (L.pcap, L.ccap, L.used), where
            assert list(at(mem, f["live"], np.int32, (H,))) == [h.n for h in L.heads], where
            assert (bool(f["pos"]), bool(f["score"]), f["score_held"]) == (L.evicted, L.scored, L.held), where
            assert f["step_ok"] == L.step_ok, where
            if L.step_ok:
                assert f["step_P"] == L.step_P and list(at(mem, f["prev"], np.int32, (H,))) == L.prev, where
            # staging: what the model is handed
            if L.pcap:
                K, V, mask = model.staging(i)
                for ptr, want in ((f["stage0"], K), (f["stage1"], V), (f["mask"], mask)):
                    assert at(mem, ptr, np.float32, want.shape).tobytes() == want.tobytes(), where
            else:
                assert f["stage0"] == f["stage1"] == f["mask"] == 0, where
            # the compressed streams, head-major (kv_heads, ccap, row), and the index
            if not L.ccap:  # no streams (the position list may stay: checked above)
                assert f["data0"] == f["data1"] == f["score"] == 0, where
                continue
            streams = [[at(mem, f[f"data{p}"] + L.ccap * offs[p][j], np.uint8, (L.ccap, rows[p][j])) for j in range(H)]
                       for p in range(2)]
            pos = at(mem, f["pos"], np.int32, (H, L.ccap)) if L.evicted else None
            score = at(mem, f["score"], np.float32, (H, L.ccap)) if L.scored else None
            for p in range(2):  # aging: the window's settings, what waits, the blocks
                assert (f[f"recent{p}"], f[f"axis{p}"]) == (L.recent[p], L.axis[p]), where
                assert list(at(mem, f[f"fresh{p}"], np.int32, (H,))) == [len(h.res[p]) for h in L.heads], where
                nblk = list(at(mem, f[f"nblk{p}"], np.int32, (H,)))
                assert nblk == [len(h.blocks[p]) for h in L.heads], where
                if any(len(h.res[p]) for h in L.heads):
                    res = at(mem, f[f"res{p}"], np.float32, (H, f[f"rcap{p}"], D))
                    for j, h in enumerate(L.heads):
                        assert res[j, : len(h.res[p])].tobytes() == h.res[p].tobytes(), (where, j, p)
                if any(nblk):
                    par = at(mem, f[f"bpar{p}"], np.uint8, (H, f["bcap"], 4 * D))
                    cnt = at(mem, f[f"bcnt{p}"], np.int32, (H, f["bcap"]))
                    for j, h in enumerate(L.heads):
                        assert [par[j, b].tobytes() for b in range(nblk[j])] == [b[0] for b in h.blocks[p]], where
                        assert cnt[j, : nblk[j]].tolist() == [b[1] for b in h.blocks[p]], where
            for j, h in enumerate(L.heads):
                for p in range(2):
                    assert streams[p][j][: h.aged(p)].tobytes() == h.rows[p].tobytes(), (where, j, p)
                if pos is not None:
                    assert np.array_equal(pos[j, : h.n], h.pos), (where, j)
                if score is not None:
                    assert same_f32(score[j, : h.n], h.score), (where, j, score[j, : h.n], h.score)

    def check_exports(self) -> None:
        s, m, model = self.s, self.m, self.model
        assert [tuple(r) for r in s.meter()] == model.meter()
        assert s.kept() == [[h.n for h in L.heads] for L in model.layers]
        for layer in range(-1, self.L):
            for part in range(3):
                assert s.bytes(layer, part) == model.bytes(layer, part), (layer, part)
        assert s.tokens() == model.appended
        assert s.staging_bytes() == sum(4 * self.H * L.pcap * (2 * self.D + 1) for L in model.layers)
        for i, L in enumerate(model.layers):
            assert s.tokens(i) == L.used and s.capacity(i) == L.pcap
            if L.pcap:
                K, V, mask = model.staging(i)
                assert f32(m, m.call("kv_layer_ptr", i, 0), K.shape).tobytes() == K.tobytes()
                assert f32(m, m.call("kv_layer_ptr", i, 1), V.shape).tobytes() == V.tobytes()
                assert f32(m, m.call("kv_layer_ptr", i, 2), mask.shape).tobytes() == mask.tobytes()
            keeps = np.zeros(model.appended, np.int64)
            for j, h in enumerate(L.heads):
                assert s.positions(i, j) == h.pos.tolist(), (i, j)
                if L.scored:  # kv_scores: the list as the scorers left it
                    assert same_f32(np.array(s.scores(i, j), np.float32), h.score), (i, j)
                else:
                    assert m.call("kv_scores", i, j, self.scratch) == formats.ESTATE
                for p in range(2):
                    assert s.rows(i, j, p) == model.rows(i, j, p), (i, j, p)
                keeps[h.pos] |= 1 << j
            want = "".join("0123456789abcdefghijklmnopqrstuv"[b] for b in keeps)
            assert s.keep_map(i) == want, i


def layer_budgets(tw: Twin, rng, most: int | None = None) -> np.ndarray:
    """(n_layers, kv_heads) budgets: keep all (-1, live, more), none (0), or a random count."""
    B = np.empty((tw.L, tw.H), np.int32)
    for i, L in enumerate(tw.model.layers):
        for j, h in enumerate(L.heads):
            hi = h.n if most is None else min(h.n, most)
            B[i, j] = rng.choice([-1, 0, rng.integers(0, hi + 1), h.n, h.n + 3], p=[0.2, 0.05, 0.6, 0.1, 0.05])
            if most is not None and not 0 <= B[i, j] <= most:
                B[i, j] = rng.integers(0, hi + 1)
    return B


# ---------------------------------------------------------------------------------------
# Scorers, bit for bit
# ---------------------------------------------------------------------------------------

SCORERS = {  # name: (kind, kernel, weighted, shared: every KV head gets the same scores)
    "attn": (ev.ATTN, 1, False, False),
    "attn-weight-3": (ev.ATTN, 3, False, False),
    "max": (ev.MAX, 1, False, False),
    "window-1": (ev.WINDOW, 1, False, False),
    "window-5": (ev.WINDOW, 5, False, False),
    "window-9": (ev.WINDOW, 9, False, False),
    "window-weighted": (ev.WINDOW, 3, True, True),
    "last": (ev.LAST, 1, False, True),
    "knorm": (ev.KNORM, 1, False, False),
    "recent": (ev.RECENT, 1, False, False),
}


@pytest.mark.parametrize("name", SCORERS)
def test_scorers_match_the_reference_bit_for_bit(wasm_path, name):
    """Random attention in the step's attn buffers; after each scoring the store's score
    lists equal the reference's bit for bit. Between scorings entries are evicted (per head
    unless the scores are shared, which needs heads holding the same entries) and a new
    step of 1-19 tokens is run, so that later scorings map entries onto attention columns
    for heads that held different numbers of entries before the step."""
    kind, kernel, weighted, shared = SCORERS[name]
    rng = np.random.default_rng(sorted(SCORERS).index(name))
    tw = Twin(wasm_path)
    for i, (kf, vf, G) in enumerate(LAYER_FORMATS):
        tw.configure(i, kf, vf, G)
    tw.append(37, rng)
    tw.append(5, rng)  # entries before the step: what WINDOW and LAST score
    finite = distinct = uneven = 0
    for _ in range(6):
        w = None
        if weighted:
            w = rng.random((tw.L, tw.Q), np.float32) * (rng.random((tw.L, tw.Q)) < 0.7)
            w[:, 0] += 0.25  # never all zero
        assert tw.score(-1, kind, kernel, w) == 0
        tw.check()
        for L in tw.model.layers:
            uneven += len(set(L.prev)) > 1
            for h in L.heads:
                x = h.score[np.isfinite(h.score)]
                finite, distinct = finite + len(x), distinct + len(np.unique(x))
        if shared:  # the same budget for every head keeps the heads alike
            B = [[int(rng.integers(L.used // 2, L.used))] * tw.H for L in tw.model.layers]
            assert tw.select(B, sinks=int(rng.integers(0, 4)), recent=int(rng.integers(0, 4))) > 0
        else:
            assert tw.select(layer_budgets(tw, rng), int(rng.integers(0, 4)), int(rng.integers(0, 4))) >= 0
            for _ in range(2):
                i, j = int(rng.integers(tw.L)), int(rng.integers(tw.H))
                n = tw.model.layers[i].heads[j].n
                tw.evict(i, j, np.sort(rng.choice(n, int(rng.integers(n // 2, n + 1)), replace=False)))
        tw.check(full=True)
        tw.append(int(rng.choice([1, 4, 19])), rng)
    assert distinct > 0.9 * finite > 500  # the scores are not degenerate: the comparison means something
    assert uneven > 0 or shared  # some scoring mapped heads of different lengths


def test_attention_scores_accumulate_across_steps_and_evictions(wasm_path):
    """H2O: ATTN adds each step's attention to the held scores, through selections."""
    rng = np.random.default_rng(11)
    tw = Twin(wasm_path)
    tw.append(50, rng)
    for step in range(8):
        assert tw.score(-1, ev.ATTN) == 0
        if step % 2:
            assert tw.select(layer_budgets(tw, rng), sinks=2, recent=1) >= 0
        tw.check()
        tw.append(int(rng.integers(1, 9)), rng)
    assert all(L.held and L.evicted for L in tw.model.layers)
    assert tw.s.bytes(-1, 2) == 8 * sum(sum(h.n for h in L.heads) for L in tw.model.layers)  # pos + score
    assert tw.score_drop(-1) == 0
    tw.check(full=True)
    assert tw.s.bytes(-1, 2) == 4 * sum(sum(h.n for h in L.heads) for L in tw.model.layers)  # pos only


def test_attention_scorers_need_the_last_step_and_shared_scores_need_alike_heads(wasm_path):
    rng = np.random.default_rng(12)
    tw = Twin(wasm_path)
    for kind in (ev.ATTN, ev.WINDOW, ev.LAST):  # before any step
        assert tw.score(-1, kind, 3) == formats.ESTATE
    assert tw.score(-1, ev.KNORM) == tw.score(-1, ev.RECENT) == 0  # no attention needed
    tw.append(30, rng)
    w = np.ones((tw.L, tw.Q), np.float32)
    for bad in (-1.0, np.inf, np.nan):  # weights must be finite and >= 0 ...
        wb = w.copy()
        wb[1, 2] = bad
        assert tw.score(-1, ev.WINDOW, 3, wb) == formats.EINVAL
    assert tw.score(-1, ev.WINDOW, 3, np.zeros_like(w)) == formats.EINVAL  # ... not all zero
    assert tw.score(-1, ev.WINDOW, 4) == tw.score(-1, ev.WINDOW, 0) == formats.EINVAL  # odd kernel
    assert tw.score(-1, ev.N_SCORES) == tw.score(3, ev.ATTN) == formats.EINVAL
    tw.check()
    # an eviction ends the mapping of the last step's attention in that layer only
    tw.evict(1, 0, list(range(0, 30, 2)))
    for kind in (ev.ATTN, ev.WINDOW, ev.LAST):
        assert tw.score(1, kind, 3) == formats.ESTATE
        assert tw.score(-1, kind, 3) == formats.ESTATE
        assert tw.score(0, kind, 3) == 0
    assert tw.score(1, ev.KNORM) == 0
    tw.check()
    # a new step maps again; but layer 1's heads now hold different entries
    tw.append(3, rng)
    assert tw.score(1, ev.WINDOW, 3) == 0  # per head: fine
    assert tw.score(1, ev.LAST) == formats.ESTATE
    assert tw.score(1, ev.WINDOW, 3, w[1]) == formats.ESTATE
    assert tw.score(-1, ev.LAST) == formats.ESTATE
    assert tw.score(2, ev.LAST) == 0 and tw.score(2, ev.WINDOW, 3, w[2]) == 0  # layer 2 is alike
    tw.check()
    # an open step ends the mapping too (its attention is not written yet)
    tw.begin(1, rng)
    assert tw.score(-1, ev.ATTN) == formats.ESTATE
    assert tw.score(-1, ev.KNORM) == 0  # the staging is there: fine during a step
    assert tw.commit(1) == 0
    tw.check(full=True)


def test_shared_scores_need_the_same_positions_not_just_the_same_counts(wasm_path):
    rng = np.random.default_rng(23)
    tw = Twin(wasm_path)
    tw.append(20, rng)
    for j, keep in enumerate([range(0, 20, 2), range(1, 20, 2), range(10)]):  # 10 each, not the same
        assert tw.evict(0, j, list(keep)) == 10
    tw.append(2, rng)
    assert tw.score(0, ev.LAST) == formats.ESTATE
    assert tw.score(0, ev.WINDOW, 3, np.ones(tw.Q, np.float32)) == formats.ESTATE
    for j in range(tw.H):  # keep only the two new tokens: the same positions everywhere
        assert tw.evict(0, j, [10, 11]) == 10
    tw.append(1, rng)
    assert tw.score(0, ev.LAST) == 0
    tw.check(full=True)


# ---------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------


def test_ranking_is_protected_then_score_then_position(wasm_path):
    """One 8-token step whose ATTN scores are written by hand (attention of the group's
    first query head; the second gives 0): the kept positions for each budget are the
    ones worked out here, and the reference's."""
    tw = Twin(wasm_path)
    tw.begin(8, np.random.default_rng(0))
    scores = np.array([1, 2, 2, np.nan, np.inf, 0, 2, -np.inf], np.float32)
    for i, lay in enumerate(tw.table.layers):
        a = np.zeros((tw.Q, lay.P + 8), np.float32)
        a[::2, lay.P :] = scores  # columns P + e: the step's own entries
        tw.m.write(lay.attn, a.tobytes())
        tw.pending[2][i] = a
    assert tw.commit(8) == 0
    assert tw.score(-1, ev.ATTN) == 0
    # sinks = 1 protects e0, recent = 1 protects e7, +inf protects e4; among the protected
    # the score decides (e4 inf, e0 1, e7 -inf), then 2, 2, 2 by position, then 0, NaN last
    want = {1: [4], 2: [0, 4], 3: [0, 4, 7], 4: [0, 1, 4, 7], 5: [0, 1, 2, 4, 7], 6: [0, 1, 2, 4, 6, 7],
            7: [0, 1, 2, 4, 5, 6, 7], 0: [], -1: list(range(8))}
    budgets = np.array(list(want)).reshape(tw.L, tw.H)
    assert tw.select(budgets, sinks=1, recent=1) == sum(8 - len(v) for v in want.values())
    for i in range(tw.L):
        for j in range(tw.H):
            assert tw.s.positions(i, j) == want[budgets[i, j]], (i, j)
    tw.check(full=True)


def test_selection_keeps_the_reference_set_under_ties(wasm_path):
    """Scores with ties everywhere (attention in {0, 1, 2}), +inf, NaN and -inf; random
    budgets per (layer, head), sinks and recent: the kept positions are the reference's."""
    rng = np.random.default_rng(13)
    tw = Twin(wasm_path)
    evicted = 0
    for trial in range(24):
        tw.reset()
        for _ in range(int(rng.integers(1, 3))):
            tw.append(int(rng.integers(10, 90)), rng, str(rng.choice(["ties", "wild"])))
        kind = [ev.ATTN, ev.LAST, ev.WINDOW, ev.RECENT][trial % 4]
        assert tw.score(-1, kind, 3) == 0
        got = tw.select(layer_budgets(tw, rng), sinks=int(rng.integers(0, 12)), recent=int(rng.integers(0, 12)))
        evicted += got
        tw.check(full=trial % 3 == 0)
        if trial % 2:  # a second round on the survivors, from a new step
            tw.append(int(rng.integers(1, 20)), rng, "ties")
            assert tw.score(-1, ev.ATTN) == 0
            evicted += tw.select(layer_budgets(tw, rng), int(rng.integers(0, 12)), int(rng.integers(0, 12)))
            tw.check()
    assert evicted > 1000


def test_a_head_over_its_budget_needs_scores(wasm_path):
    tw = Twin(wasm_path)
    tw.append(20, np.random.default_rng(14))
    B = np.full((tw.L, tw.H), -1)
    assert tw.select(B) == 0  # nobody over budget: nothing to rank
    B[2, 1] = 20
    assert tw.select(B) == 0
    B[2, 1] = 5
    assert tw.select(B) == formats.ESTATE
    assert tw.select(B, sinks=-1) == tw.select(B, recent=-1) == formats.EINVAL
    tw.check(full=True)


# ---------------------------------------------------------------------------------------
# Reliability: a long random run against the model
# ---------------------------------------------------------------------------------------

OPS_PER_BUILD = 5_000  # x 2 builds: 10,000 random operations, each one checked
FULL_EVERY = 40  # the export-level check every this many operations (the memory one: every op)
MAX_LIVE = 300  # entries per head before the run prefers evicting (keeps each check cheap)
OPS = {  # operation: weight
    "append": 24, "begin": 3, "commit": 3, "evict": 16, "bad_evict": 3, "score_select": 20,
    "score": 8, "select": 5, "drop": 3, "truncate": 5, "reset_configure": 4, "configure": 2, "age": 2,
    "configure_head": 2, "summarize": 6,
}


def random_spans(rng, n: int) -> list[list[int]]:
    """Up to 6 ascending, disjoint spans (lo, hi, at) over positions [0, n + 2), sometimes
    one that breaks the rules (EINVAL)."""
    cuts = np.sort(rng.choice(n + 3, min(n + 3, 2 * int(rng.integers(1, 7))), replace=False))
    spans = [[int(a), int(b), int(rng.integers(a, b))] for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
    if spans and rng.random() < 0.1:  # at outside its span, or spans out of order
        if rng.random() < 0.5:
            spans[0][2] = spans[0][1]
        else:
            spans = spans[::-1] if len(spans) > 1 else [[spans[0][1], spans[0][0], spans[0][0]]]
    return spans


def random_formats(rng) -> tuple[int, int, int]:
    return int(rng.choice(FMTS)), int(rng.choice(FMTS)), int(rng.choice(formats.GROUP_SIZES))


def random_op(tw: Twin, rng, op: str) -> str:
    model = tw.model
    used = max(L.used for L in model.layers)
    if op in ("append", "begin") and used >= MAX_LIVE:
        op = "score_select"
    if op == "append":
        tw.append(int(rng.integers(1, min(64, MAX_LIVE + 1 - used) + 1)), rng,
                  str(rng.choice(["continuous", "ties", "wild"], p=[0.4, 0.4, 0.2])))
    elif op == "begin":  # a step begun and left open: later ops cancel or commit it
        tw.begin(int(rng.integers(1, min(64, MAX_LIVE + 1 - used) + 1)), rng)
    elif op == "commit":  # of the open step if any (ESTATE if none or cancelled, EINVAL for a wrong S)
        tw.commit(model.open_S + (rng.random() < 0.1) if model.open_S else int(rng.integers(1, 5)))
    elif op in ("evict", "bad_evict"):
        i, j = int(rng.integers(tw.L)), int(rng.integers(tw.H))
        n = model.layers[i].heads[j].n
        keep = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False)).tolist()
        if op == "bad_evict":  # out of range, or not strictly ascending: EINVAL, nothing changes
            r = rng.random()
            if r < 0.3 or len(keep) < 2:
                keep = keep + [n]
            elif r < 0.65:
                keep = keep[::-1]
            else:
                keep = keep[:1] + keep
            assert tw.evict(i, j, keep) == formats.EINVAL
        else:
            tw.evict(i, j, keep)
    elif op in ("score", "score_select"):
        layer = -1 if rng.random() < 0.7 else int(rng.integers(tw.L))
        mapped = model.last_S and all(L.step_ok for L in model._layers(layer))  # else attention: ESTATE
        kind = int(rng.choice(6, p=[0.25, 0.25, 0.15, 0.1, 0.1, 0.15] if mapped else [0.05, 0.05, 0.05, 0.4, 0.4, 0.05]))
        kernel = int(rng.choice([1, 3, 5, 7, 9])) + (rng.random() < 0.03)
        w = None
        if kind == ev.WINDOW and rng.random() < 0.4:
            w = rng.random((tw.L if layer < 0 else 1, tw.Q), np.float32) * 2 * (rng.random((1, tw.Q)) < 0.7)
            w[:, 0] += 0.5 if rng.random() < 0.97 else -1.0
            w = w if layer < 0 else w[0]
        tw.score(layer, kind, kernel, w)
        if op == "score_select":
            tw.select(layer_budgets(tw, rng, MAX_LIVE // 2 if used >= MAX_LIVE else None),
                      int(rng.choice([0, 0, 1, 4, 16])), int(rng.choice([0, 0, 1, 3, 8])))
    elif op == "select":  # with whatever scores are held (or ESTATE)
        tw.select(layer_budgets(tw, rng), int(rng.integers(0, 6)), int(rng.integers(0, 6)))
    elif op == "summarize":  # spans of positions become one entry each (ESTATE on per-channel parts)
        layer = -1 if rng.random() < 0.6 else int(rng.integers(tw.L))
        tw.summarize(layer, random_spans(rng, model.appended), int(rng.integers(0, 3)))
    elif op == "drop":
        tw.score_drop(int(rng.integers(-1, tw.L)))
    elif op == "truncate":  # EINVAL beyond the appended tokens, ESTATE once a layer evicted
        tw.truncate(int(rng.integers(0, model.appended + 2)))
    elif op == "reset_configure":
        tw.reset()
        if rng.random() < 0.3:
            tw.configure(-1, *random_formats(rng))
        for i in range(tw.L):
            if rng.random() < 0.8:
                tw.configure(i, *random_formats(rng))
            for j in range(tw.H):  # heads of their own formats
                if rng.random() < 0.3:
                    kf, vf, _ = random_formats(rng)
                    tw.configure_head(i, j, kf, vf)
            for p in range(2):  # aging windows, per-channel blocks (refused on other formats)
                if rng.random() < 0.4:
                    tw.age(i, p, int(rng.choice([0, 1, 3, 8, 20, 40])), int(rng.random() < 0.5))
    elif op == "configure_head":  # one head's formats: ESTATE while the layer holds entries
        kf, vf, _ = random_formats(rng)
        tw.configure_head(int(rng.integers(tw.L)), int(rng.integers(tw.H)), kf, vf)
    elif op == "age":  # ESTATE while the layer holds entries
        tw.age(int(rng.integers(-1, tw.L)), int(rng.integers(2)), int(rng.integers(0, 30)), int(rng.integers(2)))
    else:  # configure: ESTATE while the layer holds entries
        tw.configure(int(rng.integers(-1, tw.L)), *random_formats(rng))
    return op


def run_random(path, n_ops: int, seed: int) -> tuple[collections.Counter, collections.Counter]:
    """n_ops random operations, the model checked after each; returns (operations run by
    kind, entries evicted by kind)."""
    rng = np.random.default_rng(seed)
    tw = Twin(path)
    ran, evicted = collections.Counter(), collections.Counter()
    aging = collections.Counter()  # how much the aging windows and per-channel blocks held
    for n in range(n_ops):
        weights = dict(OPS)
        if tw.model.open_S:  # an open step: sometimes commit it before something cancels it
            weights["commit"] = 30
        if not any(L.evicted for L in tw.model.layers):  # truncation is allowed: try it
            weights["truncate"] = 15
        names, w = list(weights), np.array(list(weights.values()), float)
        before = sum(h.n for L in tw.model.layers for h in L.heads)
        op = random_op(tw, rng, str(rng.choice(names, p=w / w.sum())))
        ran[op] += 1
        evicted[op] += max(0, before - sum(h.n for L in tw.model.layers for h in L.heads))
        tw.check(full=n % FULL_EVERY == 0)
        for L in tw.model.layers:
            for h in L.heads:
                for p in range(2):
                    aging["waiting"] += len(h.res[p])
                    aging["blocks"] += len(h.blocks[p])
                    aging["partial blocks"] += sum(b[1] < L.group for b in h.blocks[p])
    tw.check(full=True)
    ran.update({f"held: {k}": v for k, v in aging.items()})
    return ran, evicted


def test_random_operations_match_the_model(wasm_path):
    """Appends, evictions (kv_evict and kv_select on every scorer), format changes,
    truncation, resets, score drops, steps left open: after every operation the store
    holds what the model does (kept positions, bytes per layer and part, live counts,
    staging contents and masks, compressed rows, score lists, capacities)."""
    ran, evicted = run_random(wasm_path, OPS_PER_BUILD, 20240611 if wasm_path.name == SIMD_NAME else 20240612)
    held = {k: ran.pop(k) for k in list(ran) if k.startswith("held: ")}
    assert min(held.values()) > 1000, held  # aging and per-channel blocks (evicted from too) ran
    assert sum(ran.values()) == OPS_PER_BUILD
    # every kind of operation ran often, and evictions really evicted
    assert min(ran.values()) >= OPS_PER_BUILD // 100, ran
    assert evicted["evict"] > 10_000 and evicted["score_select"] > 10_000, evicted
    assert ran["reset_configure"] >= 100 and ran["truncate"] >= 100, ran


# ---------------------------------------------------------------------------------------
# Failure changes nothing; wrong calls are refused
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def heap_full(tw: Twin, hole: int):
    """Cap the heap where it is and fill it, leaving one free block for `hole` bytes (0:
    none): the allocations of the call under test land there, or fail."""
    s, m = tw.s, tw.m
    s.set_limit(s.heap_bytes())
    r = m.call("kv_alloc", hole) if hole else 0
    assert r >= 0, "no room for the hole: the heap needs free space before the test"
    fillers, size = [], 1 << 20
    while size >= 1:
        p = m.call("kv_alloc", size)
        if p > 0:
            fillers.append(p)
        else:
            size //= 2
    if r:
        m.call("kv_free", r)
    try:
        yield
    finally:
        for p in fillers:
            m.call("kv_free", p)
        s.set_limit(0)


def until_it_fits(tw: Twin, call, apply) -> int:
    """Run `call` with every free-hole size from none upwards (16-byte steps) until it
    succeeds: each failure must be KV_ENOMEM and leave the store as the model (which is not
    told) says. Then `apply` tells the model. Returns how many sizes failed."""
    p = tw.s.alloc(1 << 16)  # free room for the holes
    tw.s.free(p)
    failed = 0
    for hole in range(0, 1 << 16, 16):
        with heap_full(tw, hole):
            r = call()
            if r == formats.ENOMEM:
                failed += 1
                tw.check()
                continue
        assert r >= 0, r
        apply(r)
        tw.check(full=True)
        return failed
    raise AssertionError("never fitted")


def scored_twin(path, rng) -> Twin:
    tw = Twin(path)
    tw.append(40, rng)
    tw.append(3, rng)
    return tw


def test_select_without_memory_changes_nothing(wasm_path):
    rng = np.random.default_rng(15)
    tw = scored_twin(wasm_path, rng)
    assert tw.score(-1, ev.KNORM) == 0
    tw.begin(2, rng)  # an open step: a failed select must not cancel it
    B = layer_budgets(tw, rng, 30)
    B[:, 0] = 10  # every layer cuts: each needs its first position list
    ptr = tw.put(B)
    failed = until_it_fits(tw, lambda: tw.m.call("kv_select", ptr, 2, 1),
                           lambda r: tw.both(r, tw.model.select(B, 2, 1), "select"))
    assert failed > 10  # scratch, then each layer's list in turn
    assert tw.model.open_S == 0 and tw.commit(2) == formats.ESTATE  # the select did cancel it


def test_evict_without_memory_changes_nothing(wasm_path):
    rng = np.random.default_rng(16)
    tw = scored_twin(wasm_path, rng)
    keep = [1, 5, 6, 30]
    ptr = tw.put(np.array(keep, np.int32))
    assert until_it_fits(tw, lambda: tw.m.call("kv_evict", 2, 1, ptr, 4),
                         lambda r: tw.both(r, tw.model.evict(2, 1, keep), "evict")) > 5
    # a second eviction in that layer needs no position list, only its scratch
    ptr = tw.put(np.array([0, 2], np.int32))
    assert until_it_fits(tw, lambda: tw.m.call("kv_evict", 2, 1, ptr, 2),
                         lambda r: tw.both(r, tw.model.evict(2, 1, [0, 2]), "evict")) >= 1
    assert tw.s.positions(2, 1) == [1, 6]


@pytest.mark.parametrize("first,then", [(ev.KNORM, ev.ATTN), (ev.KNORM, ev.RECENT), (ev.ATTN, ev.RECENT)])
def test_score_without_memory_changes_nothing(wasm_path, first, then):
    """Layer 0 already holds scores (`first`'s: scratch, or held ATTN ones); layers 1 and 2
    need new lists for `then`. When one cannot be allocated nothing changes: the lists made
    before it go, layer 0's scores stay as they were (not zeroed, not freed, not held)."""
    rng = np.random.default_rng(17)
    tw = scored_twin(wasm_path, rng)
    assert tw.score(0, first) == 0
    failed = until_it_fits(tw, lambda: tw.m.call("kv_score", -1, then, 1, 0),
                           lambda r: tw.both(r, tw.model.score(-1, then), "score"))
    assert failed > 40  # no room, then room for one of the two lists (4 x 3 x 64 bytes each)
    assert tw.model.layers[0].held == (ev.ATTN in (first, then))
    assert tw.select(np.full((tw.L, tw.H), 12), sinks=1) > 0
    tw.check(full=True)


def test_truncate_after_an_eviction_is_refused(wasm_path):
    rng = np.random.default_rng(18)
    tw = Twin(wasm_path)
    tw.append(30, rng)
    assert tw.truncate(10) == 0  # before: fine
    tw.append(20, rng)
    assert tw.evict(1, 2, list(range(29))) == 1
    for n in (0, 10, 29, 30):
        assert tw.truncate(n) == formats.ESTATE
    assert tw.truncate(31) == formats.EINVAL
    tw.check(full=True)
    tw.reset()  # a reset forgets the eviction
    tw.append(5, rng)
    assert tw.truncate(2) == 0
    tw.check(full=True)


def test_a_layer_emptied_by_eviction_and_reconfigured_keeps_counting_positions(wasm_path):
    """An emptied layer may change formats (it holds no entries), but its next tokens are
    still at positions `appended`..., not 0...: the position list must survive."""
    rng = np.random.default_rng(22)
    tw = Twin(wasm_path)
    tw.append(10, rng)
    for j in range(tw.H):
        assert tw.evict(1, j, []) == 10
    assert tw.configure(1, formats.Q8, formats.Q4, 16) == 0  # a new row size: new streams
    assert tw.configure(0, formats.Q8, formats.Q4, 16) == formats.ESTATE  # layer 0 holds entries
    tw.append(3, rng)
    assert tw.s.positions(1, 0) == [10, 11, 12] and tw.s.keep_map(1) == "0" * 10 + "777"
    assert tw.s.bytes(1, 2) == 4 * 3 * tw.H  # the index is held again for the new entries
    B = np.full((tw.L, tw.H), -1)
    B[1] = 1
    assert tw.score(1, ev.RECENT) == 0 and tw.select(B, sinks=1) == 2 * tw.H
    assert tw.s.positions(1, 2) == [12]  # no new token passes for a sink
    tw.check(full=True)


def test_evict_refuses_bad_lists_and_changes_nothing(wasm_path):
    rng = np.random.default_rng(19)
    tw = Twin(wasm_path)
    tw.append(12, rng)
    tw.evict(0, 0, [0, 2, 4, 6, 8, 10])
    tw.check()
    before = tw.s.heap_bytes()
    for layer, head, keep in [
        (1, 0, [3, 2]),  # descending
        (1, 0, [2, 2]),  # repeated
        (1, 0, [0, 12]),  # beyond live
        (1, 0, [-1, 3]),  # negative
        (0, 0, [0, 1, 6]),  # beyond that head's 6 live entries
        (0, 0, list(range(7))),  # more than live
        (3, 0, []),  # no such layer
        (0, 3, []),  # no such head
    ]:
        assert tw.evict(layer, head, keep) == formats.EINVAL, (layer, head, keep)
    assert tw.m.call("kv_evict", 0, 1, 0, 1) == formats.EINVAL  # a list without a pointer
    assert tw.m.call("kv_evict", 0, 1, tw.args, -1) == formats.EINVAL
    assert tw.evict(1, 1, list(range(12))) == 0  # keeps everything: no eviction at all
    assert not tw.model.layers[1].evicted and tw.s.heap_bytes() == before
    tw.check(full=True)


# ---------------------------------------------------------------------------------------
# The capacity handed to the model follows the eviction down
# ---------------------------------------------------------------------------------------


def test_capacity_shrinks_after_an_eviction_and_a_decode_step_needs_no_growth(wasm_path):
    rng = np.random.default_rng(21)
    tw = Twin(wasm_path)
    tw.configure(-1, formats.Q8, formats.Q4, 32)
    tw.append(300, rng)
    assert [tw.s.capacity(i) for i in range(tw.L)] == [320] * tw.L
    staging = tw.s.staging_bytes()
    assert tw.score(-1, ev.RECENT) == 0
    # 64 live entries: round64(64 + 1) = 128 slots, room for the next token
    assert tw.select(np.full((tw.L, tw.H), 64), sinks=4) == tw.L * tw.H * (300 - 64)
    assert [tw.s.capacity(i) for i in range(tw.L)] == [128] * tw.L
    assert tw.s.staging_bytes() == staging * 128 // 320
    tw.begin(1, rng)
    assert [lay.P for lay in tw.table.layers] == [128] * tw.L
    assert tw.commit(1) == 0
    # 63 live entries: round64(63 + 1) = 64 slots, the 64th free for the next token
    assert tw.score(-1, ev.RECENT) == 0
    assert tw.select(np.full((tw.L, tw.H), 63), sinks=4) == tw.L * tw.H * 2
    assert [tw.s.capacity(i) for i in range(tw.L)] == [64] * tw.L
    tw.check(full=True)
    heap = tw.s.heap_bytes()
    for step in range(20):  # StreamingLLM-style rolling: one token in, the oldest non-sink out
        ptrs = [[tw.m.call("kv_layer_ptr", i, w) for w in range(5)] for i in range(tw.L)]
        tw.begin(1, rng)
        assert [lay.P for lay in tw.table.layers] == [64] * tw.L  # no growth ...
        assert [[tw.m.call("kv_layer_ptr", i, w) for w in range(5)] for i in range(tw.L)] == ptrs  # ... no re-layout
        assert tw.commit(1) == 0
        assert [tw.s.capacity(i) for i in range(tw.L)] == [64] * tw.L
        assert tw.score(-1, ev.RECENT) == 0
        assert tw.select(np.full((tw.L, tw.H), 63), sinks=4) == tw.L * tw.H
        tw.check(full=step % 5 == 0)
    assert tw.s.heap_bytes() == heap
    assert tw.s.positions(2, 1) == [0, 1, 2, 3] + list(range(321 - 59, 321))
    # without the rolling eviction the cache grows again by the usual rule
    tw.append(2, rng)
    assert tw.s.capacity(0) == ev.grow_cap(64, 65) == 128


# ---------------------------------------------------------------------------------------
# Summaries (kv_summarize: seed 004's chunk summaries)
# ---------------------------------------------------------------------------------------


def test_summaries_are_the_mean_of_the_staged_rows(wasm_path):
    """Each span's summary is the NumPy mean of the rows the store staged for it (read from
    the staging before the call, not from the model), put in the head's format: exactly the
    mean on an f32 layer, the format's rounding of it on a quantized one; the other entries
    are untouched and the summary sits at its chosen position."""
    rng = np.random.default_rng(30)
    tw = Twin(wasm_path)
    tw.configure(0, formats.F32, formats.F32, 32)
    tw.append(50, rng)
    tw.append(14, rng)
    spans = [[4, 20, 12], [20, 36, 27], [48, 60, 48]]
    before = [tw.model.staging(i)[:2] for i in range(tw.L)]
    st, layers, mem = tw.peek.read()
    K0 = at(mem, layers[0]["stage0"], np.float32, (tw.H, tw.model.layers[0].pcap, tw.D)).copy()
    assert tw.summarize(-1, spans) == tw.L * tw.H * (15 + 15 + 11)
    tw.check(full=True)
    for i in range(tw.L):
        K, V, _ = tw.model.staging(i)
        for j in range(tw.H):
            pos = tw.s.positions(i, j)
            assert pos == list(range(4)) + [12, 27] + list(range(36, 48)) + [48] + list(range(60, 64))
            for lo, hi, where in ((4, 20, pos.index(12)), (20, 36, pos.index(27))):
                for part, (want_all, got) in enumerate(zip(before[i], (K, V))):
                    mean = want_all[j, lo:hi].astype(np.float64).mean(axis=0).astype(np.float32)
                    fmt = tw.model.layers[i].fmt[part][j]
                    if fmt == formats.F32:
                        np.testing.assert_allclose(got[j, where], mean, rtol=1e-6, atol=1e-7)
                    else:  # the format's own rounding of the mean (kvstore_ref's quantizer)
                        g = tw.model.layers[i].group
                        from tests.reference import kvstore_ref as kref
                        want = kref.dequantize(fmt, g, kref.quantize(fmt, g, mean[None]), tw.D)
                        np.testing.assert_allclose(got[j, where], want, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(K[j, 6:18], before[i][0][j, 36:48])  # the rest as they were
    np.testing.assert_allclose(tw.model.staging(0)[0][0, 4], K0[0, 4:20].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    # bytes: every entry left, summaries included, is one row per part plus its position
    n = sum(h.n for L in tw.model.layers for h in L.heads)
    assert tw.s.bytes(-1, 2) == 4 * n


def test_zero_summaries_and_bad_spans(wasm_path):
    rng = np.random.default_rng(31)
    tw = Twin(wasm_path)
    tw.configure(-1, formats.F32, formats.F32, 32)
    tw.append(40, rng)
    assert tw.summarize(-1, [[0, 10, 5]], ev.SUM_ZERO_KEY) == tw.L * tw.H * 9
    K, V, _ = tw.model.staging(1)
    assert not K[:, 0].any() and V[:, 0].any()
    assert tw.summarize(1, [[10, 20, 10]], ev.SUM_ZERO) == tw.H * 9
    K, V, _ = tw.model.staging(1)
    assert not K[:, 1].any() and not V[:, 1].any()
    tw.check(full=True)
    for spans in ([[5, 5, 5]], [[5, 9, 9]], [[5, 9, 4]], [[10, 20, 11], [15, 30, 16]], [[-1, 3, 0]]):
        assert tw.summarize(-1, spans) == formats.EINVAL
    assert tw.summarize(-1, [[0, 3, 1]], 3) == formats.EINVAL
    assert tw.summarize(5, [[0, 3, 1]]) == formats.EINVAL
    assert tw.summarize(-1, []) == 0
    tw.check(full=True)
    tw.reset()
    tw.configure(2, formats.Q4, formats.Q4, 32)
    tw.age(2, 0, 0, 1)  # per-channel keys: blocks span entries, a summary cannot split one
    tw.append(40, rng)
    assert tw.summarize(-1, [[0, 10, 5]]) == formats.ESTATE
    assert tw.summarize(0, [[0, 10, 5]]) == 9 * tw.H
    tw.check(full=True)


def test_summarize_without_memory_changes_nothing(wasm_path):
    rng = np.random.default_rng(32)
    tw = scored_twin(wasm_path, rng)
    spans = np.array([[2, 9, 5], [20, 30, 25]], np.int32)
    ptr = tw.put(spans)
    failed = until_it_fits(tw, lambda: tw.m.call("kv_summarize", -1, ptr, 2, 0),
                           lambda r: tw.both(r, tw.model.summarize(-1, spans.tolist(), 0), "summarize"))
    assert failed > 5  # the flags, then each layer's first position list

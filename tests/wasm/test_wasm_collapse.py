"""Collapsed keys (kv_collapse, wasm/collapse.c): a head's keys stored as residuals from one
mean pre-RoPE key, staged rotated back to each entry's own position.

Reference: the RoPE of tests/reference/profile_ref.py (the graph's angles; NumPy's sin/cos
in f64, rounded to f32 once) and the format kernels of tests/reference/kvstore_ref.py. The
store's residual rows equal the reference's quantized residuals byte for byte, and its
staging equals RoPE(mean + what the rows hold) bit for bit, so what the model reads is
exactly what the cache holds. (The store's sin/cos is its own f64 polynomial, a few ulp
from NumPy's: a pre-RoPE value could in principle round the other way in f32; on these
seeded inputs none does.)
"""

from __future__ import annotations

import numpy as np
import pytest

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab import formats
from tests.reference import kvstore_ref as ref
from tests.reference import profile_ref as rope
from tests.wasm.test_wasm_store import f32, new_store

SHAPE = dict(n_layers=2, n_kv_heads=3, n_q_heads=6, head_dim=64, vocab=100)
THETA = 100000.0
D, H = SHAPE["head_dim"], SHAPE["n_kv_heads"]
RESIDUAL = [formats.F32, formats.F16, formats.Q8, formats.Q4, formats.Q2, formats.NONE]


@pytest.fixture(scope="module", params=[SIMD_NAME, SCALAR_NAME])
def wasm_path(request):
    return build_wasm() / request.param


def collapsed_keys(rng, mu: np.ndarray, pos0: int, n: int, spread: float = 0.2) -> np.ndarray:
    """(n, D) post-RoPE keys of a collapsed head: mu plus a little noise, rotated at pos0 ..."""
    u = (mu + spread * rng.standard_normal((n, D))).astype(np.float32)
    return rope.rope_rotate(u, pos0, THETA)


class Filler:
    """Steps of S tokens on every layer: head `hot` of each layer gets collapsed-like keys,
    the others random ones; remembers every key appended (per layer, head: (n, D))."""

    def __init__(self, s, m, seed: int = 0):
        self.s, self.m, self.rng = s, m, np.random.default_rng(seed)
        self.mu = (3 * self.rng.standard_normal((SHAPE["n_layers"], H, D))).astype(np.float32)
        self.keys = [[np.zeros((0, D), np.float32) for _ in range(H)] for _ in range(SHAPE["n_layers"])]
        self.n = 0

    def step(self, S: int) -> None:
        t = self.s.step_begin(S)
        for li, L in enumerate(t.layers):
            k = np.stack([collapsed_keys(self.rng, self.mu[li, h], self.n, S) for h in range(H)])
            v = self.rng.standard_normal((H, S, D)).astype(np.float32)
            self.m.write(L.new_k, k.tobytes())
            self.m.write(L.new_v, v.tobytes())
            for h in range(H):
                self.keys[li][h] = np.concatenate([self.keys[li][h], k[h]])
        self.s.step_commit(S)
        self.n += S

    def staged_k(self, layer: int, head: int, n: int) -> np.ndarray:
        P = self.s.capacity(layer)
        return f32(self.m, self.m.call("kv_layer_ptr", layer, 0), (H, P, D))[head, :n]


def residuals(x: np.ndarray, mu: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(n, D) post-RoPE keys at positions pos -> RoPE^-1(x) - mu, in f32 as the store does."""
    u = np.concatenate([rope.rope_unrotate(x[i : i + 1], int(p), THETA) for i, p in enumerate(pos)]) if len(x) \
        else x
    return (u - mu).astype(np.float32)


def held_residuals(fmt: int, raw: bytes, n: int) -> np.ndarray:
    """(n, D) what the store's n residual rows (kv_rows without the mean) hold."""
    rb = formats.row_bytes(fmt, 32, D)
    return np.stack([ref.dequantize(fmt, 32, raw[i * rb : (i + 1) * rb], D) for i in range(n)])


def staged_from(held: np.ndarray, mu: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.concatenate([rope.rope_rotate((mu + held[i : i + 1]).astype(np.float32), int(p), THETA)
                           for i, p in enumerate(pos)])


def check_head(fl: Filler, layer: int, head: int, fmt: int, mu: np.ndarray, pos: np.ndarray, x: np.ndarray):
    """The head's rows are the quantized residuals (+ the mean), its staging RoPE(mean + rows)."""
    s, n = fl.s, len(pos)
    raw = s.rows(layer, head, 0)
    rb = formats.row_bytes(fmt, 32, D)
    assert len(raw) == n * rb + 4 * D == s.live(layer, head) * rb + 4 * D
    assert np.frombuffer(raw[n * rb :], np.float32).tobytes() == mu.tobytes()  # the mean, as held
    want = b"".join(ref.quantize(fmt, 32, r) for r in residuals(x, mu, pos))
    assert raw[: n * rb] == want, "residual rows differ from the reference"
    held = held_residuals(fmt, raw, n) if fmt != formats.NONE else np.zeros((n, D), np.float32)
    assert fl.staged_k(layer, head, n).tobytes() == staged_from(held, mu, pos).tobytes()


@pytest.mark.parametrize("fmt", RESIDUAL, ids=lambda f: formats.NAMES[f])
def test_collapsed_heads_hold_residuals_and_stage_them_at_their_positions(wasm_path, fmt):
    """Layer 0 head 1 on a given mean, layer 1 head 2 on its first run's mean, K in `fmt`
    for those two heads and q4 elsewhere: rows, mean, staging and bytes after runs of
    37, 1 and 20 tokens; the other heads are plain q4."""
    s, m = new_store(wasm_path, SHAPE)
    s.configure(-1, formats.Q4, formats.Q4, 32)
    fl = Filler(s, m)
    s.configure_head(0, 1, fmt, formats.Q4)
    s.configure_head(1, 2, fmt, formats.Q4)
    s.collapse(0, 1, THETA, fl.mu[0, 1])
    s.collapse(1, 2, THETA, None)
    assert (s.collapsed(0, 1), s.collapsed(1, 2), s.collapsed(0, 0)) == (1, 2, 0)
    assert s.collapsed_map() == [[0, 1, 0], [0, 0, 1]]  # kv_collapse_map: every head in one call
    for S in (37, 1, 20):
        fl.step(S)
    pos = np.arange(58)
    check_head(fl, 0, 1, fmt, fl.mu[0, 1], pos, fl.keys[0][1])
    first = residuals(fl.keys[1][2][:37], np.zeros(D, np.float32), pos[:37]).astype(np.float64).mean(axis=0)
    mu_p = np.asarray(s.collapse_mean(1, 2), np.float32)
    np.testing.assert_allclose(mu_p, first, rtol=0, atol=1e-5)  # the first run's, not every run's
    check_head(fl, 1, 2, fmt, mu_p, pos, fl.keys[1][2])
    plain = fl.staged_k(0, 0, 58)  # an uncollapsed head: its own q4 round trip of the post-RoPE key
    assert plain.tobytes() == ref.roundtrip(formats.Q4, 32, fl.keys[0][0]).tobytes()
    q4 = formats.row_bytes(formats.Q4, 32, D)
    assert s.bytes(0, 0) == 58 * (2 * q4 + formats.row_bytes(fmt, 32, D)) + 4 * D
    assert s.bytes(-1, 0) == 58 * (4 * q4 + 2 * formats.row_bytes(fmt, 32, D)) + 2 * 4 * D


def test_the_prompts_mean_is_taken_once_per_fill(wasm_path):
    """Mode 2: the first step's mean (mode 3 from then on) stays when the head is evicted to
    nothing and refilled; a reset makes the next fill's first step give it again."""
    s, m = new_store(wasm_path, SHAPE)
    fl = Filler(s, m, seed=5)
    s.collapse(0, 0, THETA, None)
    fl.step(30)
    assert s.collapsed(0, 0) == 3
    mu = s.collapse_mean(0, 0)
    s.evict(0, 0, [])
    fl.step(7)
    assert s.collapse_mean(0, 0) == mu and s.collapsed(0, 0) == 3
    s.reset()
    assert s.collapsed(0, 0) == 2
    fl.keys = [[np.zeros((0, D), np.float32) for _ in range(H)] for _ in range(SHAPE["n_layers"])]
    fl.n = 0
    fl.step(12)
    first = residuals(fl.keys[0][0], np.zeros(D, np.float32), np.arange(12)).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(s.collapse_mean(0, 0), first, rtol=0, atol=1e-5)
    assert s.collapse_mean(0, 0) != mu


def test_an_exact_residual_gives_back_the_graphs_key(wasm_path):
    """With an f32 residual the staged key is the appended one up to the two RoPE turns'
    f32 rounding: the rotation is the graph's own, at the entry's own position."""
    s, m = new_store(wasm_path, SHAPE)
    fl = Filler(s, m, seed=1)
    for h in range(H):
        s.collapse(0, h, THETA, fl.mu[0, h])
    fl.step(300)
    fl.step(1)
    for h in range(H):
        x = fl.keys[0][h]
        np.testing.assert_allclose(fl.staged_k(0, h, 301), x, rtol=0, atol=3e-6 * np.abs(x).max())


def test_the_mean_alone_holds_one_vector_per_head(wasm_path):
    """`none`: a 300-token head holds 4 head_dim bytes whatever its length; its keys are the
    mean turned to each position."""
    s, m = new_store(wasm_path, SHAPE)
    fl = Filler(s, m, seed=2)
    s.configure_head(0, 0, formats.NONE, formats.F32)
    s.collapse(0, 0, THETA, fl.mu[0, 0])
    fl.step(300)
    f32row = 4 * D
    assert s.bytes(0, 0) == 4 * D + 2 * 300 * f32row
    want = rope.rope_rotate(np.tile(fl.mu[0, 0], (300, 1)), 0, THETA)
    assert fl.staged_k(0, 0, 300).tobytes() == want.tobytes()
    s.reset()
    assert s.bytes(0, 0) == 0  # an empty head holds no mean either


def test_eviction_keeps_positions_and_later_keys_turn_at_theirs(wasm_path):
    s, m = new_store(wasm_path, SHAPE)
    s.configure(-1, formats.Q8, formats.Q8, 32)
    fl = Filler(s, m, seed=3)
    s.collapse(0, 1, THETA, fl.mu[0, 1])
    fl.step(80)
    before = fl.staged_k(0, 1, 80).copy()
    keep = list(range(0, 80, 3))
    s.evict(0, 1, keep)
    assert fl.staged_k(0, 1, len(keep)).tobytes() == before[keep].tobytes()
    fl.step(5)  # positions 80 .. 84
    pos = np.array(keep + list(range(80, 85)))
    check_head(fl, 0, 1, formats.Q8, fl.mu[0, 1], pos, fl.keys[0][1][pos])
    assert s.positions(0, 1) == pos.tolist()


def test_aged_collapsed_keys_wait_exact_then_store_their_residual(wasm_path):
    """recent_k = 16 on a collapsed q4 head: the newest 16 keys stay as appended, the older
    ones are residuals turned at their own positions."""
    s, m = new_store(wasm_path, SHAPE)
    s.configure(-1, formats.Q4, formats.Q4, 32)
    s.age(-1, 0, 16, 0)
    fl = Filler(s, m, seed=4)
    s.collapse(0, 2, THETA, fl.mu[0, 2])
    for S in (40, 1, 1, 9):
        fl.step(S)
    x, n = fl.keys[0][2], 51
    got = fl.staged_k(0, 2, n)
    assert got[-16:].tobytes() == x[-16:].tobytes()
    raw = s.rows(0, 2, 0)
    rb = formats.row_bytes(formats.Q4, 32, D)
    assert len(raw) == 35 * rb + 16 * 4 * D + 4 * D == s.bytes(0, 0) - 2 * (35 * rb + 16 * 4 * D)
    held = held_residuals(formats.Q4, raw, 35)
    assert got[:35].tobytes() == staged_from(held, fl.mu[0, 2], np.arange(35)).tobytes()
    want = b"".join(ref.quantize(formats.Q4, 32, r) for r in residuals(x[:35], fl.mu[0, 2], np.arange(35)))
    assert raw[: 35 * rb] == want


def test_bad_collapse_settings_are_refused_and_change_nothing(wasm_path):
    s, m = new_store(wasm_path, SHAPE)
    s.configure(-1, formats.Q4, formats.Q4, 32)
    mu = s.alloc(4 * D)
    for args in [(-1, 0, THETA, mu), (2, 0, THETA, mu), (0, 3, THETA, mu), (0, -1, THETA, mu), (0, 0, 1.0, mu),
                 (0, 0, float("nan"), mu), (0, 0, THETA, -2)]:
        assert m.call("kv_collapse", *args) == formats.EINVAL, args
    assert m.call("kv_collapse_mean", 0, 0, mu) == formats.EINVAL  # not collapsed
    s.age(0, 0, 0, 1)  # per-channel keys: no residuals there
    assert m.call("kv_collapse", 0, 0, THETA, mu) == formats.EINVAL
    assert m.call("kv_collapse", 1, 0, THETA, mu) == 0
    assert m.call("kv_age", 1, 0, 0, 1) == formats.EINVAL  # and no per-channel keys on a collapsed head
    fl = Filler(s, m)
    fl.step(4)
    assert m.call("kv_collapse", 1, 1, THETA, mu) == formats.ESTATE  # holds entries
    assert [s.collapsed(1, h) for h in range(H)] == [1, 0, 0]
    s.reset()
    s.configure(-1, formats.Q4, formats.Q4, 32)  # clears it
    assert [s.collapsed(1, h) for h in range(H)] == [0, 0, 0]
    assert m.call("kv_collapse", 1, 0, THETA, mu) == 0
    assert m.call("kv_collapse", 1, 0, THETA, -1) == 0 and s.collapsed(1, 0) == 0

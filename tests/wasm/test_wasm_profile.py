"""The profiler's kernels (wasm/profile.c) against the NumPy reference, in both builds,
and the store's tools for it (kv_truncate, kv_hide)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab.host.wasmtime_module import WasmtimeModule
from kvlab.store import KVStore, StoreError
from tests.reference import profile_ref as ref

THETA = 100000.0  # SmolLM2's RoPE base
D = 64

# named error budgets
UNROTATE_ABS = 2e-6  # pre-RoPE values of size ~1: f64 math, one f32 rounding each side
ROUNDTRIP_REL = 1e-5  # rotate (f32) then unrotate returns the keys to f32 rounding
SCORE_ABS = 1e-6  # collapse share / cosine: f64 sums, one f32 rounding


class Kernels:
    def __init__(self, path):
        self.m = WasmtimeModule(path)
        self.s = KVStore(self.m)

    def put(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        p = self.s.alloc(max(a.nbytes, 16))
        self.m.write(p, a.tobytes())
        return p

    def get(self, p: int, n: int, dtype=np.float32) -> np.ndarray:
        return np.frombuffer(self.m.read(p, n * np.dtype(dtype).itemsize), dtype).copy()

    def call(self, name, *args):
        rc = self.m.call(name, *args)
        if rc < 0:
            raise StoreError(rc, name)
        return rc

    def unrotate(self, y: np.ndarray, pos0: int) -> np.ndarray:
        src, dst = self.put(y.astype(np.float32)), self.s.alloc(y.nbytes)
        self.call("kv_rope_unrotate", src, len(y), y.shape[1], pos0, THETA, dst)
        return self.get(dst, y.size).reshape(y.shape)

    def moments(self, blocks: list[np.ndarray]) -> np.ndarray:
        d = blocks[0].shape[1]
        acc = self.put(np.zeros((len(blocks), d + 2)))
        for i, b in enumerate(blocks):
            self.call("kv_moments", self.put(b.astype(np.float32)), len(b), d, acc + 8 * i * (d + 2))
        return self.get(acc, len(blocks) * (d + 2), np.float64).reshape(len(blocks), d + 2), acc

    def scores(self, acc_ptr: int, m: int, d: int) -> np.ndarray:
        out = self.s.alloc(8)
        self.call("kv_moment_scores", acc_ptr, m, d, out)
        return self.get(out, 2)


@pytest.fixture(scope="module", params=[SIMD_NAME, SCALAR_NAME])
def k(request):
    return Kernels(build_wasm() / request.param)


# ---------------------------------------------------------------------------------------
# Pre-RoPE keys
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos0", [0, 1, 511, 8000])
def test_unrotate_matches_numpy_and_inverts_the_graphs_rotation(k, pos0):
    rng = np.random.default_rng(pos0)
    x = rng.standard_normal((37, D)).astype(np.float32) * 3
    y = ref.rope_rotate(x, pos0, THETA)
    got = k.unrotate(y, pos0)
    np.testing.assert_allclose(got, ref.rope_unrotate(y, pos0, THETA), atol=UNROTATE_ABS * 3, rtol=0)
    np.testing.assert_allclose(got, x, rtol=ROUNDTRIP_REL, atol=ROUNDTRIP_REL * 3)


def test_unrotate_is_not_the_identity_and_position_matters(k):
    x = np.ones((4, D), np.float32)
    y = ref.rope_rotate(x, 100, THETA)
    assert np.abs(k.unrotate(y, 100) - x).max() < 1e-5
    assert np.abs(k.unrotate(y, 101) - x).max() > 0.1  # the wrong position does not undo it


def test_unrotate_rejects_bad_shapes(k):
    p = k.s.alloc(64)
    for args in ((p, 1, 63, 0, THETA, p), (p, -1, D, 0, THETA, p), (p, 1, D, -1, THETA, p), (p, 1, D, 0, 1.0, p)):
        assert k.m.call("kv_rope_unrotate", *args) == -2


# ---------------------------------------------------------------------------------------
# Moments and scores
# ---------------------------------------------------------------------------------------


def test_moments_and_scores_match_numpy(k):
    rng = np.random.default_rng(1)
    mean = rng.standard_normal(D)
    blocks = [(mean + 0.5 * rng.standard_normal((n, D))).astype(np.float32) for n in (50, 7, 120)]
    acc, ptr = k.moments(blocks)
    want = np.stack([ref.moments(b) for b in blocks])
    np.testing.assert_allclose(acc, want, rtol=1e-12)
    np.testing.assert_allclose(k.scores(ptr, 3, D), ref.moment_scores(want), atol=SCORE_ABS)


def test_scores_at_the_extremes(k):
    rng = np.random.default_rng(2)
    same = np.tile(rng.standard_normal(D), (30, 1)).astype(np.float32)
    _, ptr = k.moments([same, same[:5]])
    share, cos = k.scores(ptr, 2, D)
    assert share == pytest.approx(1.0, abs=1e-6) and cos == pytest.approx(1.0, abs=1e-6)
    noise = [rng.standard_normal((4000, D)).astype(np.float32) for _ in range(2)]
    _, ptr = k.moments(noise)
    share, _ = k.scores(ptr, 2, D)
    assert share < 0.01  # zero-mean rows share no direction
    # constant within each input, opposite across the two: the pooled mean is zero
    v = rng.standard_normal(D).astype(np.float32)
    _, ptr = k.moments([np.tile(v, (10, 1)), np.tile(-v, (10, 1))])
    share, cos = k.scores(ptr, 2, D)
    assert share < 1e-6 and cos == pytest.approx(-1.0, abs=1e-6)


def test_scores_reject_empty_moments(k):
    ptr = k.put(np.zeros(D + 2))
    assert k.m.call("kv_moment_scores", ptr, 1, D, k.s.alloc(8)) == -2


# ---------------------------------------------------------------------------------------
# Attention rows
# ---------------------------------------------------------------------------------------


def test_range_sums_and_add_rows(k):
    rng = np.random.default_rng(3)
    a = rng.random((9, 300)).astype(np.float32)
    src, out = k.put(a), k.s.alloc(4 * 9)
    for lo, hi in ((0, 4), (172, 300), (10, 10), (0, 300)):
        k.call("kv_range_sums", src, 9, 300, lo, hi, out)
        np.testing.assert_allclose(k.get(out, 9), ref.range_sums(a, lo, hi), rtol=1e-6)
    assert k.m.call("kv_range_sums", src, 9, 300, 5, 301, out) == -2
    dst = k.put(np.ones((9, 200), np.float32))
    k.call("kv_add_rows", dst, src, 9, 200, 300)
    k.call("kv_add_rows", dst, src, 9, 200, 300)
    np.testing.assert_array_equal(k.get(dst, 9 * 200).reshape(9, 200), 1 + a[:, :200] + a[:, :200])


@pytest.mark.parametrize("n", [1, 2, 7, 512, 1000])
def test_cumshare_matches_numpy(k, n):
    rng = np.random.default_rng(n)
    v = (rng.pareto(1.2, n) * (rng.random(n) < 0.9)).astype(np.float32)  # heavy-tailed, zeros
    v[0] += 0.5  # never all zero
    src, dst = k.put(v), k.s.alloc(4 * n)
    k.call("kv_cumshare", src, n, dst)
    got = k.get(dst, n)
    np.testing.assert_array_equal(got, ref.cumshare(v).astype(np.float32))
    np.testing.assert_array_equal(k.get(src, n), v)  # the input is untouched
    assert got[-1] == pytest.approx(1.0) and np.all(np.diff(got) >= 0)


def test_cumshare_of_zeros_and_nan(k):
    v = np.array([0, np.nan, 0], np.float32)
    src, dst = k.put(v), k.s.alloc(12)
    k.call("kv_cumshare", src, 3, dst)
    np.testing.assert_array_equal(k.get(dst, 3), [0, 0, 0])


# ---------------------------------------------------------------------------------------
# kv_truncate and kv_hide
# ---------------------------------------------------------------------------------------

L_, KH, QH = 2, 3, 9


def fill(k: Kernels, n: int, seed: int) -> None:
    """Append n tokens of deterministic K/V to every layer, one step."""
    rng = np.random.default_rng(seed)
    t = k.s.step_begin(n)
    for lay in t.layers:
        k.m.write(lay.new_k, rng.standard_normal((KH, n, D)).astype(np.float32).tobytes())
        k.m.write(lay.new_v, rng.standard_normal((KH, n, D)).astype(np.float32).tobytes())
    k.s.step_commit(n)


def staging(k: Kernels, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    P = k.s.capacity(layer)
    K = k.get(k.call("kv_layer_ptr", layer, 0), KH * P * D).reshape(KH, P, D)
    V = k.get(k.call("kv_layer_ptr", layer, 1), KH * P * D).reshape(KH, P, D)
    M = k.get(k.call("kv_layer_ptr", layer, 2), KH * P).reshape(KH, P)
    return K, V, M, P


@pytest.mark.parametrize("fmt", ["f32", "q4"])
def test_truncate_then_refill_equals_the_straight_fill(k, fmt):
    k.s.init(L_, KH, QH, D, 100)
    k.s.configure(-1, fmt, fmt)
    fill(k, 40, 1)
    fill(k, 25, 2)
    k.s.truncate(40)
    assert k.s.tokens(-1) == 40 and k.s.tokens(0) == 40
    assert k.s.bytes() == 40 * L_ * KH * 2 * (D * 4 if fmt == "f32" else 40)
    Kt, Vt, Mt, _ = staging(k, 1)
    assert np.all(Mt[:, :40] == 0) and np.all(Mt[:, 40:] == -1e9) and not Kt[:, 40:].any()
    fill(k, 25, 3)
    after = staging(k, 1)
    k.s.reset()
    fill(k, 40, 1)
    fill(k, 25, 3)
    straight = staging(k, 1)
    for a, b in zip(after[:3], straight[:3]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(StoreError):
        k.s.truncate(66)


def test_hide_masks_only_the_layer_and_range_and_can_undo(k):
    k.s.init(L_, KH, QH, D, 100)
    fill(k, 30, 4)
    before = k.s.bytes()
    k.s.hide(1, 4, 20)
    _, _, M1, _ = staging(k, 1)
    _, _, M0, _ = staging(k, 0)
    assert np.all(M1[:, 4:20] == -1e9) and np.all(M1[:, :4] == 0) and np.all(M1[:, 20:30] == 0)
    assert np.all(M0[:, :30] == 0)
    assert k.s.bytes() == before  # hiding frees nothing
    fill(k, 5, 5)  # new tokens are visible
    _, _, M1, _ = staging(k, 1)
    assert np.all(M1[:, 30:35] == 0) and np.all(M1[:, 4:20] == -1e9)
    k.s.hide(1, 4, 20, hidden=False)
    _, _, M1, _ = staging(k, 1)
    assert np.all(M1[:, :35] == 0)
    with pytest.raises(StoreError):
        k.s.hide(1, 0, 36)  # beyond the live slots
    with pytest.raises(StoreError):
        k.s.hide(2, 0, 1)

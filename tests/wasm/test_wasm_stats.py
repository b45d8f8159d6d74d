"""``kv_logit_stats`` (wasm/stats.c) against the NumPy reference, in both builds.

Inputs are deterministic: random logits of a vocabulary's size at several scales, a
perturbed copy (what a compressed cache gives), identical vectors (KL must be exactly 0),
ties (first index wins), very peaked and very flat distributions.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab.host.wasmtime_module import WasmtimeModule
from kvlab.store import KVStore, StoreError
from tests.reference.stats_ref import N_STATS, logit_stats

VOCAB = 49152

# named error budgets (absolute, on the f32 outputs of an f64 computation)
LOGP_ABS = 1e-5 + 2e-7  # log-probabilities: f32 rounding of values up to ~40 nats
KL_ABS = 1e-6  # KL divergence (nats), plus 1e-5 relative
ENTROPY_ABS = 1e-5  # entropies (nats)


class Stats:
    def __init__(self, path):
        self.m = WasmtimeModule(path)
        self.s = KVStore(self.m)
        self.ref = self.s.alloc(4 * VOCAB)
        self.cmp = self.s.alloc(4 * VOCAB)
        self.out = self.s.alloc(4 * N_STATS)

    def __call__(self, ref: np.ndarray, cmp: np.ndarray, target: int) -> np.ndarray:
        self.m.write(self.ref, np.asarray(ref, np.float32).tobytes())
        self.m.write(self.cmp, np.asarray(cmp, np.float32).tobytes())
        rc = self.m.call("kv_logit_stats", self.ref, self.cmp, len(ref), target, self.out)
        if rc < 0:
            raise StoreError(rc, "kv_logit_stats")
        return np.array(struct.unpack(f"<{N_STATS}f", self.m.read(self.out, 4 * N_STATS)), np.float64)


@pytest.fixture(scope="module")
def builds():
    d = build_wasm()
    return Stats(d / SIMD_NAME), Stats(d / SCALAR_NAME)


def cases():
    rng = np.random.default_rng(4)
    for scale in (0.1, 1.0, 3.0, 12.0):
        ref = (rng.standard_normal(VOCAB) * scale).astype(np.float32)
        noise = (rng.standard_normal(VOCAB) * 0.05 * scale).astype(np.float32)
        yield f"noisy-{scale}", ref, ref + noise, int(rng.integers(VOCAB))
        yield f"same-{scale}", ref, ref.copy(), int(rng.integers(VOCAB))
    peaked = np.full(VOCAB, -20.0, np.float32)
    peaked[7] = 30.0
    flat = np.zeros(VOCAB, np.float32)
    yield "peaked-vs-flat", peaked, flat, 7
    yield "flat-vs-peaked", flat, peaked, 8  # the target has p ~ e^-50 under cmp
    tie = rng.standard_normal(VOCAB).astype(np.float32)
    tie[[10, 30000]] = 9.0
    yield "ties", tie, tie[::-1].copy(), -1
    yield "small-n", np.array([1.0, 2.0, 3.0], np.float32), np.array([3.0, 2.0, 1.0], np.float32), 0


@pytest.mark.parametrize("name, ref, cmp, target", list(cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_logit_stats_match_numpy(builds, name, ref, cmp, target):
    want = logit_stats(ref, cmp, target)
    for st in builds:
        got = st(ref, cmp, target)
        np.testing.assert_allclose(got[:2], want[:2], rtol=2e-7, atol=LOGP_ABS)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=KL_ABS)
        np.testing.assert_allclose(got[4:6], want[4:6], rtol=1e-6, atol=ENTROPY_ABS)
        assert got[3] == want[3] and got[6] == want[6] and got[7] == want[7]
        if name.startswith("same"):
            assert got[2] == 0.0 and got[3] == 1.0 and got[0] == got[1]


def test_builds_agree_bit_for_bit(builds):
    rng = np.random.default_rng(1)
    ref = (rng.standard_normal(VOCAB) * 4).astype(np.float32)
    cmp = ref + (rng.standard_normal(VOCAB) * 0.3).astype(np.float32)
    a, b = (st(ref, cmp, 5) for st in builds)
    assert a.tobytes() == b.tobytes()


def test_logit_stats_rejects_bad_input(builds):
    for st in builds:
        with pytest.raises(StoreError):
            st(np.zeros(4, np.float32), np.zeros(4, np.float32), 4)  # target out of range
        with pytest.raises(StoreError):
            st(np.full(4, -np.inf, np.float32), np.zeros(4, np.float32), 0)  # no finite max

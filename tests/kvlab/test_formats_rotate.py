"""``kvlab.formats.rotate_row``: the pure-Python mirror of the store's rotation.

Checked against the NumPy reference (tests/reference/kvstore_ref.py's ``rotate``, float32,
the same butterflies as wasm/turbo.c): the same values, the same norm, and the same
refusal of a row length the Walsh-Hadamard transform has no size for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvlab import formats
from tests.reference import kvstore_ref as ref


def norm(x) -> float:
    return math.sqrt(sum(v * v for v in x))


@pytest.mark.parametrize("n", [16, 32, 64])
def test_rotate_row_equals_the_reference_and_keeps_the_norm(n):
    rng = np.random.default_rng(n)
    for trial in range(20):
        x = rng.standard_normal(n).astype(np.float32)
        if trial % 2:  # a key-like row: one outlier channel far above the rest
            x[rng.integers(n)] *= 30
        got = formats.rotate_row(x.tolist())
        want = ref.rotate(x).astype(np.float64)
        assert len(got) == n
        scale = float(np.max(np.abs(want)))
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * scale), (n, trial)
        assert norm(got) == pytest.approx(norm(x.tolist()), rel=1e-12)


def test_rotate_row_spreads_an_outlier():
    """A single spike becomes 64 values of equal size: its peak-to-RMS ratio goes from
    sqrt(64) = 8 to 1."""
    x = [0.0] * 64
    x[7] = 4.0
    y = formats.rotate_row(x)
    assert all(abs(abs(v) - 0.5) < 1e-12 for v in y)


def test_rotate_row_signs_are_the_stores():
    """The first butterfly stage sees s . x: rotating e_j gives column j of H times s_j."""
    for j in (0, 1, 5, 63):
        e = [0.0] * 64
        e[j] = 1.0
        s = -1.0 if (formats.TURBO_SIGNS >> j) & 1 else 1.0
        assert formats.rotate_row(e)[0] == pytest.approx(s / 8)


@pytest.mark.parametrize("n", [0, 3, 48, 128])
def test_rotate_row_refuses_other_lengths(n):
    with pytest.raises(ValueError, match="power of two"):
        formats.rotate_row([1.0] * n)

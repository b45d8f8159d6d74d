"""The store's format kernels: scalar C == SIMD C == NumPy reference, bit for bit.

Both builds come from builder.wasm.build_wasm(); the reference is
tests/reference/kvstore_ref.py. Inputs: hypothesis-drawn rows (any finite float32 within
the fp16 range, and structured cases: constant groups, zeros, huge and tiny magnitudes,
negative-only groups, large offsets with a small spread), plus exhaustive fp16 checks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab import formats
from kvlab.host.wasmtime_module import WasmtimeModule
from tests.reference import kvstore_ref as ref

FORMATS = [f for f in formats.NAMES if f != formats.NONE]  # every format that holds values (none: below)
SCRATCH = 1 << 22  # bytes per buffer (1M floats)


class Kernels:
    """One module instance with two scratch buffers; rows in, bytes/rows out."""

    def __init__(self, path):
        self.m = WasmtimeModule(path)
        self.src = self.m.call("kv_alloc", SCRATCH)
        self.dst = self.m.call("kv_alloc", SCRATCH)
        assert self.src > 0 and self.dst > 0

    def quantize(self, fmt: int, G: int, x: np.ndarray) -> bytes:
        x = np.ascontiguousarray(x, np.float32).reshape(-1)
        self.m.write(self.src, x.tobytes())
        nb = self.m.call("kv_quantize", fmt, G, self.src, x.size, self.dst)
        assert nb == ref.row_bytes(fmt, G, x.size)
        return self.m.read(self.dst, nb)

    def dequantize(self, fmt: int, G: int, data: bytes, n: int) -> np.ndarray:
        self.m.write(self.src, data)
        assert self.m.call("kv_dequantize", fmt, G, self.src, n, self.dst) == n
        return np.frombuffer(self.m.read(self.dst, 4 * n), np.float32).copy()


@pytest.fixture(scope="module")
def kernels():
    d = build_wasm()
    simd, scalar = Kernels(d / SIMD_NAME), Kernels(d / SCALAR_NAME)
    assert simd.m.call("kv_simd") == 1 and scalar.m.call("kv_simd") == 0
    return simd, scalar


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

finite16 = st.floats(-65504.0, 65504.0, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def rows(draw, elements=finite16):
    """(n,) f32 with n = groups * G: hypothesis' own floats (edges like 0, -0, subnormals)."""
    G = draw(st.sampled_from(formats.GROUP_SIZES))
    n = G * draw(st.integers(1, 6))
    return G, draw(hnp.arrays(np.float32, n, elements=elements))


MODES = ["normal", "constant", "zeros", "negative", "offset", "tiny", "huge", "outlier", "mixed"]


@st.composite
def structured_rows(draw):
    """(n,) f32 shaped like the hard cases, one mode per group."""
    G = draw(st.sampled_from(formats.GROUP_SIZES))
    groups = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _ in range(groups):
        mode = draw(st.sampled_from(MODES))
        z = rng.standard_normal(G)
        if mode == "normal":
            v = z * 10.0 ** rng.uniform(-3, 2)
        elif mode == "constant":
            v = np.full(G, rng.uniform(-100, 100))
        elif mode == "zeros":
            v = np.zeros(G) * rng.choice([1.0, -1.0])  # +0 or -0
        elif mode == "negative":
            v = -np.abs(z) * 10.0 ** rng.uniform(-2, 2) - rng.uniform(0, 50)
        elif mode == "offset":
            v = rng.uniform(-1000, 1000) + z * 10.0 ** rng.uniform(-4, -1)
        elif mode == "tiny":
            v = z * 10.0 ** rng.uniform(-44, -5)  # down into the f32 subnormals
        elif mode == "huge":
            v = np.clip(z * 30000, -65504, 65504)
        elif mode == "outlier":
            v = z
            v[rng.integers(G)] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(1, 4)
        else:  # a mix of the sign of zero, an exact value and noise
            v = np.where(rng.random(G) < 0.5, 0.0, z)
        out.append(v)
    return G, np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Scalar == SIMD == reference
# ---------------------------------------------------------------------------------------


def check_all(kernels, fmt: int, G: int, x: np.ndarray) -> None:
    simd, scalar = kernels
    b_simd, b_scalar = simd.quantize(fmt, G, x), scalar.quantize(fmt, G, x)
    b_ref = ref.quantize(fmt, G, x)
    assert b_simd == b_scalar, "SIMD and scalar C quantize differently"
    assert b_scalar == b_ref, "C and the NumPy reference quantize differently"
    y_simd = simd.dequantize(fmt, G, b_ref, x.size)
    y_scalar = scalar.dequantize(fmt, G, b_ref, x.size)
    y_ref = ref.dequantize(fmt, G, b_ref)
    assert y_simd.tobytes() == y_scalar.tobytes() == y_ref.tobytes()
    err = np.abs(x.astype(np.float64) - y_ref.astype(np.float64))
    budget = ref.error_budget(fmt, G, x)
    worst = np.argmax(err - budget)
    assert err[worst] <= budget[worst], f"{formats.NAMES[fmt]} error {err[worst]} > budget {budget[worst]}"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: formats.NAMES[f])
@SETTINGS
@given(data=rows())
def test_kernels_match_on_any_floats(kernels, fmt, data):
    G, x = data
    check_all(kernels, fmt, G, x)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: formats.NAMES[f])
@SETTINGS
@given(data=structured_rows())
def test_kernels_match_on_hard_groups(kernels, fmt, data):
    G, x = data
    check_all(kernels, fmt, G, x)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: formats.NAMES[f])
@SETTINGS
@given(data=rows(st.floats(width=32)))  # inf, NaN, beyond fp16: no reference, but no drift
def test_scalar_equals_simd_on_any_bits(kernels, fmt, data):
    G, x = data
    simd, scalar = kernels
    b = simd.quantize(fmt, G, x)
    assert b == scalar.quantize(fmt, G, x)
    assert simd.dequantize(fmt, G, b, x.size).tobytes() == scalar.dequantize(fmt, G, b, x.size).tobytes()


def test_named_budgets_on_model_like_values(kernels):
    """The budgets in words: q8 <= amax/127 * 0.5, q4/q3/q2 <= range/L * 0.5 (L = 15, 7, 3),
    q4_0 <= amax/8 (one step: the other sign clamps at +7), each plus f32 rounding."""
    simd, _ = kernels
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(64 * 512) * rng.uniform(0.1, 20, 64 * 512)).astype(np.float32)

    def back(fmt, G):
        return simd.dequantize(fmt, G, simd.quantize(fmt, G, x), x.size).reshape(-1, G)

    for G in formats.GROUP_SIZES:
        g = x.reshape(-1, G).astype(np.float64)
        amax = np.abs(g).max(1, keepdims=True)
        lo, hi = g.min(1, keepdims=True), g.max(1, keepdims=True)
        assert np.all(np.abs(back(formats.Q8, G) - g) <= amax / 127 * 0.5 * (1 + 2**-10) + 2**-20 * amax)
        span = hi - lo + np.abs(lo) * 2**-10  # the fp16 floor of the minimum widens it a hair
        for fmt, levels in ((formats.Q4, 15), (formats.Q3, 7), (formats.Q2, 3)):
            err = np.abs(back(fmt, G) - g)
            assert np.all(err <= span / levels * 0.5 * (1 + 2**-6) + 2**-20 * amax), formats.NAMES[fmt]
        assert np.all(np.abs(back(formats.Q4_0, G) - g) <= amax / 8 * (1 + 2**-9) + 2**-20 * amax)


def test_low_bit_errors_shrink_with_bits(kernels):
    """On model-like rows, mean |error| falls with each bit: q2 > q3 > q4 > q8, and the
    symmetric q4_0 sits between q3 and q8 (its step is amax/8 where q4's is range/15)."""
    simd, _ = kernels
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(64 * 256) * 2.0).astype(np.float32)
    err = {f: float(np.mean(np.abs(simd.dequantize(f, 32, simd.quantize(f, 32, x), x.size) - x)))
           for f in (formats.Q2, formats.Q3, formats.Q4, formats.Q4_0, formats.Q8)}
    assert err[formats.Q2] > err[formats.Q3] > err[formats.Q4] > err[formats.Q8]
    assert err[formats.Q3] > err[formats.Q4_0] > err[formats.Q8]


# ---------------------------------------------------------------------------------------
# turbo: the codebook, the distortion it promises, the norm, the rotation's point
# ---------------------------------------------------------------------------------------

TURBO = {formats.TURBO2: 2, formats.TURBO3: 3, formats.TURBO4: 4}
# Lloyd-Max mean squared error per coordinate for N(0, 1) (Max 1960): 2, 3, 4 bits
LLOYD_MAX_MSE = {2: 0.1175, 3: 0.03454, 4: 0.009497}


def test_turbo_codebooks_are_lloyd_max_for_a_gaussian():
    """The codebook (the C's, via the bit-exact tests above) is Lloyd's fixed point."""
    for bits, c in ref.CODEBOOKS.items():
        assert np.abs(ref.lloyd_max(2**bits) - c).max() < 2e-6, bits


def relative_error(simd, fmt: int, G: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: ||x - x'||^2 / ||x||^2 and ||x'|| / ||x||."""
    y = simd.dequantize(fmt, G, simd.quantize(fmt, G, x), x.size).reshape(-1, G).astype(np.float64)
    g = x.reshape(-1, G).astype(np.float64)
    return ((g - y) ** 2).sum(1) / (g**2).sum(1), np.sqrt((y**2).sum(1) / (g**2).sum(1))


@pytest.mark.parametrize("fmt", TURBO, ids=lambda f: formats.NAMES[f])
@pytest.mark.parametrize("G", formats.GROUP_SIZES)
def test_turbo_distortion_and_norm(kernels, fmt, G):
    """The relative error is the codebook's distortion (a rotated coordinate is close to
    N(0, 1/G); measured 0.10-0.12, 0.028-0.033, 0.0077-0.0088), and the corrected norm keeps
    ||x'|| = ||x|| up to the fp16 rounding of r."""
    simd, _ = kernels
    x = (np.random.default_rng(G).standard_normal(G * 2000) * 3).astype(np.float32)
    rel, norm = relative_error(simd, fmt, G, x)
    assert 0.75 * LLOYD_MAX_MSE[TURBO[fmt]] < rel.mean() < 1.05 * LLOYD_MAX_MSE[TURBO[fmt]]
    assert np.abs(norm - 1).max() <= 2**-11 + 1e-6


def test_turbo_does_not_mind_an_outlier_channel(kernels):
    """One channel 20x the others (keys have such channels): the rotation spreads it, so
    turbo4's error stays where it was, while q4's and q4_0's (the same bytes or more) grow."""
    simd, _ = kernels
    rng = np.random.default_rng(5)
    g = rng.standard_normal((2000, 32)).astype(np.float32)
    o = g.copy()
    o[:, 3] *= 20
    err = {f: (relative_error(simd, f, 32, g.ravel())[0].mean(), relative_error(simd, f, 32, o.ravel())[0].mean())
           for f in (formats.TURBO4, formats.Q4, formats.Q4_0)}
    plain, outlier = err[formats.TURBO4]
    assert outlier < 1.15 * plain
    for f in (formats.Q4, formats.Q4_0):
        assert err[f][1] > 1.5 * err[f][0] and err[f][1] > outlier, formats.NAMES[f]


# ---------------------------------------------------------------------------------------
# fp16, exhaustively where it is cheap
# ---------------------------------------------------------------------------------------


def test_f16_every_half_round_trips(kernels):
    """All 65,536 halves: f32 -> f16 gives the same bits; f16 -> f32 equals numpy."""
    all_bits = np.arange(65536, dtype=np.uint16)
    values = ref.f16_value(all_bits)  # (65536,) f32, NaNs included
    finite = ~np.isnan(values)
    for k in kernels:
        back = np.frombuffer(k.quantize(formats.F16, 32, values), "<u2")
        assert np.array_equal(back[finite], all_bits[finite])
        assert np.all((back[~finite] & 0x7C00) == 0x7C00) and np.all(back[~finite] & 0x3FF)
        y = k.dequantize(formats.F16, 32, all_bits.astype("<u2").tobytes(), 65536)
        assert np.array_equal(y.view(np.uint32), values.view(np.uint32))  # NaN payloads too


def test_f16_rounding_boundaries_match_numpy(kernels):
    """Every midpoint between adjacent finite halves, and one f32 ulp either side."""
    h = np.arange(0, 0x7C00, dtype=np.uint16)  # +0 .. 65504
    lo, hi = ref.f16_value(h[:-1]).astype(np.float64), ref.f16_value(h[1:]).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)  # exact in f32
    near = np.concatenate([mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf))])
    # the overflow edge: 65519.99 -> 65504, 65520 -> inf
    near = np.concatenate([near, np.float32([65519.996, 65520.0, 65536.0, 1e38])])
    x = np.concatenate([near, -near])
    want = ref.f16_bits(x)
    for k in kernels:
        assert np.array_equal(np.frombuffer(k.quantize(formats.F16, 32, x), "<u2"), want)


def test_f16_random_f32_bits_match_numpy(kernels):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    want = ref.f16_bits(x)
    for k in kernels:
        assert np.array_equal(np.frombuffer(k.quantize(formats.F16, 32, x), "<u2"), want)


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------


def test_invalid_kernel_arguments(kernels):
    simd, _ = kernels
    m = simd.m
    assert m.call("kv_quantize", 99, 32, simd.src, 64, simd.dst) == formats.EINVAL  # format
    assert m.call("kv_quantize", -1, 32, simd.src, 64, simd.dst) == formats.EINVAL
    assert m.call("kv_quantize", formats.Q8, 24, simd.src, 48, simd.dst) == formats.EINVAL  # group
    for f in (formats.Q4, formats.Q3, formats.Q2, formats.Q4_0):
        assert m.call("kv_quantize", f, 32, simd.src, 48, simd.dst) == formats.EINVAL  # n % G
    assert m.call("kv_dequantize", formats.Q8, 16, simd.src, -16, simd.dst) == formats.EINVAL
    assert m.call("kv_quantize", formats.F16, 32, simd.src, 7, simd.dst) == 14  # any n for f16


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: formats.NAMES[f])
@pytest.mark.parametrize("G", formats.GROUP_SIZES)
def test_format_bytes_formula(kernels, fmt, G):
    simd, _ = kernels
    for n in (64, 128, 640):
        assert simd.m.call("kv_format_bytes", fmt, G, n) == formats.row_bytes(fmt, G, n) == ref.row_bytes(fmt, G, n)


def test_none_holds_nothing_and_stages_zeros(kernels):
    """`none` (a collapsed key's mean alone): 0 bytes for any n and any group, zeros back."""
    x = np.random.default_rng(3).normal(size=640).astype(np.float32)
    for k in kernels:
        for G in formats.GROUP_SIZES:
            for n in (7, 64, 640):
                assert k.m.call("kv_format_bytes", formats.NONE, G, n) == formats.row_bytes(formats.NONE, G, n) == 0
        assert k.quantize(formats.NONE, 32, x) == ref.quantize(formats.NONE, 32, x) == b""
        assert not k.dequantize(formats.NONE, 32, b"", 640).any()
        assert not ref.dequantize(formats.NONE, 32, b"", 640).any()

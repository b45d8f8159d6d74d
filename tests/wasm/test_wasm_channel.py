"""Per-channel blocks (KIVI, wasm/channel.c) and the aging window (kv_age in wasm/cache.c).

The kernels: scalar C == SIMD C == the NumPy reference (tests/reference/kvstore_ref.py),
bit for bit, on hypothesis-drawn blocks of every group size and several head sizes; each
value within its channel's error budget. The store: what an aging layer holds after random
appends, equal to the reference store model (tests/reference/evict_ref.py; the long random
run with evictions is in test_wasm_evict.py), the bytes it counts, refused settings.
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
from tests.wasm.test_wasm_evict import Twin

CHANNEL = [formats.Q4, formats.Q3, formats.Q2]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Blocks:
    """One module instance with two scratch buffers: blocks in, bytes / values out."""

    def __init__(self, path):
        self.m = WasmtimeModule(path)
        self.src, self.dst = self.m.call("kv_alloc", 1 << 20), self.m.call("kv_alloc", 1 << 20)

    def quantize(self, fmt: int, x: np.ndarray) -> bytes:
        G, D = x.shape
        self.m.write(self.src, np.ascontiguousarray(x, np.float32).tobytes())
        nb = self.m.call("kv_quantize_channel", fmt, G, self.src, D, self.dst)
        assert nb == 4 * D + G * ref.channel_row_bytes(fmt, D)
        return self.m.read(self.dst, nb)

    def dequantize(self, fmt: int, data: bytes, G: int, D: int) -> np.ndarray:
        self.m.write(self.src, data)
        assert self.m.call("kv_dequantize_channel", fmt, G, self.src, D, self.dst) == G * D
        return np.frombuffer(self.m.read(self.dst, 4 * G * D), np.float32).reshape(G, D).copy()


@pytest.fixture(scope="module")
def blocks():
    d = build_wasm()
    return Blocks(d / SIMD_NAME), Blocks(d / SCALAR_NAME)


@st.composite
def block(draw):
    """(G, D) f32: hypothesis' floats in the fp16 range, some channels made outliers."""
    G = draw(st.sampled_from(formats.GROUP_SIZES))
    D = draw(st.sampled_from([16, 64, 256]))
    x = draw(hnp.arrays(np.float32, (G, D), elements=st.floats(-1000, 1000, width=32)))
    scale = draw(st.sampled_from([1.0, 1e-3, 50.0]))
    x = (x * np.float32(scale)).astype(np.float32)
    out = draw(st.lists(st.integers(0, D - 1), max_size=3))
    x[:, out] *= np.float32(40.0)
    return np.clip(x, -65504, 65504).astype(np.float32)


@pytest.mark.parametrize("fmt", CHANNEL, ids=lambda f: formats.NAMES[f])
@SETTINGS
@given(x=block())
def test_channel_kernels_match_the_reference(blocks, fmt, x):
    """Params and codes are the reference's bytes on both builds; dequantizing them gives
    the reference's values, each within its channel's budget (Q4's rule per channel)."""
    G, D = x.shape
    params, codes = ref.quantize_channel(fmt, x)
    want = params + codes.tobytes()
    simd, scalar = blocks
    assert simd.quantize(fmt, x) == want
    assert scalar.quantize(fmt, x) == want
    y = ref.dequantize_channel(fmt, params, codes)
    assert simd.dequantize(fmt, want, G, D).tobytes() == y.tobytes()
    assert scalar.dequantize(fmt, want, G, D).tobytes() == y.tobytes()
    budget = ref.error_budget(fmt, G, np.ascontiguousarray(x.T).reshape(-1)).reshape(D, G).T
    assert np.all(np.abs(y.astype(np.float64) - x) <= budget)


def test_channel_blocks_give_outlier_channels_their_own_scale(blocks):
    """KIVI's point: keys with a few large channels at every token. Per token, those
    channels stretch every other channel's step; per channel they do not. Measured on the
    other channels' error, q4 per channel vs q4 per token (G = 32)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    x[:, [3, 40]] += np.float32(30.0)  # two outlier channels, as in real keys
    simd, _ = blocks
    y_ch = simd.dequantize(formats.Q4, simd.quantize(formats.Q4, x), 32, 64)
    y_tok = ref.roundtrip(formats.Q4, 32, x)
    rest = np.setdiff1d(np.arange(64), [3, 40])
    e_ch = np.abs(y_ch - x)[:, rest].mean()
    e_tok = np.abs(y_tok - x)[:, rest].mean()
    assert e_ch < e_tok / 5, (e_ch, e_tok)


def test_channel_kernels_refuse_what_they_cannot_hold(blocks):
    simd, _ = blocks
    for fmt, G, D in [(formats.Q8, 32, 64), (formats.F16, 32, 64), (formats.Q4_0, 32, 64),
                      (formats.Q4, 24, 64), (formats.Q4, 32, 40), (formats.Q4, 32, 512)]:
        assert simd.m.call("kv_quantize_channel", fmt, G, simd.src, D, simd.dst) == formats.EINVAL
        assert simd.m.call("kv_dequantize_channel", fmt, G, simd.src, D, simd.dst) == formats.EINVAL


# ---------------------------------------------------------------------------------------
# The aging window in the store
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[SIMD_NAME, SCALAR_NAME])
def wasm_path(request):
    return build_wasm() / request.param


@pytest.mark.parametrize("k_fmt,v_fmt,G,recent,axis", [
    (formats.Q4, formats.Q4, 32, 128, (0, 0)),  # seed 001's k128 (and v128)
    (formats.Q4, formats.Q2, 32, 0, (1, 0)),  # KIVI: keys per channel, values per token
    (formats.Q2, formats.Q2, 16, 20, (1, 1)),
    (formats.Q3, formats.TURBO3, 64, 5, (1, 0)),
])
def test_random_appends_match_the_model(wasm_path, k_fmt, v_fmt, G, recent, axis):
    """Steps of 1-64 tokens on every layer: after each, the store's rows, blocks, waiting
    entries, staging and bytes are the model's (decode-sized steps included: a window
    that ages one entry at a time)."""
    rng = np.random.default_rng(recent + 7 * G)
    tw = Twin(wasm_path)
    tw.configure(-1, k_fmt, v_fmt, G)
    for p in range(2):
        assert tw.age(-1, p, recent, axis[p]) == 0
    for n in range(40):
        tw.append(int(rng.integers(1, 65)) if n % 3 else 1, rng)
        tw.check(full=n % 5 == 0)
    tw.check(full=True)
    # the newest entries are exact, the older ones are in the format
    L, h = tw.model.layers[0], tw.model.layers[0].heads[0]
    want = recent if not axis[0] else None
    if want is not None:
        assert len(h.res[0]) == min(recent, h.n)
    else:
        assert recent <= len(h.res[0]) < recent + G and h.aged(0) % G == 0


def test_k128_bytes_are_fp32_for_the_window_and_q4_for_the_rest(wasm_path):
    """The count the meter shows: 300 tokens with K q4 + k128, V q4: per (layer, head)
    K = 172 q4 rows + 128 fp32 rows, V = 300 q4 rows."""
    tw = Twin(wasm_path)
    tw.configure(-1, formats.Q4, formats.Q4, 32)
    tw.age(-1, 0, 128, 0)
    rng = np.random.default_rng(1)
    for S in (200, 99, 1):
        tw.append(S, rng)
    q4 = formats.row_bytes(formats.Q4, 32, 64)
    per = tw.L * tw.H
    assert tw.s.bytes(-1, 0) == per * (172 * q4 + 128 * 4 * 64)
    assert tw.s.bytes(-1, 1) == per * 300 * q4
    assert tw.s.bytes(-1, 2) == 0  # no index without eviction


def test_kivi_bytes_are_codes_params_and_the_residual(wasm_path):
    """K per channel (q2, G = 32, no window): 100 tokens = 3 blocks of 32 (codes 16 bytes
    per entry, params 256 bytes per block) + 4 waiting in fp32."""
    tw = Twin(wasm_path)
    tw.configure(-1, formats.Q2, formats.F16, 32)
    tw.age(-1, 0, 0, 1)
    tw.append(100, np.random.default_rng(2))
    per = tw.L * tw.H
    assert tw.s.bytes(-1, 0) == per * (96 * 16 + 3 * 256 + 4 * 256)
    assert tw.s.bytes(-1, 1) == per * 100 * 128


def test_bad_aging_settings_are_refused_and_change_nothing(wasm_path):
    tw = Twin(wasm_path)
    tw.configure(-1, formats.Q8, formats.Q4, 32)
    m = tw.m
    for args in [(-2, 0, 8, 0), (3, 0, 8, 0), (0, 2, 8, 0), (0, 0, -1, 0), (0, 0, 8, 2), (0, 0, 1 << 21, 0),
                 (0, 0, 8, 1)]:  # q8 has no per-channel blocks
        assert m.call("kv_age", *args) == formats.EINVAL, args
    tw.append(5, np.random.default_rng(3))
    assert tw.age(0, 1, 8, 1) == formats.ESTATE  # holds entries
    tw.check(full=True)
    assert tw.model.layers[0].recent == [0, 0]


def test_truncate_keeps_what_aged_and_refuses_to_cut_a_block(wasm_path):
    tw = Twin(wasm_path)
    tw.configure(-1, formats.Q4, formats.Q4, 16)
    tw.age(-1, 0, 4, 1)
    tw.age(-1, 1, 10, 0)
    tw.append(60, np.random.default_rng(4))  # K: 3 blocks of 16 + 12 waiting; V: 50 + 10
    assert tw.truncate(47) == formats.ESTATE  # inside K's third block
    assert tw.truncate(55) == 0  # K: 48 + 7 waiting; V: 50 + 5 waiting
    tw.check(full=True)
    assert [len(h.res[0]) for h in tw.model.layers[0].heads] == [7] * tw.H
    tw.append(9, np.random.default_rng(5))
    tw.check(full=True)


# ---------------------------------------------------------------------------------------
# Formats per KV head (kv_configure_head)
# ---------------------------------------------------------------------------------------


def test_heads_of_a_layer_hold_their_own_formats(wasm_path):
    """Layer 0's three KV heads in f16 / q8 / q2 keys (values q4 / f32 / q3) beside layers of
    q4: the bytes are each head's rows, the staging each head's own round trip (checked
    against the model), and kv_head_format says which is which; kv_configure resets them."""
    tw = Twin(wasm_path, dict(n_layers=2, n_kv_heads=3, n_q_heads=6, head_dim=64, vocab=100))
    tw.configure(-1, formats.Q4, formats.Q4, 32)
    for h, (kf, vf) in enumerate([(formats.F16, formats.Q4), (formats.Q8, formats.F32), (formats.Q2, formats.Q3)]):
        assert tw.configure_head(0, h, kf, vf) == 0
        assert (tw.m.call("kv_head_format", 0, h, 0), tw.m.call("kv_head_format", 0, h, 1)) == (kf, vf)
    rng = np.random.default_rng(6)
    for S in (70, 1, 30):
        tw.append(S, rng)
        tw.check(full=True)
    row = lambda f: formats.row_bytes(f, 32, 64)  # noqa: E731
    assert tw.s.bytes(0, 0) == 101 * (row(formats.F16) + row(formats.Q8) + row(formats.Q2))
    assert tw.s.bytes(0, 1) == 101 * (row(formats.Q4) + row(formats.F32) + row(formats.Q3))
    assert tw.s.bytes(1, 0) == 101 * 3 * row(formats.Q4)
    assert tw.configure_head(0, 1, formats.Q8, formats.Q8) == formats.ESTATE  # holds entries
    tw.reset()
    tw.configure(0, formats.Q8, formats.Q8, 32)
    assert [tw.m.call("kv_head_format", 0, h, 0) for h in range(3)] == [formats.Q8] * 3


def test_bad_head_formats_are_refused(wasm_path):
    tw = Twin(wasm_path)
    tw.configure(-1, formats.Q4, formats.Q4, 32)
    m = tw.m
    for args in [(-1, 0, formats.Q4, formats.Q4), (3, 0, formats.Q4, formats.Q4), (0, 3, formats.Q4, formats.Q4),
                 (0, -1, formats.Q4, formats.Q4), (0, 0, 99, formats.Q4), (0, 0, formats.Q4, -1)]:
        assert m.call("kv_configure_head", *args) == formats.EINVAL, args
    assert m.call("kv_head_format", 0, 3, 0) == formats.EINVAL
    assert m.call("kv_head_format", 0, 0, 2) == formats.EINVAL
    tw.age(0, 0, 0, 1)  # per-channel keys: a head cannot take a format without blocks
    assert tw.configure_head(0, 1, formats.Q8, formats.Q4) == formats.EINVAL
    assert tw.configure_head(0, 1, formats.Q2, formats.Q8) == 0
    tw.append(40, np.random.default_rng(7))
    tw.check(full=True)

"""The KV store's cache: byte accounting, the step protocol, staging, growth, failure, reset.

Runs against both builds (SIMD and scalar) through the pure-Python ``KVStore`` wrapper
and the wasmtime adapter; expected contents come from tests/reference/kvstore_ref.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab import formats
from kvlab.host.wasmtime_module import WasmtimeModule
from kvlab.store import KVStore, StoreError
from tests.reference import kvstore_ref as ref

MODEL = dict(n_layers=30, n_kv_heads=3, n_q_heads=9, head_dim=64, vocab=49152)  # SmolLM2-135M
SMALL = dict(n_layers=3, n_kv_heads=2, n_q_heads=4, head_dim=64, vocab=100)
FMTS = list(formats.NAMES)  # every format


@pytest.fixture(scope="module", params=[SIMD_NAME, SCALAR_NAME])
def wasm_path(request):
    return build_wasm() / request.param


def new_store(path, shape=SMALL) -> tuple[KVStore, WasmtimeModule]:
    m = WasmtimeModule(path)
    s = KVStore(m)
    s.init(**shape)
    return s, m


def f32(m: WasmtimeModule, ptr: int, shape) -> np.ndarray:
    return np.frombuffer(m.read(ptr, 4 * int(np.prod(shape))), np.float32).reshape(shape).copy()


def run_step(s: KVStore, m: WasmtimeModule, S: int, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """begin + write random new K/V (kv_heads, S, head_dim) per layer + commit."""
    t = s.step_begin(S)
    ks, vs = [], []
    for L in t.layers:
        k = rng.standard_normal((s.n_kv_heads, S, s.head_dim)).astype(np.float32) * 3
        v = rng.standard_normal((s.n_kv_heads, S, s.head_dim)).astype(np.float32)
        m.write(L.new_k, k.tobytes())
        m.write(L.new_v, v.tobytes())
        ks.append(k)
        vs.append(v)
    s.step_commit(S)
    return ks, vs


# ---------------------------------------------------------------------------------------
# Byte accounting
# ---------------------------------------------------------------------------------------


def test_bytes_for_the_model_match_the_brief(wasm_path):
    """fp32 = tokens x 11,520 x 4, fp16 x 2, q8 G=32: 360 groups x 34, q4 G=32: x 20."""
    rng = np.random.default_rng(0)
    per_token = {"f32": 11520 * 4, "f16": 11520 * 2, "q8": 360 * 34, "q4": 360 * 20}  # 360 groups = K + V
    for name, want in per_token.items():
        s, m = new_store(wasm_path, MODEL)
        s.configure(-1, name, name, 32)
        for S in (7, 1, 12):
            run_step(s, m, S, rng)
        assert s.tokens() == 20 and s.tokens(29) == 20
        assert s.bytes() == 20 * want
        assert s.bytes(-1, 0) == s.bytes(-1, 1) == 20 * want // 2 and s.bytes(-1, 2) == 0


@pytest.mark.parametrize("G", formats.GROUP_SIZES)
def test_bytes_equal_the_formula_for_every_format_pair(wasm_path, G):
    rng = np.random.default_rng(G)
    for kf in FMTS:
        for vf in FMTS:
            s, m = new_store(wasm_path)
            s.configure(-1, kf, vf, G)
            s.configure(1, vf, kf, G)  # one layer the other way round
            for S in (3, 1, 5):
                run_step(s, m, S, rng)
            H, D = SMALL["n_kv_heads"], SMALL["head_dim"]
            k_row, v_row = formats.row_bytes(kf, G, D), formats.row_bytes(vf, G, D)
            assert s.bytes(0, 0) == 9 * H * k_row and s.bytes(0, 1) == 9 * H * v_row
            assert s.bytes(1, 0) == 9 * H * v_row and s.bytes(1, 1) == 9 * H * k_row
            assert s.bytes(-1) == 3 * 9 * H * (k_row + v_row)
            assert s.bytes(-1, 2) == 0


# ---------------------------------------------------------------------------------------
# The step protocol: staging == dequantized reference, masks, compressed bytes, growth
# ---------------------------------------------------------------------------------------

LAYER_FORMATS = [(formats.Q4, formats.F16, 16), (formats.Q8, formats.Q2, 64), (formats.Q4_0, formats.Q3, 32)]


def check_layer(s: KVStore, m: WasmtimeModule, layer: int, k_all: np.ndarray, v_all: np.ndarray) -> None:
    """k_all, v_all: (kv_heads, tokens, head_dim) everything appended to this layer."""
    kf, vf, G = LAYER_FORMATS[layer]
    H, T, D = k_all.shape
    P = s.capacity(layer)
    assert P >= T and P % 64 == 0
    stage_k = f32(m, m.call("kv_layer_ptr", layer, 0), (H, P, D))
    stage_v = f32(m, m.call("kv_layer_ptr", layer, 1), (H, P, D))
    mask = f32(m, m.call("kv_layer_ptr", layer, 2), (H, P))
    for stage, x, f in ((stage_k, k_all, kf), (stage_v, v_all, vf)):
        assert stage[:, :T].tobytes() == ref.roundtrip(f, G, x).tobytes()  # what the store holds
        assert not stage[:, T:].any()  # empty slots are zero
    assert not mask[:, :T].any() and np.all(mask[:, T:] == ref.MASK_EMPTY)
    # the compressed store, head-major (kv_heads, capacity, row bytes): each head's rows
    for part, x, f in ((0, k_all, kf), (1, v_all, vf)):
        row = formats.row_bytes(f, G, D)
        for h in range(H):
            want = b"".join(ref.quantize(f, G, x[h, t]) for t in range(T))
            assert s.rows(layer, h, part) == want
            if h == 0:  # head 0's rows open the stream
                assert m.read(m.call("kv_layer_ptr", layer, 3 + part), T * row) == want


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(1, 90), min_size=1, max_size=5), seed=st.integers(0, 2**31))
def test_steps_fill_staging_with_what_the_store_holds(wasm_path, steps, seed):
    rng = np.random.default_rng(seed)
    s, m = new_store(wasm_path)
    for layer, (kf, vf, G) in enumerate(LAYER_FORMATS):
        s.configure(layer, kf, vf, G)
    hist_k = [np.zeros((2, 0, 64), np.float32) for _ in range(3)]
    hist_v = [np.zeros((2, 0, 64), np.float32) for _ in range(3)]
    for S in steps:
        before = s.tokens()
        t = s.step_begin(S)
        assert t.S == S and len(t.layers) == 3
        for i, L in enumerate(t.layers):
            assert L.P == s.capacity(i) >= before + S  # room for the commit
            # the past handed to the model is the staging, as it was
            past_k = f32(m, L.past_k, (2, L.P, 64))
            assert (
                past_k[:, :before].tobytes()
                == ref.roundtrip(LAYER_FORMATS[i][0], LAYER_FORMATS[i][2], hist_k[i]).tobytes()
            )
            k = rng.standard_normal((2, S, 64)).astype(np.float32) * rng.uniform(0.1, 30)
            v = rng.standard_normal((2, S, 64)).astype(np.float32)
            m.write(L.new_k, k.tobytes())
            m.write(L.new_v, v.tobytes())
            hist_k[i] = np.concatenate([hist_k[i], k], axis=1)
            hist_v[i] = np.concatenate([hist_v[i], v], axis=1)
        s.step_commit(S)
        assert s.tokens() == before + S
        for i in range(3):
            check_layer(s, m, i, hist_k[i], hist_v[i])


def test_table_layout_is_disjoint_and_aligned(wasm_path):
    s, m = new_store(wasm_path, MODEL)
    run_step(s, m, 100, np.random.default_rng(1))
    t = s.step_begin(5)
    H, Q, D, V = 3, 9, 64, 49152
    regions = [(t.logits, 4 * V)]
    for L in t.layers:
        assert L.P == s.capacity(0) >= 105
        regions += [(L.past_k, 4 * H * L.P * D), (L.past_v, 4 * H * L.P * D), (L.past_mask, 4 * H * L.P)]
        regions += [(L.new_k, 4 * H * 5 * D), (L.new_v, 4 * H * 5 * D), (L.attn, 4 * Q * (L.P + 5)), (L.entropy, 4 * Q)]
    regions.sort()
    for (a, na), (b, _) in itertools.pairwise(regions):
        assert a % 16 == 0 and a + na <= b
    assert regions[-1][0] + regions[-1][1] <= m.memory_bytes()


def test_capacity_grows_by_a_quarter_in_multiples_of_64(wasm_path):
    s, m = new_store(wasm_path)
    rng = np.random.default_rng(2)
    caps = []
    for _ in range(40):
        run_step(s, m, 16, rng)
        caps.append(s.capacity(0))
    assert caps[0] == 64
    grown = sorted(set(caps))
    for a, b in itertools.pairwise(grown):
        assert b % 64 == 0 and b >= a * 1.25
    assert s.staging_bytes() == 3 * 4 * 2 * caps[-1] * (2 * 64 + 1)


# ---------------------------------------------------------------------------------------
# Failure leaves the cache intact; wrong calls are refused
# ---------------------------------------------------------------------------------------


def snapshot(s: KVStore, m: WasmtimeModule, scratch: int) -> tuple:
    """Counts, staging K and mask, and every head's compressed K and V rows (read with
    kv_rows into `scratch`, allocated beforehand: a snapshot under a heap limit must not
    allocate, as KVStore.rows does)."""
    out = [s.tokens(), s.bytes(), s.staging_bytes()]
    for layer in range(s.n_layers):
        P = s.capacity(layer)
        out += [P, m.read(m.call("kv_layer_ptr", layer, 0), 4 * 2 * P * 64)]
        out += [m.read(m.call("kv_layer_ptr", layer, 2), 4 * 2 * P)]
        for h in range(s.n_kv_heads):
            for part in (0, 1):
                out += [m.read(scratch, m.call("kv_rows", layer, h, part, scratch))]
    return tuple(out)


@pytest.mark.parametrize("headroom", [0, 1_500_000, 3_000_000])
def test_failed_growth_changes_nothing_and_the_store_stays_usable(wasm_path, headroom):
    """A 1000-token step needs ~1.4 MB per layer: with headroom, the first layers' buffers
    are allocated before a later one fails, and must be rolled back."""
    s, m = new_store(wasm_path)
    s.configure(-1, "q8", "q4", 32)
    rng = np.random.default_rng(3)
    for S in (40, 10):
        run_step(s, m, S, rng)
    scratch = s.alloc(50 * 68)  # one head's rows: 50 tokens of q8 (68 bytes per row)
    before = snapshot(s, m, scratch)
    limit = s.heap_bytes() + headroom
    s.set_limit(limit)
    with pytest.raises(StoreError) as e:
        s.step_begin(1000)
    assert e.value.code == formats.ENOMEM
    assert snapshot(s, m, scratch) == before
    heap = s.heap_bytes()
    assert heap <= limit
    with pytest.raises(StoreError):  # again: the rolled-back blocks are reused, no leak
        s.step_begin(1000)
    assert s.heap_bytes() == heap and snapshot(s, m, scratch) == before
    # still usable within the limit: this fits in the current capacity (64)
    t = s.step_begin(3)
    assert t.layers[0].P == 64
    with pytest.raises(StoreError) as e:  # the failed begin left no open step behind it
        s.step_commit(1000)
    assert e.value.code == formats.EINVAL
    s.step_commit(3)
    assert s.tokens() == 53
    # lifting the limit: the big step goes through and the old tokens are still there
    s.set_limit(0)
    k, _ = run_step(s, m, 1000, rng)
    assert s.tokens() == 1053 and s.bytes(0, 0) == 1053 * 2 * 68
    stage_k = f32(m, m.call("kv_layer_ptr", 0, 0), (2, s.capacity(0), 64))
    assert stage_k[:, :50].tobytes() == np.frombuffer(before[4], np.float32).reshape(2, 64, 64)[:, :50].tobytes()
    assert stage_k[:, 53:1053].tobytes() == ref.roundtrip(formats.Q8, 32, k[0]).tobytes()


def test_wrong_calls_are_refused(wasm_path):
    m = WasmtimeModule(wasm_path)
    s = KVStore(m)
    for name, args in [
        ("kv_step_begin", (1,)),
        ("kv_step_commit", (1,)),
        ("kv_bytes", (-1, 0)),
        ("kv_configure", (-1, 0, 0, 32)),
        ("kv_reset", ()),
        ("kv_tokens", (0,)),
    ]:
        assert m.call(name, *args) == formats.ESTATE, name
    assert m.call("kv_init", 0, 3, 9, 64, 10) == formats.EINVAL
    s.init(**SMALL)
    codes = {
        ("kv_configure", (5, 0, 0, 32)): formats.EINVAL,  # no such layer
        ("kv_configure", (-1, len(formats.NAMES), 0, 32)): formats.EINVAL,  # no such format
        ("kv_configure", (-1, 2, 2, 48)): formats.EINVAL,  # group size
        ("kv_bytes", (0, 3)): formats.EINVAL,
        ("kv_step_begin", (0,)): formats.EINVAL,
        ("kv_step_commit", (1,)): formats.ESTATE,  # no open step
        ("kv_free", (12345,)): formats.EINVAL,
        ("kv_argmax", (0, 0)): formats.EINVAL,
    }
    for (name, args), code in codes.items():
        assert m.call(name, *args) == code, (name, args)
    run_step(s, m, 4, np.random.default_rng(0))
    with pytest.raises(StoreError) as e:
        s.configure(-1, "q4", "q4")  # holds tokens
    assert e.value.code == formats.ESTATE and "bad state" in str(e.value)
    assert s.bytes(0, 0) == 4 * 2 * 256  # still f32
    s.step_begin(2)
    with pytest.raises(StoreError):
        s.step_commit(3)  # S differs from the open step's
    s.step_commit(2)
    assert s.tokens() == 6


def test_configure_cancels_an_open_step_and_changes_formats(wasm_path):
    s, m = new_store(wasm_path)
    s.step_begin(8)
    s.configure(-1, "q4", "q8", 16)
    with pytest.raises(StoreError):
        s.step_commit(8)
    run_step(s, m, 8, np.random.default_rng(0))
    assert s.bytes(0, 0) == 8 * 2 * 4 * 12 and s.bytes(0, 1) == 8 * 2 * 4 * 18


# ---------------------------------------------------------------------------------------
# Reset and memory reuse
# ---------------------------------------------------------------------------------------


def test_reset_returns_memory_and_refills_without_growing(wasm_path):
    s, m = new_store(wasm_path, MODEL)
    s.configure(-1, "q8", "q4", 32)
    rng = np.random.default_rng(4)
    steps = [300] + [1] * 40 + [200] + [1] * 30
    for S in steps:
        run_step(s, m, S, rng)
    heap = s.heap_bytes()
    assert s.bytes() > 0
    for _ in range(3):
        s.reset()
        assert s.bytes() == 0 and s.tokens() == 0 and s.tokens(0) == 0 and s.staging_bytes() == 0
        for S in steps:
            run_step(s, m, S, rng)
        assert s.heap_bytes() == heap  # the same allocations land in the same reused memory
    assert s.tokens() == sum(steps)


def test_init_again_drops_the_cache(wasm_path):
    s, m = new_store(wasm_path)
    run_step(s, m, 10, np.random.default_rng(5))
    s.init(**SMALL)
    assert s.tokens() == 0 and s.bytes() == 0
    run_step(s, m, 3, np.random.default_rng(5))
    assert s.tokens() == 3


# ---------------------------------------------------------------------------------------
# The allocator itself
# ---------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 200_000)), min_size=1, max_size=60))
def test_allocator_blocks_never_overlap_and_keep_their_bytes(wasm_path, ops):
    m = WasmtimeModule(wasm_path)
    live: dict[int, tuple[int, int]] = {}  # ptr -> (size, fill byte)
    for i, (alloc, size) in enumerate(ops):
        if alloc or not live:
            p = m.call("kv_alloc", size)
            assert p > 0 and p % 16 == 0
            for q, (n, _) in live.items():
                assert p + size <= q or q + n <= p, "overlap"
            m.write(p, bytes([i % 251]) * size)
            live[p] = (size, i % 251)
        else:
            p = sorted(live)[size % len(live)]
            assert m.call("kv_free", p) == 0
            assert m.call("kv_free", p) == formats.EINVAL  # double free is refused
            del live[p]
        for q, (n, b) in live.items():
            assert m.read(q, n) == bytes([b]) * n
    for p in list(live):
        m.call("kv_free", p)
    heap = m.call("kv_heap_bytes")
    p = m.call("kv_alloc", heap - 64)  # everything coalesced back into one block
    assert p > 0 and m.call("kv_heap_bytes") == heap


def test_limit_caps_the_heap(wasm_path):
    m = WasmtimeModule(wasm_path)
    m.call("kv_set_limit", 1 << 20)
    assert m.call("kv_alloc", 2 << 20) == formats.ENOMEM
    assert 0 < m.call("kv_alloc", 512 << 10)
    assert m.call("kv_heap_bytes") <= 1 << 20


def test_zero_copy_views_survive_memory_growth_when_re_taken(wasm_path):
    m = WasmtimeModule(wasm_path)
    p = m.call("kv_alloc", 1024)
    np.frombuffer(m.buffer(p, 1024), np.uint8)[:] = 7  # writable, zero-copy
    assert m.read(p, 1024) == b"\x07" * 1024
    before = m.memory_bytes()
    assert m.call("kv_alloc", 64 << 20) > 0  # grows the memory (which may move it)
    assert m.memory_bytes() > before
    assert np.frombuffer(m.buffer(p, 1024), np.uint8).sum() == 7 * 1024  # a fresh view
    with pytest.raises(IndexError):
        m.buffer(m.memory_bytes() - 10, 100)


# ---------------------------------------------------------------------------------------
# Rotation (quant's `rotate`): rows rotated before their format, staged rotated back
# ---------------------------------------------------------------------------------------


def test_rotated_rows_stage_as_the_reference(wasm_path):
    """Per layer and side: staging == unrotate(dequantize(quantize(rotate(x)))) bit for bit,
    bytes unchanged; kv_configure clears the rotation; refused while a layer holds tokens."""
    rng = np.random.default_rng(11)
    s, m = new_store(wasm_path)
    setups = [(formats.Q4, formats.Q3, 32, True, False), (formats.F32, formats.TURBO3, 16, True, True),
              (formats.Q2, formats.Q4_0, 64, False, True)]
    for layer, (kf, vf, G, rk, rv) in enumerate(setups):
        s.configure(layer, kf, vf, G)
        s.rotate(layer, rk, rv)
    hist_k, hist_v = [[] for _ in setups], [[] for _ in setups]
    for S in (5, 1, 9):
        k, v = run_step(s, m, S, rng)
        for layer in range(len(setups)):
            hist_k[layer].append(k[layer])
            hist_v[layer].append(v[layer])
    n = 15
    for layer, (kf, vf, G, rk, rv) in enumerate(setups):
        for side, (fmt, rot, hist) in enumerate(((kf, rk, hist_k), (vf, rv, hist_v))):
            x = np.concatenate(hist[layer], axis=1)  # (H, n, D)
            stage = f32(m, m.call("kv_layer_ptr", layer, side), (2, s.capacity(layer), 64))[:, :n]
            assert stage.tobytes() == ref.roundtrip(fmt, G, x, rotated=rot).tobytes(), (layer, side)
            if rot and fmt == formats.F32:  # an orthonormal round trip: the values, to f32 rounding
                assert np.abs(stage - x).max() < 1e-5 * np.abs(x).max()
        assert s.bytes(layer, 0) == n * 2 * formats.row_bytes(kf, G, 64)
    with pytest.raises(StoreError) as e:
        s.rotate(0, False, False)  # holds tokens
    assert e.value.code == formats.ESTATE
    s.reset()
    s.configure(-1, formats.Q4, formats.Q4, 32)  # clears the rotation
    k, _ = run_step(s, m, 3, rng)
    stage = f32(m, m.call("kv_layer_ptr", 0, 0), (2, s.capacity(0), 64))[:, :3]
    assert stage.tobytes() == ref.roundtrip(formats.Q4, 32, k[0]).tobytes()


def test_rotation_needs_a_power_of_two_head_dim(wasm_path):
    s, _ = new_store(wasm_path, SMALL | {"head_dim": 48})
    with pytest.raises(StoreError) as e:
        s.rotate(-1, True, True)
    assert e.value.code == formats.EINVAL
    s2, _ = new_store(wasm_path)
    with pytest.raises(StoreError):
        s2.rotate(7, True, True)  # no such layer

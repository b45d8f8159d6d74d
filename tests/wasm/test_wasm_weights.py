"""The weights' expansion (wasm/weights.c, kv_expand): scalar C == SIMD C == NumPy reference
(builder.weights.expand_reference, i.e. gguf.quants.dequantize then fp16), bit for bit, and
the whole model: the page's parts expand into exactly model.onnx's fp16 bytes (sha256).
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder import paths
from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from builder.weights import GGML, build_weights, expand_all, expand_reference, read_recipe
from kvlab.host.wasmtime_module import WasmtimeModule

Q4_1, Q8_0 = GGML["Q4_1"], GGML["Q8_0"]
EINVAL = -2


def expand(m: WasmtimeModule, t: dict, blocks: bytes, out_values: int) -> np.ndarray:
    """Run kv_expand for one tensor into a zeroed buffer of out_values fp16; returns uint16."""
    src = m.call("kv_alloc", len(blocks))
    dst = m.call("kv_alloc", 2 * out_values)
    m.write(src, blocks)
    m.write(dst, bytes(2 * out_values))
    n = m.call("kv_expand", t["type"], src, t["rows"], t["cols"], dst + t["dst"], t["ld"], t["col0"],
               t["rope_d"], int(t["transpose"]))
    assert n == t["rows"] * t["cols"]
    got = np.frombuffer(m.read(dst, 2 * out_values), np.uint16).copy()
    m.call("kv_free", src), m.call("kv_free", dst)
    return got


@pytest.fixture(scope="module")
def modules():
    d = build_wasm()
    return WasmtimeModule(d / SIMD_NAME), WasmtimeModule(d / SCALAR_NAME)


def random_blocks(rng, qtype: int, n_blocks: int, extreme: bool) -> bytes:
    """Blocks with random codes and scales; `extreme` scales include subnormal, huge, inf, -0."""
    size = 20 if qtype == Q4_1 else 34
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    pool = np.array([0.0, -0.0, 6e-8, -6e-8, 1e-5, 3e-3, -0.07, 1.0, 65504.0, -65504.0, 2048.0, np.inf],
                    np.float16)
    for k in range(2 if qtype == Q4_1 else 1):  # d (and m): ordinary values, sometimes extreme ones
        h = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        if extreme:
            pick = rng.random(n_blocks) < 0.5
            h[pick] = rng.choice(pool, pick.sum())
        raw[:, 2 * k:2 * k + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw.tobytes()


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(qtype=st.sampled_from([Q4_1, Q8_0]), heads=st.integers(1, 3), d=st.sampled_from([2, 8, 64]),
       nb=st.integers(1, 4), transpose=st.booleans(), rope=st.booleans(), extra=st.integers(0, 40),
       extreme=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_kernel_equals_reference(modules, qtype, heads, d, nb, transpose, rope, extra, extreme, seed):
    """Any shape, column offset, row stride and permutation; scales from subnormal to inf."""
    rng = np.random.default_rng(seed)
    rows, cols = heads * d, 32 * nb
    col0 = extra // 2
    ld = col0 + (rows if transpose else cols) + extra
    t = {"type": qtype, "rows": rows, "cols": cols, "dst": 2 * (extra % 3), "ld": ld, "col0": col0,
         "rope_d": d if rope else 0, "transpose": transpose}
    n_out = extra % 3 + ld * (cols if transpose else rows) + 5
    blocks = random_blocks(rng, qtype, rows * nb, extreme)
    want = np.zeros(n_out, np.uint16)
    with np.errstate(all="ignore"):  # inf scales make inf/NaN values, on purpose
        expand_reference(blocks, t, want)
    simd, scalar = modules
    got_simd, got_scalar = expand(simd, t, blocks, n_out), expand(scalar, t, blocks, n_out)
    # NaN payloads may differ between NumPy and the kernel; every other value is bit for bit
    nan = (want & 0x7C00) == 0x7C00
    nan &= (want & 0x03FF) != 0
    for got in (got_simd, got_scalar):
        assert np.array_equal(got[~nan], want[~nan])
        assert np.all((got[nan] & 0x7C00) == 0x7C00) and np.all(got[nan] & 0x03FF)
    assert np.array_equal(got_simd, got_scalar)  # the two builds: every bit, NaN too


def test_bad_arguments_are_refused(modules):
    for m in modules:
        src, dst = m.call("kv_alloc", 4096), m.call("kv_alloc", 4096)
        ok = (Q4_1, src, 2, 32, dst, 2, 0, 0, 1)
        assert m.call("kv_expand", *ok) == 64
        for bad in [(2, src, 2, 32, dst, 2, 0, 0, 1),        # Q4_0: not an expandable type
                    (Q4_1, src, 2, 31, dst, 2, 0, 0, 1),     # cols not whole blocks
                    (Q4_1, src, 2, 32, dst, 1, 0, 0, 1),     # ld too small (transposed: rows)
                    (Q4_1, src, 2, 32, dst, 32, 1, 0, 0),    # ld too small for col0 + cols
                    (Q4_1, src, 3, 32, dst, 3, 0, 2, 1),     # rows not whole heads
                    (Q8_0, src, 0, 32, dst, 2, 0, 0, 1)]:    # no rows
            assert m.call("kv_expand", *bad) == EINVAL, bad


@pytest.fixture(scope="module")
def recipe():
    folder = build_weights(paths.active_dir().resolve())
    return folder, read_recipe(folder)


def test_whole_model_expands_to_model_onnx_bytes(modules, recipe):
    """Every part through kv_expand (SIMD and scalar) gives model.onnx's fp16 data: the sha256
    of the expanded bytes equals that of the fp16 initializers' raw data, read from model.onnx
    here (not from the recipe the build wrote)."""
    import onnx
    from onnx import TensorProto

    folder, r = recipe
    model = onnx.load(str(paths.active_dir() / "model.onnx"))
    h = hashlib.sha256()
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            h.update(init.raw_data)
    want = h.hexdigest()
    del model
    assert r["sha256"] == want
    for m in modules:
        kernel_s = 0.0
        out = m.call("kv_alloc", r["bytes"])
        scratch = m.call("kv_alloc", max(p["bytes"] for p in r["parts"]))
        assert out > 0 and scratch > 0
        for p in r["parts"]:
            data = (folder / p["path"].split("/")[-1]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == p["sha256"]
            m.write(scratch, data)
            t0 = time.perf_counter()
            for t in p["tensors"]:
                n = m.call("kv_expand", t["type"], scratch + t["offset"], t["rows"], t["cols"], out + t["dst"],
                           t["ld"], t["col0"], t["rope_d"], int(t["transpose"]))
                assert n == t["rows"] * t["cols"], t["name"]
            kernel_s += time.perf_counter() - t0
        got = hashlib.sha256(m.read(out, r["bytes"])).hexdigest()
        print(f"\nkv_expand ({'simd' if m.call('kv_simd') else 'scalar'}, wasmtime): "
              f"{r['bytes'] / 2**20:.0f} MiB in {kernel_s:.2f} s")
        assert got == want


def test_graph_with_expanded_data_runs_like_model_onnx(recipe, tmp_path):
    """graph.onnx + the expanded weights.fp16 (external data) gives model.onnx's logits."""
    import onnxruntime as ort

    folder, r = recipe
    data = expand_all(r, lambda p: (folder / p["path"].split("/")[-1]).read_bytes())
    (tmp_path / r["data"]).write_bytes(data.tobytes())
    (tmp_path / "graph.onnx").write_bytes((folder / "graph.onnx").read_bytes())
    config = json.loads((paths.active_dir() / "config.json").read_text())
    feeds = {"input_ids": np.array([[1, 504, 3458, 314]], np.int64), "position_ids": np.arange(4)[None]}
    for i in range(config["n_layers"]):
        kv = (1, config["n_kv_heads"], 0, config["head_dim"])
        feeds |= {f"past_key_values.{i}.key": np.zeros(kv, np.float32),
                  f"past_key_values.{i}.value": np.zeros(kv, np.float32),
                  f"past_mask.{i}": np.zeros(kv[:3], np.float32)}
    logits = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
              for p in (tmp_path / "graph.onnx", paths.active_dir() / "model.onnx")]
    assert np.array_equal(logits[0], logits[1])

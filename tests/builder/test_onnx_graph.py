"""The ONNX graph against the NumPy reference (tests/reference/llama_ref.py).

Fast tests build a tiny random 2-layer model with the real head layout (9 query heads,
3 KV heads) and check the whole I/O contract in onnxruntime, with graph optimisations both
off and fully on. The slow test builds the real model and compares it on real weights.
"""

from __future__ import annotations

import functools
import time
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import onnx_graph
from builder.gguf_load import unpermute_rope_rows
from builder.onnx_graph import MASKED, build_graph, io_names, rounded_like_graph
from tests.reference import llama_ref as ref

# ---- error budgets (ORT fp32 vs NumPy float64 on the same fp16-rounded weights) -------------

LOGITS_TOL = 2e-4      # tiny model logits are O(10); seen ~2e-5
KV_TOL = 2e-5          # new keys/values; seen ~2e-6
ATTN_TOL = 2e-5        # attention sums (each in [0, S]); seen ~2e-6
ENTROPY_TOL = 2e-5     # bits; seen ~2e-6
MASKED_INVARIANCE_TOL = 1e-6  # outputs when only masked K/V change: should not move at all
CHUNK_VS_STEPS_TOL = 5e-5     # one S-token chunk vs S one-token steps

# real model (slow test)
REAL_LOGITS_TOL_FP16 = 2e-3   # vs the reference on the same fp16-rounded weights; seen ~3e-5
REAL_LOGITS_TOL_FP32 = 0.1    # vs the reference on the GGUF's own fp32 weights; seen ~2e-2
REAL_STATS_TOL = 1e-3         # attn sums / entropies on real weights
MAX_ONNX_BYTES = 300 * 1000 * 1000

OPT_LEVELS = {"no-opt": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "all-opt": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


# ---- the tiny model ---------------------------------------------------------------------------

CONFIG = ref.random_config(n_layers=2, vocab=300, hidden=96, ffn=160, n_heads=9, n_kv_heads=3, head_dim=16)
WEIGHTS = ref.random_weights(CONFIG, seed=0)
ROUNDED = rounded_like_graph(WEIGHTS)   # what the graph actually stores


@functools.lru_cache(maxsize=None)
def session(level: str = "all-opt") -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[level]
    so.intra_op_num_threads = 1
    model = build_graph(CONFIG, WEIGHTS)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def make_feeds(rng, S: int, past: list[int], start: list[int] | None = None,
               masked_frac: float = 0.0, config: dict = CONFIG) -> dict[str, np.ndarray]:
    """Random new tokens, random past K/V of P_i = past[i] entries, some of them masked.

    Positions: the new tokens sit right after the longest past (or at ``start``).
    """
    f = ref.empty_past(config, past)
    for k, v in f.items():
        if "past_key_values" in k:
            f[k] = rng.standard_normal(v.shape).astype(np.float32)
        else:  # masks: never mask everything of a head, so the past still matters somewhere
            m = rng.random(v.shape) < masked_frac
            f[k] = np.where(m, MASKED, 0.0).astype(np.float32)
    p0 = max(past) if start is None else start
    f["input_ids"] = rng.integers(0, config["vocab"], (1, S)).astype(np.int64)
    f["position_ids"] = np.arange(p0, p0 + S, dtype=np.int64)[None]
    return f


def assert_matches_reference(out: dict, want: dict, n_layers: int = CONFIG["n_layers"]) -> None:
    np.testing.assert_allclose(out["logits"], want["logits"], rtol=0, atol=LOGITS_TOL)
    for i in range(n_layers):
        np.testing.assert_allclose(out[f"new.{i}.key"], want[f"new.{i}.key"], rtol=0, atol=KV_TOL)
        np.testing.assert_allclose(out[f"new.{i}.value"], want[f"new.{i}.value"], rtol=0, atol=KV_TOL)
        np.testing.assert_allclose(out[f"attn.{i}"], want[f"attn.{i}"], rtol=0, atol=ATTN_TOL)
        np.testing.assert_allclose(out[f"entropy.{i}"], want[f"entropy.{i}"], rtol=0, atol=ENTROPY_TOL)


# ---- the contract -----------------------------------------------------------------------------


def test_io_names_types_and_per_layer_dims():
    model = build_graph(CONFIG, WEIGHTS)
    ins, outs = io_names(CONFIG["n_layers"])
    assert [i.name for i in model.graph.input] == ins
    assert [o.name for o in model.graph.output] == outs

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    by = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    K, H, d = CONFIG["n_kv_heads"], CONFIG["n_heads"], CONFIG["head_dim"]
    assert dims(by["input_ids"]) == [1, "seq"] and dims(by["position_ids"]) == [1, "seq"]
    assert dims(by["logits"]) == [1, CONFIG["vocab"]]
    for i in range(CONFIG["n_layers"]):
        assert dims(by[f"past_key_values.{i}.key"]) == [1, K, f"past_{i}", d]
        assert dims(by[f"past_key_values.{i}.value"]) == [1, K, f"past_{i}", d]
        assert dims(by[f"past_mask.{i}"]) == [1, K, f"past_{i}"]
        assert dims(by[f"new.{i}.key"]) == [1, K, "seq", d]
        assert dims(by[f"attn.{i}"]) == [1, H, f"total_{i}"]
        assert dims(by[f"entropy.{i}"]) == [1, H]
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    for v in by.values():
        assert v.type.tensor_type.elem_type == (i64 if v.name.endswith("_ids") else f32), v.name
    assert model.opset_import[0].version == onnx_graph.OPSET
    onnx.checker.check_model(model)


def test_weights_fp16_transposed_and_embedding_stored_once():
    model = build_graph(CONFIG, WEIGHTS)
    V, D = CONFIG["vocab"], CONFIG["hidden"]
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    assert sum(s == (V, D) for s, _ in shapes.values()) == 1
    assert not any(s == (D, V) for s, _ in shapes.values())       # no transposed LM-head copy
    big = [n for n, (s, _) in shapes.items() if len(s) == 2]
    assert big and all(shapes[n][1] == onnx.TensorProto.FLOAT16 for n in big)
    # (in, out): the fused q|k|v projection maps hidden -> (H + 2K) * d
    qkv = shapes["model.layers.0.self_attn.qkv_proj.weight_t"][0]
    assert qkv == (D, (CONFIG["n_heads"] + 2 * CONFIG["n_kv_heads"]) * CONFIG["head_dim"])


# ---- against the reference --------------------------------------------------------------------

CASES = {
    "prefill, no past": dict(S=6, past=[0, 0]),
    "decode, different past per layer": dict(S=1, past=[9, 4]),
    "decode, one layer empty": dict(S=1, past=[0, 7]),
    "chunk with past and masked entries": dict(S=4, past=[10, 6], masked_frac=0.3),
    "decode with masked entries": dict(S=1, past=[12, 12], masked_frac=0.5),
}


@pytest.mark.parametrize("level", OPT_LEVELS)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(level, case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # str hash() is salted per process
    feeds = make_feeds(rng, **CASES[case])
    assert_matches_reference(run(session(level), feeds), ref.forward(CONFIG, ROUNDED, feeds))


@settings(max_examples=30, deadline=None)
@given(S=st.integers(1, 5), p0=st.integers(0, 9), p1=st.integers(0, 9),
       masked_frac=st.sampled_from([0.0, 0.4]), seed=st.integers(0, 2**16))
def test_matches_reference_random_shapes(S, p0, p1, masked_frac, seed):
    feeds = make_feeds(np.random.default_rng(seed), S, [p0, p1], masked_frac=masked_frac)
    assert_matches_reference(run(session(), feeds), ref.forward(CONFIG, ROUNDED, feeds))


def test_masked_entries_do_not_matter():
    rng = np.random.default_rng(7)
    feeds = make_feeds(rng, S=3, past=[8, 5], masked_frac=0.5)
    base = run(session(), feeds)
    changed = dict(feeds)
    for i in range(CONFIG["n_layers"]):
        masked = feeds[f"past_mask.{i}"][..., None] < 0                          # (1, K, P, 1)
        for kind in ("key", "value"):
            name = f"past_key_values.{i}.{kind}"
            junk = 50.0 * rng.standard_normal(feeds[name].shape).astype(np.float32)
            changed[name] = np.where(masked, junk, feeds[name])
    after = run(session(), changed)
    for name in base:
        np.testing.assert_allclose(after[name], base[name], rtol=0, atol=MASKED_INVARIANCE_TOL, err_msg=name)
    # and the masked slots get no attention, for all G query heads of their KV head
    G = CONFIG["n_heads"] // CONFIG["n_kv_heads"]
    for i in range(CONFIG["n_layers"]):
        P = feeds[f"past_mask.{i}"].shape[-1]
        per_head_mask = np.repeat(feeds[f"past_mask.{i}"], G, axis=1)           # (1, H, P)
        assert np.all(base[f"attn.{i}"][..., :P][per_head_mask < 0] < 1e-12)


def test_attention_sums_and_entropy_range():
    rng = np.random.default_rng(3)
    S, past = 5, [6, 2]
    out = run(session(), make_feeds(rng, S, past, masked_frac=0.2))
    for i, P in enumerate(past):
        attn = out[f"attn.{i}"]                                                  # (1, H, P + S)
        assert attn.shape == (1, CONFIG["n_heads"], P + S)
        np.testing.assert_allclose(attn.sum(-1), S, atol=ATTN_TOL)              # each query sums to 1
        # causal inside the chunk: new token j gets attention from queries j..S-1 only, <= S - j
        assert np.all(attn[..., P:] <= np.arange(S, 0, -1) + ATTN_TOL)
        ent = out[f"entropy.{i}"]
        assert ent.shape == (1, CONFIG["n_heads"])
        assert np.all(ent >= -ENTROPY_TOL) and np.all(ent <= np.log2(P + S) + ENTROPY_TOL)


def test_chunk_equals_one_token_steps():
    """Prefill of S tokens == S decode steps feeding back new K/V (causality, positions, cache)."""
    rng = np.random.default_rng(11)
    S = 5
    chunk = make_feeds(rng, S, [0, 0])
    whole = run(session(), chunk)
    step = ref.empty_past(CONFIG, 0)
    for j in range(S):
        step |= {"input_ids": chunk["input_ids"][:, j:j + 1], "position_ids": chunk["position_ids"][:, j:j + 1]}
        out = run(session(), step)
        for i in range(CONFIG["n_layers"]):
            for kind in ("key", "value"):
                got = out[f"new.{i}.{kind}"]
                np.testing.assert_allclose(got[:, :, 0], whole[f"new.{i}.{kind}"][:, :, j], atol=CHUNK_VS_STEPS_TOL)
                name = f"past_key_values.{i}.{kind}"
                step[name] = np.concatenate([step[name], got], axis=2)
            step[f"past_mask.{i}"] = np.zeros(step[f"past_key_values.{i}.key"].shape[:3], np.float32)
    np.testing.assert_allclose(out["logits"], whole["logits"], atol=CHUNK_VS_STEPS_TOL)


def test_positions_come_only_from_position_ids():
    """RoPE is relative: shifting every position (no past) keeps logits, but moves the keys."""
    rng = np.random.default_rng(5)
    a = make_feeds(rng, 4, [0, 0])
    b = dict(a, position_ids=a["position_ids"] + 37)
    out_a, out_b = run(session(), a), run(session(), b)
    np.testing.assert_allclose(out_a["logits"], out_b["logits"], atol=CHUNK_VS_STEPS_TOL)
    assert np.abs(out_a["new.0.key"] - out_b["new.0.key"]).max() > 0.1
    np.testing.assert_allclose(out_a["new.0.value"], out_b["new.0.value"], atol=KV_TOL)  # V has no RoPE


# ---- the loader's RoPE row fix ------------------------------------------------------------------


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    n_head, d, cols = 3, 8, 5
    hf = rng.standard_normal((n_head * d, cols))
    # what llama.cpp's convert_hf_to_gguf.py does to q/k rows
    gguf = hf.reshape(n_head, 2, d // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    np.testing.assert_array_equal(unpermute_rope_rows(gguf, n_head), hf)


def test_wrong_gguf_hash_is_a_clear_error(tmp_path, monkeypatch):
    from builder import model, paths

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not the model")
    monkeypatch.setattr(paths, "gguf_path", lambda: fake)
    with pytest.raises(SystemExit, match="error: .*sha256"):
        model.build_model()


# ---- the real model (needs the build) ---------------------------------------------------------


def _token_ids(words: list[str]) -> np.ndarray:
    """Token ids by exact vocabulary lookup (no tokenizer needed for these plain words)."""
    import gguf

    from builder import paths

    tokens = gguf.GGUFReader(str(paths.gguf_path())).fields["tokenizer.ggml.tokens"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    return np.array([[vocab[w] for w in words]], dtype=np.int64), tokens


@pytest.mark.slow
def test_real_model_against_reference():
    from builder import paths
    from builder.gguf_load import load_gguf
    from builder.model import build_model

    out_dir = build_model()
    t = time.perf_counter()
    assert build_model() == out_dir and time.perf_counter() - t < 5.0          # cached: no rebuild
    path = out_dir / "model.onnx"
    assert path.stat().st_size <= MAX_ONNX_BYTES

    model = onnx.load(str(path))
    config, weights = load_gguf(paths.gguf_path())
    V, D = config["vocab"], config["hidden"]
    shapes = [tuple(t.dims) for t in model.graph.initializer]
    assert shapes.count((V, D)) == 1 and shapes.count((D, V)) == 0             # tied embedding once
    del model

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rounded = rounded_like_graph(weights)

    # prefill: a prompt whose continuation any working SmolLM2 knows
    ids, tokens = _token_ids(["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"])
    S = ids.shape[1]
    feeds = ref.empty_past(config, 0) | {"input_ids": ids, "position_ids": np.arange(S)[None]}
    got = run(sess, feeds)
    want16, want32 = ref.forward(config, rounded, feeds), ref.forward(config, weights, feeds)
    d16 = np.abs(got["logits"] - want16["logits"]).max()
    d32 = np.abs(got["logits"] - want32["logits"]).max()
    print(f"\nprefill: max |dlogit| vs fp16-rounded ref {d16:.2e}, vs fp32 ref {d32:.2e}")
    assert d16 <= REAL_LOGITS_TOL_FP16 and d32 <= REAL_LOGITS_TOL_FP32
    assert tokens[int(got["logits"].argmax())] == "ĠParis"                       # the q/k un-permute works
    for i in range(config["n_layers"]):
        np.testing.assert_allclose(got[f"attn.{i}"], want16[f"attn.{i}"], atol=REAL_STATS_TOL)
        np.testing.assert_allclose(got[f"entropy.{i}"], want16[f"entropy.{i}"], atol=REAL_STATS_TOL)

    # one decode step on the cache the graph returned (the reference gets the same past)
    step = {"input_ids": np.array([[int(got["logits"].argmax())]]), "position_ids": np.array([[S]])}
    for i in range(config["n_layers"]):
        step[f"past_key_values.{i}.key"] = got[f"new.{i}.key"]
        step[f"past_key_values.{i}.value"] = got[f"new.{i}.value"]
        step[f"past_mask.{i}"] = np.zeros((1, config["n_kv_heads"], S), np.float32)
    got2 = run(sess, step)
    want2 = ref.forward(config, rounded, step)
    d16 = np.abs(got2["logits"] - want2["logits"]).max()
    print(f"decode: max |dlogit| vs fp16-rounded ref {d16:.2e}")
    assert d16 <= REAL_LOGITS_TOL_FP16
    assert int(got2["logits"].argmax()) == int(want2["logits"].argmax())
    for i in range(config["n_layers"]):
        np.testing.assert_allclose(got2[f"attn.{i}"], want2[f"attn.{i}"], atol=REAL_STATS_TOL)
        np.testing.assert_allclose(got2[f"entropy.{i}"], want2[f"entropy.{i}"], atol=REAL_STATS_TOL)

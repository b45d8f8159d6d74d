"""A Llama decoder as a hand-built ONNX graph whose KV cache lives outside the graph.

The graph is written node by node with ``onnx.helper`` (opset 17, standard ops only), so it
needs no PyTorch and every op is one that onnxruntime-web's wasm backend runs.

CONTRACT (batch is always 1; S = new tokens in this call, P_i = past entries of layer i,
T_i = P_i + S; H = 9 query heads, K = 3 KV heads, d = 64 for SmolLM2-135M)

  inputs
    input_ids                   int64   (1, S)            the new tokens
    position_ids                int64   (1, S)            their positions; the only source of
                                                          RoPE angles (gaps are allowed)
    past_key_values.{i}.key     float32 (1, K, P_i, d)    post-RoPE keys, i = 0..n_layers-1
    past_key_values.{i}.value   float32 (1, K, P_i, d)
    past_mask.{i}               float32 (1, K, P_i)       additive, per KV head: 0 = attend,
                                                          MASKED (-1e9) = ignore; the G = H/K
                                                          query heads of KV head j all use row j
  outputs
    logits                      float32 (1, vocab)        for the LAST new token only
    new.{i}.key                 float32 (1, K, S, d)      the S new tokens' keys (post-RoPE)
    new.{i}.value               float32 (1, K, S, d)      ... and values; the old cache is
                                                          never copied out
    attn.{i}                    float32 (1, H, T_i)       attention probability summed over the
                                                          S new queries, per query head, over
                                                          [past slots..., new tokens...]
                                                          (so it sums to S per head)
    entropy.{i}                 float32 (1, H)            Rényi-2 entropy in bits,
                                                          -log2 sum_t p_t^2, mean over the S
                                                          new queries, per query head

  Every layer has its own dynamic dim name (``past_{i}``, ``total_{i}``): the store may keep a
  different number of entries per layer (PyramidKV, evictions); P_i = 0 is allowed.
  Attention: the new tokens see all past entries (plus past_mask) and each other causally by
  their order in the chunk (new token j sees new tokens 0..j). GQA as transformers'
  ``repeat_kv``: query head h uses KV head h // G. Scale 1/sqrt(d). RoPE is rotate-half
  (transformers' convention), theta from the config.

Storage: weight matrices are fp16 initializers, each behind a ``Cast`` to fp32 (onnxruntime
folds the casts at load, so compute is fp32); RMSNorm weights are fp32 (tiny). Linear weights
are stored pre-transposed, (in, out), so ``MatMul`` needs no ``Transpose``; q/k/v and gate/up
are concatenated along "out" so each is one MatMul. The tied embedding is stored ONCE
(vocab, hidden): ``Gather`` reads it for the input and ``Gemm(transB=1)`` uses it as the LM
head on the last position only.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MASKED = -1e9  # the additive "ignore" value, for past_mask and the in-chunk causal mask
INT64_MAX = np.iinfo(np.int64).max


# ---- names of the graph's inputs and outputs ---------------------------------------------


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def past_mask(i: int) -> str:
    return f"past_mask.{i}"


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) in graph order."""
    ins = ["input_ids", "position_ids"]
    for i in range(n_layers):
        ins += [past_key(i), past_value(i), past_mask(i)]
    outs = ["logits"]
    for i in range(n_layers):
        outs += [f"new.{i}.key", f"new.{i}.value", f"attn.{i}", f"entropy.{i}"]
    return ins, outs


# ---- the weights as the graph stores them ----------------------------------------------------


def stored_weights(config: dict, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The initializers, by name: fused, transposed to (in, out), matrices in fp16.

    weights: transformers naming and orientation, see ``builder.gguf_load``.
    """
    out = {"model.embed_tokens.weight": weights["model.embed_tokens.weight"].astype(np.float16),
           "model.norm.weight": weights["model.norm.weight"].astype(np.float32)}
    for i in range(config["n_layers"]):
        L = f"model.layers.{i}."
        a, m = L + "self_attn.", L + "mlp."
        qkv = np.concatenate([weights[a + "q_proj.weight"], weights[a + "k_proj.weight"],
                              weights[a + "v_proj.weight"]], axis=0)          # (H*d + 2*K*d, hidden)
        gate_up = np.concatenate([weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"]],
                                 axis=0)                                     # (2*ffn, hidden)
        out |= {
            L + "input_layernorm.weight": weights[L + "input_layernorm.weight"].astype(np.float32),
            L + "post_attention_layernorm.weight":
                weights[L + "post_attention_layernorm.weight"].astype(np.float32),
            a + "qkv_proj.weight_t": _fp16_t(qkv),                           # (hidden, H*d + 2*K*d)
            a + "o_proj.weight_t": _fp16_t(weights[a + "o_proj.weight"]),    # (H*d, hidden)
            m + "gate_up_proj.weight_t": _fp16_t(gate_up),                   # (hidden, 2*ffn)
            m + "down_proj.weight_t": _fp16_t(weights[m + "down_proj.weight"]),  # (ffn, hidden)
        }
    return out


def _fp16_t(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T.astype(np.float16))


def rounded_like_graph(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights (transformers layout, float32) rounded as the graph stores them.

    Lets a float reference see exactly the graph's weights, so tests can separate fp16
    storage error from real bugs.
    """
    return {k: (v if v.ndim == 1 else v.astype(np.float16).astype(np.float32)) for k, v in weights.items()}


# ---- a tiny graph-writing helper -------------------------------------------------------------


class _Graph:
    """Collects nodes and initializers; ``op`` returns the output name(s)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, *inputs: str, out: str | list[str] | None = None, n_out: int = 1,
           **attrs) -> str | list[str]:
        if out is None:
            outs = [self._name(op_type) for _ in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name("n_" + op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype=np.int64, name: str | None = None) -> str:
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def tensor(self, name: str, array: np.ndarray) -> str:
        """An initializer; fp16 ones get a Cast to fp32 and the cast's output is returned."""
        self.inits.append(numpy_helper.from_array(array, name))
        if array.dtype == np.float16:
            return self.op("Cast", name, out=name + ".f32", to=TensorProto.FLOAT)
        return name


# ---- building blocks -------------------------------------------------------------------------


def _rms_norm(g: _Graph, x: str, w: str, eps: str, two: str) -> str:
    """x * w / sqrt(mean(x^2) + eps) over the last axis; the exact op pattern onnxruntime
    fuses into its SimplifiedLayerNormalization kernel."""
    ms = g.op("ReduceMean", g.op("Pow", x, two), axes=[-1], keepdims=1)
    return g.op("Mul", g.op("Div", x, g.op("Sqrt", g.op("Add", ms, eps))), w)


def _rope(g: _Graph, x: str, cos: str, sin_signed: str, half: str) -> str:
    """Rotate-half RoPE on x (1, S, heads, d): x*cos + rotate_half(x)*sin.

    rotate_half(x) = [-x2, x1]; with sin_signed = [-sin, sin] precomputed once this is
    [x2, x1] * sin_signed, which saves a Neg per layer.
    """
    x1, x2 = g.op("Split", x, half, axis=3, n_out=2)
    swapped = g.op("Concat", x2, x1, axis=3)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", swapped, sin_signed))


# ---- the graph -------------------------------------------------------------------------------


def build_graph(config: dict, weights: dict[str, np.ndarray], name: str = "kvlab-llama") -> onnx.ModelProto:
    """Build the ONNX model (see the module doc for the I/O contract).

    config: the dict from ``builder.gguf_load.read_config`` (any sizes: tests use tiny ones).
    weights: transformers naming and (out, in) orientation, float32.
    """
    nL, D, F = config["n_layers"], config["hidden"], config["ffn"]
    H, K, d = config["n_heads"], config["n_kv_heads"], config["head_dim"]
    V, G = config["vocab"], config["n_heads"] // config["n_kv_heads"]
    assert H % K == 0 and d % 2 == 0
    W = stored_weights(config, weights)
    g = _Graph()

    # ---- shared constants
    eps = g.const(config["rms_eps"], np.float32, "rms_eps")
    two = g.const(2.0, np.float32, "two")
    half = g.const([d // 2, d // 2], name="rope_halves")
    scale = g.const(1.0 / math.sqrt(d), np.float32, "attn_scale")
    neg_inv_ln2 = g.const(-1.0 / math.log(2.0), np.float32, "neg_inv_ln2")
    inv_freq = g.const(1.0 / (config["rope_theta"] ** (np.arange(0, d, 2, dtype=np.int64) / d)),
                       np.float32, "rope_inv_freq")                               # (d/2,)
    zero1, one1, ax2, ax3 = (g.const([v]) for v in (0, 1, 2, 3))
    big = g.const([INT64_MAX])
    q_shape = g.const([1, K, -1, d])           # (1, H, S, d) -> (1, K, G*S, d): GQA without copies
    o_shape = g.const([1, H, -1, d])           # and back
    p_shape = g.const([1, H, -1, 0])           # (1, K, G*S, T) -> (1, H, S, T); 0 = keep T
    x_shape = g.const([1, -1, H * d])
    qkv_shape = g.const([1, -1, H + 2 * K, d])
    qkv_split = g.const([H + K, K])            # [q and k (both get RoPE) | v]
    qk_split = g.const([H, K])
    ffn_split = g.const([F, F])
    masked = g.const(MASKED, np.float32)
    zero_f = g.const(0.0, np.float32)

    # ---- S, the causal mask of the chunk, RoPE tables: computed once, used by every layer
    S = g.op("Gather", g.op("Shape", "input_ids"), g.const(1), axis=0)          # scalar
    neg_S = g.op("Neg", g.op("Unsqueeze", S, zero1))                             # (1,) = [-S]
    # rows of the (1, K, G*S, .) score layout are r*S + s (r = head within the group, s = query)
    rows = g.op("Mod", g.op("Range", g.const(0), g.op("Mul", S, g.const(G)), g.const(1)), S)
    cols = g.op("Range", g.const(0), S, g.const(1))
    future = g.op("Greater", g.op("Unsqueeze", cols, zero1), g.op("Unsqueeze", rows, one1))  # (G*S, S)
    causal = g.op("Where", future, masked, zero_f)                               # (G*S, S)

    pos = g.op("Unsqueeze", g.op("Cast", "position_ids", to=TensorProto.FLOAT), ax2)  # (1, S, 1)
    freqs = g.op("Mul", pos, inv_freq)                                           # (1, S, d/2)
    cos_h, sin_h = g.op("Cos", freqs), g.op("Sin", freqs)
    cos = g.op("Unsqueeze", g.op("Concat", cos_h, cos_h, axis=-1), ax2)          # (1, S, 1, d)
    sin_signed = g.op("Unsqueeze", g.op("Concat", g.op("Neg", sin_h), sin_h, axis=-1), ax2)

    # ---- embedding: gather the S rows in fp16, then cast only those
    embed16 = "model.embed_tokens.weight"
    g.inits.append(numpy_helper.from_array(W[embed16], embed16))                 # (V, D) fp16, once
    x = g.op("Cast", g.op("Gather", embed16, "input_ids", axis=0), to=TensorProto.FLOAT)  # (1, S, D)

    # ---- the layers
    for i in range(nL):
        L = f"model.layers.{i}."
        a, m = L + "self_attn.", L + "mlp."

        h = _rms_norm(g, x, g.tensor(L + "input_layernorm.weight", W[L + "input_layernorm.weight"]), eps, two)
        qkv = g.op("Reshape", g.op("MatMul", h, g.tensor(a + "qkv_proj.weight_t", W[a + "qkv_proj.weight_t"])),
                   qkv_shape)                                                    # (1, S, H+2K, d)
        qk, v = g.op("Split", qkv, qkv_split, axis=2, n_out=2)
        q, k = g.op("Split", _rope(g, qk, cos, sin_signed, half), qk_split, axis=2, n_out=2)

        # new K/V leave the graph as outputs; they are also the chunk's own keys/values
        k_new = g.op("Transpose", k, perm=[0, 2, 1, 3], out=f"new.{i}.key")       # (1, K, S, d)
        v_new = g.op("Transpose", v, perm=[0, 2, 1, 3], out=f"new.{i}.value")     # (1, K, S, d)
        q = g.op("Reshape", g.op("Transpose", q, perm=[0, 2, 1, 3]), q_shape)    # (1, K, G*S, d)
        q = g.op("Mul", q, scale)

        # scores against the past and against the chunk, kept apart so the past K/V are
        # never concatenated (copied); only the small score rows are. Transpose+MatMul is
        # fused by onnxruntime into one FusedMatMul(transB, alpha=scale), which reads K in
        # place. (Measured alternatives: K @ q^T, and p @ V as G*S one-row batches, were ~25%
        # faster for these two ops in native onnxruntime but not in onnxruntime-web's wasm
        # backend, where copying the past K/V into the wasm heap dominates anyway.)
        s_past = g.op("MatMul", q, g.op("Transpose", past_key(i), perm=[0, 1, 3, 2]))  # (1, K, G*S, P)
        s_past = g.op("Add", s_past, g.op("Unsqueeze", past_mask(i), ax2))      # mask (1, K, 1, P)
        s_new = g.op("MatMul", q, g.op("Transpose", k_new, perm=[0, 1, 3, 2]))  # (1, K, G*S, S)
        s_new = g.op("Add", s_new, causal)
        p = g.op("Softmax", g.op("Concat", s_past, s_new, axis=3), axis=-1)      # (1, K, G*S, T)

        # statistics per query head
        p_heads = g.op("Reshape", p, p_shape)                                    # (1, H, S, T)
        g.op("ReduceSum", p_heads, ax2, keepdims=0, out=f"attn.{i}")             # (1, H, T)
        sumsq = g.op("ReduceSumSquare", p_heads, axes=[3], keepdims=0)           # (1, H, S)
        g.op("ReduceMean", g.op("Mul", g.op("Log", sumsq), neg_inv_ln2), axes=[2], keepdims=0,
             out=f"entropy.{i}")                                                 # (1, H)

        # values: p[:, :, :, :P] @ past_v + p[:, :, :, P:] @ v_new  (again no K/V concat)
        p_past = g.op("Slice", p, zero1, neg_S, ax3)                             # (1, K, G*S, P)
        p_new = g.op("Slice", p, neg_S, big, ax3)                                # (1, K, G*S, S)
        o = g.op("Add", g.op("MatMul", p_past, past_value(i)), g.op("MatMul", p_new, v_new))  # (1, K, G*S, d)
        o = g.op("Transpose", g.op("Reshape", o, o_shape), perm=[0, 2, 1, 3])    # (1, S, H, d)
        o = g.op("MatMul", g.op("Reshape", o, x_shape), g.tensor(a + "o_proj.weight_t", W[a + "o_proj.weight_t"]))
        x = g.op("Add", x, o)                                                    # (1, S, D)

        # SiLU-gated MLP
        h = _rms_norm(g, x, g.tensor(L + "post_attention_layernorm.weight",
                                     W[L + "post_attention_layernorm.weight"]), eps, two)
        gate, up = g.op("Split", g.op("MatMul", h, g.tensor(m + "gate_up_proj.weight_t",
                                                            W[m + "gate_up_proj.weight_t"])),
                        ffn_split, axis=2, n_out=2)                              # (1, S, F) each
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        x = g.op("Add", x, g.op("MatMul", act, g.tensor(m + "down_proj.weight_t", W[m + "down_proj.weight_t"])))

    # ---- LM head on the last position only, with the tied embedding (no transposed copy)
    last = g.op("Gather", x, g.const(-1), axis=1)                                # (1, D)
    last = _rms_norm(g, last, g.tensor("model.norm.weight", W["model.norm.weight"]), eps, two)
    embed32 = g.op("Cast", embed16, out=embed16 + ".f32", to=TensorProto.FLOAT)  # (V, D)
    g.op("Gemm", last, embed32, transB=1, out="logits")                          # (1, V)

    # ---- inputs / outputs
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, [1, "seq"]),
              helper.make_tensor_value_info("position_ids", i64, [1, "seq"])]
    for i in range(nL):
        inputs += [helper.make_tensor_value_info(past_key(i), f32, [1, K, f"past_{i}", d]),
                   helper.make_tensor_value_info(past_value(i), f32, [1, K, f"past_{i}", d]),
                   helper.make_tensor_value_info(past_mask(i), f32, [1, K, f"past_{i}"])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, V])]
    for i in range(nL):
        outputs += [helper.make_tensor_value_info(f"new.{i}.key", f32, [1, K, "seq", d]),
                    helper.make_tensor_value_info(f"new.{i}.value", f32, [1, K, "seq", d]),
                    helper.make_tensor_value_info(f"attn.{i}", f32, [1, H, f"total_{i}"]),
                    helper.make_tensor_value_info(f"entropy.{i}", f32, [1, H])]

    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kvlab-builder")
    model.ir_version = 8  # opset 17's IR; also what older onnxruntime-web builds accept
    return model

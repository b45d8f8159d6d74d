"""Read the SmolLM2 GGUF into float32 NumPy weights (transformers naming) and a config dict.

No PyTorch: ``gguf.GGUFReader`` maps the file, ``gguf.quants.dequantize`` expands the
Q4_1 / Q8_0 blocks. The result is what ``builder.onnx_graph.build_graph`` and the NumPy
reference (``tests/reference/llama_ref.py``) both take:

    config  = {"n_layers": 30, "hidden": 576, "ffn": 1536, "n_heads": 9, "n_kv_heads": 3,
               "head_dim": 64, "vocab": 49152, "context": 8192, "rope_theta": 100000.0,
               "rms_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, ...}
    weights = {"model.embed_tokens.weight": (vocab, hidden),            # tied: also the LM head
               "model.layers.{i}.input_layernorm.weight": (hidden,),
               "model.layers.{i}.self_attn.q_proj.weight": (n_heads*head_dim, hidden),
               "model.layers.{i}.self_attn.k_proj.weight": (n_kv_heads*head_dim, hidden),
               "model.layers.{i}.self_attn.v_proj.weight": (n_kv_heads*head_dim, hidden),
               "model.layers.{i}.self_attn.o_proj.weight": (hidden, n_heads*head_dim),
               "model.layers.{i}.post_attention_layernorm.weight": (hidden,),
               "model.layers.{i}.mlp.gate_proj.weight": (ffn, hidden),
               "model.layers.{i}.mlp.up_proj.weight": (ffn, hidden),
               "model.layers.{i}.mlp.down_proj.weight": (hidden, ffn),
               "model.norm.weight": (hidden,)}

Linear weights are (out, in) like ``torch.nn.Linear``: y = x @ W.T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# ---- names: GGUF tensor -> transformers parameter ------------------------------------------

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":  # absent in SmolLM2 (tied embeddings); kept for clarity
        return "lm_head.weight"
    blk, i, part, suffix = gguf_name.split(".")
    assert blk == "blk", gguf_name
    return f"model.layers.{i}.{_LAYER_NAMES[part]}.{suffix}"


# ---- the RoPE row permutation ---------------------------------------------------------------


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a q/k projection, per head.

    llama.cpp's converter reorders each head's output rows from transformers' "first half /
    second half" layout (rotate-half RoPE) to interleaved pairs (its own RoPE):
    ``w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2)``. This is the inverse.
    w: (n_head * head_dim, cols), rows = outputs (NumPy orientation, as dequantize returns).
    """
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


# ---- config -----------------------------------------------------------------------------------


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_config(reader) -> dict:
    """The model's hyper-parameters from the GGUF's ``llama.*`` / ``tokenizer.*`` fields."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"error: expected a llama GGUF, got architecture {arch!r}")
    p = "llama."
    n_heads = int(_field(reader, p + "attention.head_count"))
    hidden = int(_field(reader, p + "embedding_length"))
    head_dim = int(_field(reader, p + "rope.dimension_count", hidden // n_heads))
    vocab = _field(reader, p + "vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return {
        "architecture": "llama",
        "name": str(_field(reader, "general.name", "")),
        "n_layers": int(_field(reader, p + "block_count")),
        "hidden": hidden,
        "ffn": int(_field(reader, p + "feed_forward_length")),
        "n_heads": n_heads,
        "n_kv_heads": int(_field(reader, p + "attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "vocab": int(vocab),
        "context": int(_field(reader, p + "context_length")),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        # stored as float32 in the GGUF (9.9999997e-06): round to the intended 1e-5 decimal
        "rms_eps": float(f"{float(_field(reader, p + 'attention.layer_norm_rms_epsilon')):.6g}"),
        "tied_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", -1)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", -1)),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", -1)),
    }


# ---- weights ----------------------------------------------------------------------------------


def load_gguf(path: Path | str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read config and all weights as float32 (dequantized, q/k rows un-permuted).

    Takes ~5 s and ~0.6 GB for SmolLM2-135M. Returns (config, weights); see the module doc.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    config = read_config(reader)
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        # dequantize returns NumPy order = GGUF shape reversed, i.e. (out, in) for a linear
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        name = hf_name(t.name)
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, config["n_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, config["n_kv_heads"])
        weights[name] = w
    _check_shapes(config, weights)
    return config, weights


def _check_shapes(c: dict, w: dict[str, np.ndarray]) -> None:
    """Fail loudly if the file is not the layout the graph builder expects."""
    D, F, dh = c["hidden"], c["ffn"], c["head_dim"]
    q, kv = c["n_heads"] * dh, c["n_kv_heads"] * dh
    want = {"model.embed_tokens.weight": (c["vocab"], D), "model.norm.weight": (D,)}
    for i in range(c["n_layers"]):
        L = f"model.layers.{i}."
        want |= {
            L + "input_layernorm.weight": (D,),
            L + "self_attn.q_proj.weight": (q, D),
            L + "self_attn.k_proj.weight": (kv, D),
            L + "self_attn.v_proj.weight": (kv, D),
            L + "self_attn.o_proj.weight": (D, q),
            L + "post_attention_layernorm.weight": (D,),
            L + "mlp.gate_proj.weight": (F, D),
            L + "mlp.up_proj.weight": (F, D),
            L + "mlp.down_proj.weight": (D, F),
        }
    for name, shape in want.items():
        got = w.get(name)
        if got is None or got.shape != shape:
            raise SystemExit(f"error: GGUF tensor {name}: expected {shape}, got {None if got is None else got.shape}")

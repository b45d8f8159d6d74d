"""A plain NumPy Llama forward pass with an explicit KV cache: the reference for the ONNX graph.

Written independently of ``builder/onnx_graph.py`` and as literally as possible: concatenate
the cache, ``repeat_kv`` the keys/values to every query head, one full (S, T) mask, a softmax.
It takes and returns the graph's contract (same names, same shapes with the batch dim 1), so
a test feeds both the same dict. Computes in float64 by default.

Based on the Llama architecture as implemented by transformers (``LlamaForCausalLM``):
RMSNorm, rotate-half RoPE, grouped-query attention, SiLU-gated MLP, tied embeddings.
"""

from __future__ import annotations

import numpy as np

MASKED = -1e9


# ---- pieces ---------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (..., D); normalise by the root mean square over D, then scale by w (D,)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_tables(positions: np.ndarray, head_dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: (S, head_dim) for rotate-half RoPE; positions: (S,) ints."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (d/2,)
    ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]                      # (S, d/2)
    ang = np.concatenate([ang, ang], axis=-1)                                            # (S, d)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: (heads, S, d); cos/sin: (S, d)."""
    return x * cos + rotate_half(x) * sin


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- the forward pass -------------------------------------------------------------------------


def forward(config: dict, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
            dtype=np.float64) -> dict[str, np.ndarray]:
    """Run the S new tokens of ``feeds`` through the model; return the graph's outputs.

    feeds: ``input_ids`` (1, S), ``position_ids`` (1, S), ``past_key_values.{i}.key/.value``
    (1, K, P_i, d), ``past_mask.{i}`` (1, K, P_i). weights: transformers naming, (out, in).
    Returns ``logits`` (1, V), ``new.{i}.key/.value`` (1, K, S, d), ``attn.{i}`` (1, H, P_i+S),
    ``entropy.{i}`` (1, H).
    """
    c = config
    H, K, d, eps = c["n_heads"], c["n_kv_heads"], c["head_dim"], c["rms_eps"]
    G = H // K

    def w(name):
        return weights[name].astype(dtype)

    ids = feeds["input_ids"][0]                                       # (S,)
    S = ids.shape[0]
    cos, sin = rope_tables(feeds["position_ids"][0], d, c["rope_theta"], dtype)
    causal = np.where(np.arange(S)[None, :] > np.arange(S)[:, None], MASKED, 0.0)  # (S, S)
    out: dict[str, np.ndarray] = {}

    x = w("model.embed_tokens.weight")[ids]                           # (S, D)
    for i in range(c["n_layers"]):
        L = f"model.layers.{i}."
        h = rms_norm(x, w(L + "input_layernorm.weight"), eps)
        q = (h @ w(L + "self_attn.q_proj.weight").T).reshape(S, H, d).transpose(1, 0, 2)  # (H, S, d)
        k = (h @ w(L + "self_attn.k_proj.weight").T).reshape(S, K, d).transpose(1, 0, 2)  # (K, S, d)
        v = (h @ w(L + "self_attn.v_proj.weight").T).reshape(S, K, d).transpose(1, 0, 2)  # (K, S, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out[f"new.{i}.key"], out[f"new.{i}.value"] = k[None], v[None]

        k_all = np.concatenate([feeds[f"past_key_values.{i}.key"][0].astype(dtype), k], axis=1)    # (K, T, d)
        v_all = np.concatenate([feeds[f"past_key_values.{i}.value"][0].astype(dtype), v], axis=1)  # (K, T, d)
        pm = feeds[f"past_mask.{i}"][0].astype(dtype)                                             # (K, P)
        # repeat_kv: query head h reads KV head h // G
        k_rep, v_rep, pm_rep = (np.repeat(t, G, axis=0) for t in (k_all, v_all, pm))  # (H, T, d) / (H, P)
        mask = np.concatenate([np.broadcast_to(pm_rep[:, None, :], (H, S, pm.shape[1])),
                               np.broadcast_to(causal, (H, S, S))], axis=-1)          # (H, S, T)
        p = softmax(q @ k_rep.transpose(0, 2, 1) / np.sqrt(d) + mask)                  # (H, S, T)
        out[f"attn.{i}"] = p.sum(axis=1)[None]                                          # (1, H, T)
        out[f"entropy.{i}"] = (-np.log2((p * p).sum(axis=-1))).mean(axis=-1)[None]      # (1, H)

        o = (p @ v_rep).transpose(1, 0, 2).reshape(S, H * d)
        x = x + o @ w(L + "self_attn.o_proj.weight").T
        h = rms_norm(x, w(L + "post_attention_layernorm.weight"), eps)
        gate, up = h @ w(L + "mlp.gate_proj.weight").T, h @ w(L + "mlp.up_proj.weight").T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w(L + "mlp.down_proj.weight").T

    last = rms_norm(x[-1], w("model.norm.weight"), eps)                # (D,)
    out["logits"] = (w("model.embed_tokens.weight") @ last)[None]     # (1, V), tied embedding
    return out


# ---- helpers for tests ----------------------------------------------------------------------


def random_config(n_layers: int = 2, vocab: int = 300, hidden: int = 96, ffn: int = 160,
                  n_heads: int = 9, n_kv_heads: int = 3, head_dim: int = 16) -> dict:
    """A tiny Llama config with SmolLM2's head layout ratios (GQA 9/3 by default)."""
    return {"architecture": "llama", "name": "tiny-random", "n_layers": n_layers, "hidden": hidden,
            "ffn": ffn, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "head_dim": head_dim,
            "vocab": vocab, "context": 4096, "rope_theta": 10000.0, "rms_eps": 1e-5,
            "tied_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def random_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights of the config's shapes, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    c = config
    D, F, d = c["hidden"], c["ffn"], c["head_dim"]
    Hd, Kd = c["n_heads"] * d, c["n_kv_heads"] * d

    def lin(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((c["vocab"], D)).astype(np.float32),
         "model.norm.weight": norm(D)}
    for i in range(c["n_layers"]):
        L = f"model.layers.{i}."
        # q/k get a larger scale so attention is peaked (a uniform softmax would hide mask bugs)
        w |= {L + "input_layernorm.weight": norm(D), L + "post_attention_layernorm.weight": norm(D),
              L + "self_attn.q_proj.weight": 2.0 * lin(Hd, D), L + "self_attn.k_proj.weight": 2.0 * lin(Kd, D),
              L + "self_attn.v_proj.weight": lin(Kd, D), L + "self_attn.o_proj.weight": lin(D, Hd),
              L + "mlp.gate_proj.weight": lin(F, D), L + "mlp.up_proj.weight": lin(F, D),
              L + "mlp.down_proj.weight": lin(D, F)}
    return w


def empty_past(config: dict, lengths: list[int] | int = 0) -> dict[str, np.ndarray]:
    """Zero-filled past K/V and all-zero masks (nothing masked) with P_i = lengths[i]."""
    n = config["n_layers"]
    lengths = [lengths] * n if isinstance(lengths, int) else lengths
    K, d = config["n_kv_heads"], config["head_dim"]
    f = {}
    for i, P in enumerate(lengths):
        f[f"past_key_values.{i}.key"] = np.zeros((1, K, P, d), np.float32)
        f[f"past_key_values.{i}.value"] = np.zeros((1, K, P, d), np.float32)
        f[f"past_mask.{i}"] = np.zeros((1, K, P), np.float32)
    return f

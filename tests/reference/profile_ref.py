"""NumPy references for the head profiler's kernels (wasm/profile.c), in float64.

    rope_unrotate(y, pos0, theta)       (n, d) post-RoPE rows → pre-RoPE rows
    rope_rotate(x, pos0, theta)         the forward rotation, as the ONNX graph does it
    moments(x)                          (d + 2,): channel sums, energy, row count
    moment_scores(acc)                  (collapse share, mean cross-input cosine)
    range_sums(a, lo, hi)               mass of each row on [lo, hi)
    cumshare(v)                         share held by the k largest, k = 1..n
"""

from __future__ import annotations

import numpy as np


def inv_freq(d: int, theta: float) -> np.ndarray:
    """The graph's table (builder/onnx_graph.py): f64, then f32."""
    return (1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64) / d))).astype(np.float32)


def angles(n: int, d: int, pos0: int, theta: float) -> np.ndarray:
    """(n, d/2) f32 angles, the f32 product of f32 position and f32 frequency."""
    pos = np.arange(pos0, pos0 + n, dtype=np.float32)[:, None]
    return (pos * inv_freq(d, theta)[None, :]).astype(np.float32)


def rope_rotate(x: np.ndarray, pos0: int, theta: float) -> np.ndarray:
    """Rotate-half RoPE: y = x cos + rotate_half(x) sin (transformers' convention)."""
    n, d = x.shape
    a = angles(n, d, pos0, theta).astype(np.float64)
    c, s = np.cos(a), np.sin(a)
    x1, x2 = x[:, : d // 2].astype(np.float64), x[:, d // 2:].astype(np.float64)
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=1).astype(np.float32)


def rope_unrotate(y: np.ndarray, pos0: int, theta: float) -> np.ndarray:
    n, d = y.shape
    a = angles(n, d, pos0, theta).astype(np.float64)
    c, s = np.cos(a), np.sin(a)
    y1, y2 = y[:, : d // 2].astype(np.float64), y[:, d // 2:].astype(np.float64)
    return np.concatenate([y1 * c + y2 * s, y2 * c - y1 * s], axis=1).astype(np.float32)


def moments(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.concatenate([x.sum(axis=0), [(x * x).sum(), len(x)]])


def moment_scores(acc: np.ndarray) -> np.ndarray:
    """acc: (m, d + 2) per-input moments → [collapse share, mean pairwise cosine]."""
    d = acc.shape[1] - 2
    rows, energy = acc[:, d + 1].sum(), acc[:, d].sum()
    mu = acc[:, :d].sum(axis=0) / rows
    share = min(float(mu @ mu) / (energy / rows), 1.0)
    sums = acc[:, :d]
    cos = [float(sums[a] @ sums[b] / np.sqrt((sums[a] @ sums[a]) * (sums[b] @ sums[b])))
           for a in range(len(acc)) for b in range(a + 1, len(acc))]
    return np.array([share, np.mean(cos) if cos else 1.0])


def range_sums(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.asarray(a, np.float64)[:, lo:hi].sum(axis=1)


def cumshare(v: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(np.asarray(v, np.float64), nan=0.0)
    total = v.sum()
    return np.cumsum(np.sort(v)[::-1]) / total if total > 0 else np.zeros_like(v)

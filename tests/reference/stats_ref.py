"""NumPy reference for ``kv_logit_stats`` (wasm/stats.c): one position's comparison of two
next-token distributions given as logits, in float64.

    ref, cmp: (vocab,) float32 logits (ref = the full cache's, cmp = a compressed cache's)
    returns (8,) float64: log p_cmp(target), log p_ref(target), KL(ref ‖ cmp) (nats),
    top-1 agreement (1/0), entropy of cmp, entropy of ref (nats), argmax cmp, argmax ref
"""

from __future__ import annotations

import numpy as np

N_STATS = 8


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def logit_stats(ref: np.ndarray, cmp: np.ndarray, target: int) -> np.ndarray:
    lr, lc = log_softmax(ref), log_softmax(cmp)
    pr, pc = np.exp(lr), np.exp(lc)
    ar, ac = int(np.argmax(ref)), int(np.argmax(cmp))  # first index on ties, as in C
    kl = max(float((pr * (lr - lc)).sum()), 0.0)
    return np.array([
        lc[target] if target >= 0 else 0.0,
        lr[target] if target >= 0 else 0.0,
        kl,
        1.0 if ar == ac else 0.0,
        float(-(pc * lc).sum()),
        float(-(pr * lr).sum()),
        ac,
        ar,
    ])

"""K-norm: keep the entries whose keys have the smallest L2 norm.

Score: minus the norm of the (dequantized, post-RoPE; RoPE keeps norms) key, per KV head.
A low key norm goes with high attention (Devoto et al.), so no attention is needed at all:
the cheapest scorer. Applied once at the prompt's end (``ratio``: kvpress's ``KnormPress``;
``budget``: the same, to a fixed number of entries).

Based on Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
Compression" (EMNLP 2024); kvpress's KnormPress.
"""

from __future__ import annotations

from .evict import Eviction


class KNorm(Eviction):
    def __init__(self) -> None:
        super().__init__("knorm", "Keep the keys with the smallest L2 norm (no attention needed).",
                         "K-norm (Devoto et al. 2024); kvpress")

    def score(self, store, p: dict, ctx, step) -> None:
        store.score(store.SCORE_KNORM)

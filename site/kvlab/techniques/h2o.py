"""H2O, the Heavy-Hitter Oracle: keep the entries that have received the most attention,
plus the ``recent`` newest.

Score: attention accumulated over every query seen so far (every prompt query and every
decode step), summed over each KV head's query group (``kv_score`` ATTN, in wasm; the
scores are state the store holds, so they count in the index bytes). With ``budget`` it
rolls: after every model run the lowest-scored entries beyond the cap go. With ``ratio``
the prompt's accumulated attention selects once at its end (like kvpress's
``ObservedAttentionPress``, without its per-query normalisation).

Based on Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models" (NeurIPS 2023); seed 001's observation 3 (heavy hitters).
"""

from __future__ import annotations

from .base import Param
from .evict import Eviction


class H2O(Eviction):
    rolling = True

    def __init__(self) -> None:
        super().__init__(
            "h2o", "Heavy hitters by accumulated attention, plus the most recent entries.",
            "H2O (Zhang et al. 2023); seed 001",
            (Param("recent", "int", 32, "newest entries always kept", lo=0, hi=4096),),
        )

    def check(self, p: dict) -> None:
        self.budget_above(p, "recent")

    def protect(self, p: dict) -> tuple[int, int]:
        return 0, p["recent"]

    def observe(self, store, p: dict, ctx, step) -> None:
        store.score(store.SCORE_ATTN)  # accumulate: every query counts

    def score(self, store, p: dict, ctx, step) -> None:
        pass  # the accumulated attention is the score

    def finish(self, store, p: dict) -> None:
        store.score_drop()  # one-shot: decode keeps everything, the scores are no longer needed

    def after_step(self, store, p: dict, ctx, step, report: dict) -> None:
        if p["ratio"] is not None and step.phase != "prompt":
            return  # selected once already: no more accumulating
        super().after_step(store, p, ctx, step, report)

"""DuoAttention without its training: the profile's retrieval heads keep their whole cache,
every other KV head keeps only sinks + the most recent entries.

The head map is the profiler's: a KV head's retrieval score is the best of its query
group's (``kvlab.profile``'s ``retrieval``), and the ``heads`` best KV heads are retrieval
heads. DuoAttention learns that map with an optimisation pass; seed 000 points out that a
profile of where heads look finds much the same heads for free. The other heads are
StreamingLLM heads: with ``budget`` they roll (their cap holds at every step); with
``ratio`` they are cut once at the prompt's end. Budgets are per KV head, so the cache map
shows the two kinds of heads apart.

Based on Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with Retrieval
and Streaming Heads" (2024); seed 000.
"""

from __future__ import annotations

from .base import Param, PolicyError
from .evict import Eviction


class Duo(Eviction):
    rolling = True

    def __init__(self) -> None:
        super().__init__(
            "duo", "Retrieval heads keep everything; the other heads keep sinks + recent.",
            "DuoAttention (Xiao et al. 2024) without training; seed 000",
            (Param("heads", "int", 9, "KV heads kept whole: the profile's best retrieval heads", lo=0, hi=4096),
             Param("sinks", "int", 4, "first positions every other head keeps", lo=0, hi=64)),
        )

    def check(self, p: dict) -> None:
        self.budget_above(p, "sinks")

    def check_context(self, p: dict, ctx) -> None:
        if not (ctx.profile and "retrieval" in ctx.profile.get("metrics", {})):
            raise PolicyError("duo needs the head profile (its retrieval heads): build it with "
                              "`python -m builder profile` or pass --profile FILE")
        n = ctx.model["n_layers"] * ctx.model["n_kv_heads"]
        if p["heads"] > n:
            raise PolicyError(f"duo.heads must be at most {n} (the model's KV heads), got {p['heads']}")

    def retrieval_heads(self, ctx, heads: int) -> set[tuple[int, int]]:
        return retrieval_heads(ctx, heads)

    def protect(self, p: dict) -> tuple[int, int]:
        return p["sinks"], 0

    def score(self, store, p: dict, ctx, step) -> None:
        store.score(store.SCORE_RECENT)

    def budgets(self, store, p: dict, ctx, n: int, keep: int) -> list[list[int]]:
        whole = self.retrieval_heads(ctx, p["heads"])
        return [[-1 if (layer, k) in whole else keep for k in range(store.n_kv_heads)]
                for layer in range(store.n_layers)]


def retrieval_heads(ctx, heads: int) -> set[tuple[int, int]]:
    """The ``heads`` best (layer, KV head) of the profile by their query group's best
    retrieval score (ties: the earlier layer, then head)."""
    G = ctx.model["n_heads"] // ctx.model["n_kv_heads"]
    ranked = sorted(((max(row[k * G:(k + 1) * G]), layer, k)
                     for layer, row in enumerate(ctx.profile["metrics"]["retrieval"]["values"])
                     for k in range(ctx.model["n_kv_heads"])), key=lambda x: (-x[0], x[1], x[2]))
    return {(layer, k) for _, layer, k in ranked[:heads]}

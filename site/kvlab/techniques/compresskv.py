"""CompressKV: the semantic retrieval heads choose the tokens; layers get budgets by how
much cutting them hurts.

Score: SnapKV's pooled window attention, but in each layer only the query heads whose
profiled retrieval score (``kvlab.profile``'s ``retrieval``: the attention a head puts on a
fact's digits while the model copies them) is at least ``threshold`` vote, and every KV head
of the layer keeps the tokens they chose (seed 003: "only those heads guide the decision").
A layer without such a head falls back to SnapKV's own per-head scores. The default
threshold, 0.1, is where this model's retrieval scores fall off: 19 of its 270 query heads
(in 13 layers) are above it, the rest mostly below 0.05.

Budgets per layer: the window in every layer, and the rest of the same total as a uniform
budget shared in proportion to the profile's ``layer_sensitivity`` (the KL when only that
layer is cut to 64 entries), water-filled so no layer keeps more than the prompt.

Based on Lin et al., "CompressKV: Semantic Retrieval Heads Know What Tokens are Not Important
Before Generation" (2025); seed 003.
"""

from __future__ import annotations

import struct

from .base import Param, PolicyError
from .evict import proportional
from .snapkv import SnapKV


class CompressKV(SnapKV):
    def __init__(self) -> None:
        super().__init__(
            "compresskv", "Retrieval heads vote for the tokens; layer budgets follow offline sensitivity.",
            "CompressKV (Lin et al. 2025); seed 003",
            (Param("threshold", "float", 0.1, "profiled retrieval score a query head needs to vote", lo=0.0, hi=1.0),),
        )

    def check_context(self, p: dict, ctx) -> None:
        metrics = (ctx.profile or {}).get("metrics", {})
        if "retrieval" not in metrics or "layer_sensitivity" not in metrics:
            raise PolicyError("compresskv needs the head profile (retrieval heads, layer sensitivity): "
                              "build it with `python -m builder profile` or pass --profile FILE")

    def voters(self, ctx, threshold: float) -> list[list[int]]:
        """Per layer, the query heads that vote."""
        return [[q for q, r in enumerate(row) if r >= threshold] for row in ctx.profile["metrics"]["retrieval"]["values"]]

    def score(self, store, p: dict, ctx, step) -> None:
        Q = store.n_q_heads
        ptr = store.alloc(4 * Q)
        try:
            for layer, heads in enumerate(self.voters(ctx, p["threshold"])):
                if not heads:
                    store.score(store.SCORE_WINDOW, layer=layer, kernel=p["kernel"])
                    continue
                store.module.write(ptr, struct.pack(f"<{Q}f", *(1.0 if q in heads else 0.0 for q in range(Q))))
                store.score(store.SCORE_WINDOW, layer=layer, kernel=p["kernel"], weights=ptr)
        finally:
            store.free(ptr)

    def budgets(self, store, p: dict, ctx, n: int, keep: int) -> list[list[int]]:
        sens = ctx.profile["metrics"]["layer_sensitivity"]["values"]
        per_layer = proportional(keep * store.n_layers, sens, min(n, p["window"]), n)
        return [[b] * store.n_kv_heads for b in per_layer]

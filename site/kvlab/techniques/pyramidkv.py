"""PyramidKV: SnapKV's scores with a budget per layer, large at the bottom and small at the
top (attention narrows with depth), the same total as a uniform budget.

``shape: "pyramid"`` is kvpress's ``PyramidKVPress`` budget exactly (``beta``: the ratio of
the first layer's share to the last's; where its bounds do not hold it falls back to
SnapKV's uniform budget, as kvpress does). ``shape: "entropy"`` makes budgets proportional
to each layer's measured Rényi-2 attention entropy from the head profile (seed 001's
observation 4: broad layers need more entries), each at least the window and at most the
prompt, water-filled so the total is unchanged.

Based on Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
Information Funneling" (2024); kvpress's PyramidKVPress; seed 001.
"""

from __future__ import annotations

from .base import Param, PolicyError
from .evict import proportional
from .snapkv import SnapKV


def pyramid_budget(layer: int, n_layers: int, q_len: int, keep_avg: float, window: int, beta: float) -> int:
    """kvpress's ``PyramidKVPress.get_layer_budget`` for one layer: q_len prompt entries
    kept to keep_avg = q_len · (1 − ratio) on average (``budget`` gives keep_avg itself)."""
    max_capacity_prompt = window + keep_avg
    min_num = (max_capacity_prompt - window) / beta
    max_num = (max_capacity_prompt - window) * 2 - min_num
    if max_num >= q_len - window:  # as kvpress: no layer keeps more than the prompt holds
        max_num = q_len - window
        min_num = (max_capacity_prompt - window) * 2 - max_num
    if not (q_len >= max_num >= min_num >= window):  # kvpress falls back to SnapKV (round, not int)
        return max(1, round(keep_avg))
    steps = (max_num - min_num) / (n_layers - 1) if n_layers > 1 else 0.0
    return round(max_num - layer * steps)


class PyramidKV(SnapKV):
    def __init__(self) -> None:
        super().__init__(
            "pyramidkv", "SnapKV scores, budgets that shrink with depth (or follow layer entropy).",
            "PyramidKV (Cai et al. 2024); kvpress; seed 001",
            (Param("beta", "float", 20, "first layer's share over the last's (shape pyramid)", lo=1, hi=1000),
             Param("shape", "str", "pyramid", "how budgets vary by layer", choices=("pyramid", "entropy"))),
        )

    def check_context(self, p: dict, ctx) -> None:
        if p["shape"] == "entropy" and not (ctx.profile and "layer_entropy" in ctx.profile.get("metrics", {})):
            raise PolicyError("pyramidkv with shape \"entropy\" needs the head profile (its layer entropies): "
                              "build it with `python -m builder profile` or pass --profile FILE")

    def budgets(self, store, p: dict, ctx, n: int, keep: int) -> list[list[int]]:
        L, H = store.n_layers, store.n_kv_heads
        keep_avg = n * (1 - p["ratio"]) if p["ratio"] is not None else float(keep)
        if p["shape"] == "pyramid":
            per_layer = [pyramid_budget(i, L, n, keep_avg, p["window"], p["beta"]) for i in range(L)]
        else:
            entropy = ctx.profile["metrics"]["layer_entropy"]["values"]
            per_layer = proportional(keep * L, entropy, min(n, p["window"]), n)
        return [[max(b, min(n, p["window"]))] * H for b in per_layer]

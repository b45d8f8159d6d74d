"""SnapKV: the prompt's last ``window`` queries vote for the entries before them.

Score (kvpress's ``SnapKVPress``, in wasm ``kv_score`` WINDOW): the window is read as a run
of its own, so its attention is exact; per query head, the mean over the window's queries of
their attention to each earlier entry, average-pooled over positions (``kernel``, zero
padding counted, as torch's avg_pool1d), then averaged over the KV head's query group. The
window itself is always kept. Applied once, when the prompt has been read.

Based on Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (2024);
kvpress's SnapKVPress.
"""

from __future__ import annotations

from .base import Param, PolicyError
from .evict import Eviction

WINDOW = Param("window", "int", 64, "observation window: the prompt's last queries, which vote", lo=1, hi=1024)
KERNEL = Param("kernel", "int", 5, "average-pooling width over positions (odd)", lo=1, hi=63)


class SnapKV(Eviction):
    def __init__(self, name: str = "snapkv", summary: str = "", source: str = "", params: tuple = ()) -> None:
        super().__init__(
            name, summary or "The prompt's last queries vote (pooled attention); the window is kept.",
            source or "SnapKV (Li et al. 2024); kvpress", (WINDOW, KERNEL) + params)

    def check(self, p: dict) -> None:
        if p["kernel"] % 2 == 0:
            raise PolicyError(f"{self.name}.kernel must be odd, got {p['kernel']}")
        if p["budget"] is not None and p["budget"] < p["window"]:
            raise PolicyError(f"{self.name} keeps its observation window: budget must be at least window "
                              f"({p['window']}), got {p['budget']}")

    def prompt_tail(self, p: dict) -> int:
        return p["window"]

    def minimum(self, p: dict) -> int:
        return p["window"]

    def ready(self, p: dict, step) -> bool:
        return step.S == p["window"]  # the window was its own run (a prompt longer than it)

    def score(self, store, p: dict, ctx, step) -> None:
        store.score(store.SCORE_WINDOW, kernel=p["kernel"])

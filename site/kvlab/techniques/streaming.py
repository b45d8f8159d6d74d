"""StreamingLLM: keep the first ``sinks`` positions (attention sinks) and the most recent
entries; everything between goes.

Score: the entry's original position (newer ranks higher), with the sinks protected, so a
cap of B keeps the sinks + the B − sinks newest. With ``ratio`` it is kvpress's
``StreamingLLMPress`` (n_sink = sinks); with ``budget`` it rolls: the cap holds after every
model run, prompt and decode.

Based on Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (ICLR 2024);
the baseline of seeds 001 and 004.
"""

from __future__ import annotations

from .base import Param
from .evict import Eviction


class Streaming(Eviction):
    rolling = True

    def __init__(self) -> None:
        super().__init__(
            "streaming", "Attention sinks + the most recent entries (rolling window).",
            "StreamingLLM (Xiao et al. 2024); seeds 001, 004",
            (Param("sinks", "int", 4, "first positions always kept (attention sinks)", lo=0, hi=64),),
        )

    def check(self, p: dict) -> None:
        self.budget_above(p, "sinks")

    def protect(self, p: dict) -> tuple[int, int]:
        return p["sinks"], 0

    def score(self, store, p: dict, ctx, step) -> None:
        store.score(store.SCORE_RECENT)

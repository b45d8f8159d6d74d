"""TOVA, Token Omission Via Attention: the newest query's attention decides; the
lowest-attended entry goes.

Score: the attention of the last token, averaged over every query head of the layer, so
all KV heads of a layer keep the same entries; the newest token is always kept. That needs
a one-query run: with ``ratio`` the prompt's last token is read alone (kvpress's
``TOVAPress``); with ``budget`` it rolls, and every chunk of a prompt ends with a one-token
run, after which the cap is applied (each decode step is one already).

Based on Oren et al., "Transformers are Multi-State RNNs" (2024); kvpress's TOVAPress.
"""

from __future__ import annotations

from .evict import Eviction


class TOVA(Eviction):
    rolling = True

    def __init__(self) -> None:
        super().__init__("tova", "The newest query's attention, averaged over heads, decides what goes.",
                         "TOVA (Oren et al. 2024); kvpress")

    def prompt_tail(self, p: dict) -> int:
        return 1

    def chunk_tail(self, p: dict) -> int:
        return 1 if p["budget"] is not None else 0

    def minimum(self, p: dict) -> int:
        return 1  # the newest token

    def ready(self, p: dict, step) -> bool:
        return step.S == 1

    def score(self, store, p: dict, ctx, step) -> None:
        store.score(store.SCORE_LAST)

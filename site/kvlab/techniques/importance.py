"""Per-token importance from the prompt's attention, the two failures of seed 004.

Once the prompt has been read, each KV head keeps its ``budget`` (or the ``ratio``'s share)
best entries by one of four signals; the question (the prompt's last run, read apart:
``Request.question``, the harness's question, else the prompt's last QUESTION_FALLBACK
tokens) and the ``recent`` newest context tokens before it are always kept.

Question-blind (the context's attention, the question's run left out; the context is read
in runs of RUN tokens, so "per run" below is per RUN queries):
  "sum"   attention received, summed over every context query and the KV head's query
          group (wasm ATTN; H2O's accumulated score, once);
  "max"   the largest, over the context's runs, of the group's mean attention per query
          in that run (wasm MAX): a token any stretch of the context leaned on;
  "tail"  the sum with run r (0-based) weighted r + 1: later queries, nearer the question,
          count more (wasm ATTN with kernel r + 1).
Question-aware:
  "question"  the attention the question's queries pay to each entry, their mean, averaged
          over the group (wasm WINDOW, kernel 1; SnapKV's score with the question as its
          window, unpooled).

Seed 004 reports the blind signals fine on one needle but capped on multi-content tasks,
and the question-aware one worse: it keeps the entity the question names and drops the
digits, so the answer crosses over (the right key, another fact's digits).

Based on seed 004's "what didn't work"; H2O (Zhang et al. 2023) for the accumulated sum.
"""

from __future__ import annotations

from .base import QUESTION_FALLBACK, Param
from .evict import Eviction

RUN = 128  # prompt tokens per model run: the grain of "max" and "tail"


class Importance(Eviction):
    def __init__(self) -> None:
        super().__init__(
            "importance", "Per-token importance from prefill attention (blind: sum, max, tail; or the question's).",
            "seed 004; H2O (Zhang et al. 2023)",
            (Param("signal", "str", "sum", "what ranks a token", choices=("sum", "max", "tail", "question")),
             Param("recent", "int", 32, "newest context tokens always kept (the question always is)", lo=0, hi=4096)),
        )

    def question_tail(self, p: dict) -> bool:
        return True

    def prompt_run(self, p: dict) -> int:
        return RUN

    def after_step(self, store, p: dict, ctx, step, report: dict) -> None:
        if step.phase != "prompt":
            return
        ev = report.setdefault("eviction", {"technique": self.name, "evicted": 0, "selections": 0, "notes": []})
        blind = p["signal"] != "question"
        if blind and not step.question:
            if p["signal"] == "max":
                store.score(store.SCORE_MAX)
            else:
                store.score(store.SCORE_ATTN, kernel=step.start // RUN + 1 if p["signal"] == "tail" else 1)
        if not step.last:
            return
        n = store.tokens(-1)
        question = step.S if step.question else min(QUESTION_FALLBACK, n)
        keep = p["budget"] if p["budget"] is not None else max(1, int(n * (1 - p["ratio"])))
        floor = min(n, question + p["recent"])
        if keep < floor:
            ev["notes"].append(f"importance keeps the question and the recent tokens ({floor} entries per KV "
                               f"head); {keep} was raised to {floor}")
            keep = floor
        if keep >= n or (not blind and not step.question):
            ev["notes"].append(f"nothing was evicted: the prompt has {n} tokens and importance keeps {keep} per KV head"
                               if keep >= n else "the prompt is too short to read its question apart")
            store.score_drop()
            return
        if not blind:
            store.score(store.SCORE_WINDOW, kernel=1)
        B = [[keep] * store.n_kv_heads for _ in range(store.n_layers)]
        ev["evicted"] += store.select(B, 0, question + p["recent"])
        ev["selections"] += 1
        store.score_drop()

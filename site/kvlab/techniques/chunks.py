"""Chunk summaries everywhere plus routed exact chunks (seed 004).

Once the prompt has been read, its context (everything before the question) is cut into
chunks of ``chunk`` tokens, from position ``sinks`` up to the ``recent`` newest context
tokens. The ``k`` chunks the router scores highest stay exact; every other chunk becomes
ONE summary entry per KV head — the mean of its post-RoPE keys and the mean of its values,
as the store staged them (wasm ``kv_summarize``), stored in the head's formats like any
entry (so ``quant`` quantizes summaries too, their bytes and index counted). The first
``sinks`` positions, the ``recent`` newest context tokens and the question stay exact.

A summary's position is its chunk's middle, lo + (hi − lo) // 2: the keys are cached after
RoPE, so a position never rotates anything again (attention reads the mean key as it is);
it is where the cache map and the position list show the entry, and the middle is the
centre of the positions the mean was taken over. New tokens keep their true positions.

Routing (``route_by``), one choice for every layer and head, from the store's own scores,
each KV head's weighted by ``heads``: "retrieval" (the recipe here) by the sum of its query
group's profiled retrieval scores (``kvlab.profile``'s ``retrieval``, seed 003's semantic
retrieval heads: the attention a head puts on a fact's digits while the model copies them),
"all" by 1. On this model the question's attention summed over all 90 KV heads is led by
positional heads (the early chunks next to the sinks, whatever the question): it routed
the asked fact's chunk first in 0 of 7 multi-needle questions at 1,024 tokens, and through
the retrieval heads in 7 of 7.
  "question"  the attention the question pays to the chunk: the question is read as the
              prompt's last run (``Request.question``, the harness's question; without one
              the prompt's last QUESTION_FALLBACK tokens), each entry scored by the mean over
              the question's queries of its attention, averaged over the KV head's query
              group (wasm WINDOW with kernel 1), and a chunk's score is the weighted sum
              of its entries' scores over every layer and KV head.
  "context"   the attention the chunk received while the context was read (question-blind):
              each entry's attention summed over every context query and its query group
              (wasm ATTN, accumulated run by run, the question's run left out), divided by
              the number of context queries that could see it (n_ctx − position: an early
              token is seen by more queries), summed over the chunk, layers and heads
              (weighted alike).
Ties go to the earlier chunk. ``k`` larger than the number of chunks keeps them all (the
report's notes say so): a setting a longer prompt would honour is not an error.

``summaries: false`` drops the chunks it does not route instead (seed 004's failure:
routing right, answer wrong, because the cache then has gaps). ``summary`` chooses what
stands in a summarized chunk's place: "mean" (the recipe), "zero_key" (a zero key, every
query's logit 0, with the mean value) or "zero" (zero key and value: an entry that only
occupies the place), to test the seed's claim that a summary works by occupying it.

Based on seed 004 ("Compressing the KV cache without retraining, and what mostly doesn't
work"): mean-pooled chunk summaries after RoPE plus routed exact chunks.
"""

from __future__ import annotations

from .base import QUESTION_FALLBACK, Param, PolicyError, Technique


class Chunks(Technique):
    def __init__(self) -> None:
        super().__init__(
            name="chunks", family="structure",
            summary="Every chunk a mean summary entry, the k chunks the question routes kept exact.",
            source="seed 004",
            params=(
                Param("chunk", "int", 64, "tokens per chunk", lo=1, hi=4096),
                Param("k", "int", 3, "chunks routed (kept exact)", lo=0, hi=4096),
                Param("recent", "int", 256, "newest context tokens kept exact (the question always is)", lo=0),
                Param("sinks", "int", 4, "first positions kept exact (attention sinks)", lo=0, hi=64),
                Param("summaries", "bool", True, "summarize the other chunks (false: drop them)"),
                Param("summary", "str", "mean", "what a summarized chunk becomes",
                      choices=("mean", "zero_key", "zero")),
                Param("route_by", "str", "question", "what scores a chunk", choices=("question", "context")),
                Param("heads", "str", "retrieval", "whose attention routes: the profile's retrieval heads, or all",
                      choices=("retrieval", "all")),
            ),
        )

    def check_policy(self, params: dict, policy: dict) -> None:
        q = policy.get("quant")
        if q is not None and q.get("k_axis") == "channel":
            raise PolicyError("chunks cannot summarize keys held in per-channel blocks (quant.k_axis "
                              "'channel'): a block spans entries a summary would split; use k_axis 'token'")
        if not params["summaries"] and params["summary"] != "mean":
            raise PolicyError("chunks.summary chooses what a summarized chunk becomes: it needs summaries true")

    def check_context(self, params: dict, ctx) -> None:
        if params["heads"] == "retrieval" and "retrieval" not in (ctx.profile or {}).get("metrics", {}):
            raise PolicyError("chunks.heads 'retrieval' needs the head profile (retrieval heads): build it with "
                              "`python -m builder profile`, pass --profile FILE, or route with heads 'all'")

    @staticmethod
    def weights(params: dict, ctx, store) -> list[list[float]]:
        """(layers, KV heads): how much each head's scores count in a chunk's score."""
        if params["heads"] == "all":
            return [[1.0] * store.n_kv_heads for _ in range(store.n_layers)]
        G = store.n_q_heads // store.n_kv_heads
        return [[sum(row[h * G:(h + 1) * G]) for h in range(store.n_kv_heads)]
                for row in ctx.profile["metrics"]["retrieval"]["values"]]

    def question_tail(self, params: dict) -> bool:
        return True

    def after_step(self, store, p: dict, ctx, step, report: dict) -> None:
        if step.phase != "prompt":
            return
        if p["route_by"] == "context" and not step.question:
            store.score(store.SCORE_ATTN)  # question-blind: every context query, the question's run left out
        if not step.last:
            return
        n = store.tokens(-1)
        n_ctx = step.start if step.question else n - min(QUESTION_FALLBACK, n)
        rep = report.setdefault("chunks", {"chunk": p["chunk"], "k": p["k"], "route_by": p["route_by"], "heads": p["heads"],
                                           "summaries": p["summaries"], "context": n_ctx, "routed": [],
                                           "summarized": [], "exact": [], "notes": []})
        chunks = self.cut(p, n_ctx)
        rep["exact"] = [[0, min(p["sinks"], n_ctx)], [chunks[-1][1] if chunks else min(p["sinks"], n_ctx), n]]
        if p["route_by"] == "question" and step.question:
            store.score(store.SCORE_WINDOW, kernel=1)
        if not chunks or p["k"] >= len(chunks):
            rep["routed"] = [list(c) for c in chunks]
            rep["notes"].append(f"the context has {len(chunks)} chunks of {p['chunk']} tokens between the sinks and the "
                                f"recent tokens; k = {p['k']} keeps them all exact")
            store.score_drop()
            return
        if p["route_by"] == "question" and not step.question:  # a one-run prompt: no question apart
            scores = [0.0] * len(chunks)
            rep["notes"].append("the prompt is too short to read its question apart: the earliest chunks are routed")
        else:
            scores = self.chunk_scores(store, chunks, self.weights(p, ctx, store),
                                       n_ctx if p["route_by"] == "context" else None)
        order = sorted(range(len(chunks)), key=lambda i: (-scores[i], i))
        routed = sorted(order[:p["k"]])
        rest = [c for i, c in enumerate(chunks) if i not in routed]
        rep["routed"] = [list(chunks[i]) for i in routed]
        rep["scores"] = [round(s, 6) for s in scores]
        if p["summaries"]:
            spans = [(lo, hi, lo + (hi - lo) // 2) for lo, hi in rest]
            rep["evicted"] = store.summarize(spans, p["summary"])
            rep["summarized"] = [list(s) for s in spans]
        else:
            keep = [t for t in range(n) if not any(lo <= t < hi for lo, hi in rest)]
            rep["evicted"] = sum(store.evict(layer, h, keep) for layer in range(store.n_layers)
                                 for h in range(store.n_kv_heads))
        store.score_drop()

    @staticmethod
    def cut(p: dict, n_ctx: int) -> list[tuple[int, int]]:
        """The chunks [lo, hi) of a context of n_ctx tokens: from the sinks up to the recent
        tokens, ``chunk`` at a time (the last one may be shorter)."""
        lo, hi = min(p["sinks"], n_ctx), max(min(p["sinks"], n_ctx), n_ctx - p["recent"])
        return [(a, min(a + p["chunk"], hi)) for a in range(lo, hi, p["chunk"])]

    @staticmethod
    def chunk_scores(store, chunks: list[tuple[int, int]], weights: list[list[float]],
                     n_ctx: int | None) -> list[float]:
        """Sum over layers, KV heads (weights[layer][head] each) and each chunk's entries of
        the store's scores (entry e is position e: nothing was evicted yet); with n_ctx, each
        entry's score is divided by the context queries that could see it."""
        totals = [0.0] * len(chunks)
        for layer in range(store.n_layers):
            for h in range(store.n_kv_heads):
                w = weights[layer][h]
                if w == 0:
                    continue
                sc = store.scores(layer, h)
                for i, (lo, hi) in enumerate(chunks):
                    if n_ctx is None:
                        totals[i] += w * sum(sc[lo:hi])
                    else:
                        totals[i] += w * sum(sc[t] / (n_ctx - t) for t in range(lo, hi))
        return totals

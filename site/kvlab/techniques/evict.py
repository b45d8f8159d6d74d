"""The shared mechanism of every eviction technique: how much to keep, when, and budgets.

An eviction technique is a *scorer* (which entries matter: wasm/evict.c's ``kv_score``)
plus this class's policy of *when* to select and *how many* to keep; the store does the
one selection (``kv_select``: per KV head, the best by score, ties to the earlier
position, protected sinks / recent / window first) and frees what goes. kvpress splits
its presses the same way (``ScorerPress.score`` vs ``compress``).

How much to keep, exactly one of:
  ``ratio``   once, when the prompt has been read: keep int(n · (1 − ratio)) of its n
              entries per KV head (kvpress's ScorerPress semantics); decode tokens are then
              all kept.
  ``budget``  entries per KV head. Rolling techniques (StreamingLLM, H2O, TOVA) hold the
              cap after every model run, prompt and decode: the meter goes flat. The
              prefill-time ones (SnapKV, PyramidKV, CompressKV, K-norm) apply it once at
              the prompt's end, as in their papers.
A prompt no longer than what would be kept is not an error: nothing is evicted, and the
result's ``eviction.notes`` say so.
"""

from __future__ import annotations

from .base import Param, PolicyError, Technique

RATIO = Param("ratio", "float", None, "share of the prompt's entries evicted once it is read "
              "(keep int(n·(1 − ratio)) per KV head; kvpress's semantics)", lo=0.0, hi=1.0)
BUDGET = Param("budget", "int", None, "entries kept per KV head (rolling techniques: at every step)", lo=1)


class Eviction(Technique):
    """Base class: subclasses set ``rolling`` and implement ``score``; they may override
    ``budgets`` (per layer and head), ``protect`` (sinks, recent) and ``check``."""

    rolling = False  # with a budget, the cap holds after every run (else: once, at the prompt's end)

    def __init__(self, name: str, summary: str, source: str, params: tuple[Param, ...] = ()) -> None:
        super().__init__(name=name, family="evict", summary=summary, source=source,
                         params=(RATIO, BUDGET) + params)

    # ---- parameters

    def validate(self, given) -> dict:
        p = super().validate(given)
        if (p["ratio"] is None) == (p["budget"] is None):
            raise PolicyError(f"{self.name} takes exactly one of ratio (share evicted once the prompt is "
                              f"read) and budget (entries kept per KV head); got "
                              f"{'both' if p['ratio'] is not None else 'neither'}")
        if p["ratio"] is not None and not 0 <= p["ratio"] < 1:
            raise PolicyError(f"{self.name}.ratio must be in [0, 1), got {p['ratio']!r}")
        self.check(p)
        return p

    def check(self, p: dict) -> None:
        """Refuse parameters that cannot work together (PolicyError)."""

    def budget_above(self, p: dict, what: str) -> None:
        """Refuse a budget that leaves nothing beyond the protected ``what`` entries."""
        if p["budget"] is not None and p["budget"] <= p[what]:
            raise PolicyError(f"{self.name}.budget must be more than {what} ({p[what]}), got {p['budget']}")

    def example(self) -> dict:
        return {"ratio": 0.5}

    # ---- what subclasses provide

    def score(self, store, p: dict, ctx, step) -> None:
        """Fill the store's per-entry scores for every layer (kv_score)."""
        raise NotImplementedError

    def observe(self, store, p: dict, ctx, step) -> None:
        """Run after every model run, before any selection (H2O accumulates here)."""

    def protect(self, p: dict) -> tuple[int, int]:
        """(sinks, recent): first positions and newest entries every selection keeps."""
        return 0, 0

    def minimum(self, p: dict) -> int:
        """Entries a selection always keeps (the protected ones): a one-shot keep below it
        is raised to it (with a note)."""
        return sum(self.protect(p))

    def budgets(self, store, p: dict, ctx, n: int, keep: int) -> list[list[int]]:
        """Entries to keep per (layer, KV head) when n entries per head are cut to keep on
        average; uniform by default."""
        return [[keep] * store.n_kv_heads for _ in range(store.n_layers)]

    def ready(self, p: dict, step) -> bool:
        """Whether this run's outputs are what the scorer needs (TOVA: a one-token run)."""
        return True

    # ---- when to select (the shared mechanism)

    def after_step(self, store, p: dict, ctx, step, report: dict) -> None:
        ev = report.setdefault("eviction", {"technique": self.name, "evicted": 0, "selections": 0, "notes": []})
        self.observe(store, p, ctx, step)
        sinks, recent = self.protect(p)
        if p["budget"] is not None and self.rolling:
            if not self.ready(p, step) or max(max(r[3:]) for r in store.meter()) <= p["budget"]:
                return
            self.score(store, p, ctx, step)
            ev["evicted"] += store.select(self.budgets(store, p, ctx, store.tokens(-1), p["budget"]), sinks, recent)
            ev["selections"] += 1
            return
        if step.phase != "prompt" or not step.last:
            return
        n = store.tokens(-1)
        keep = p["budget"] if p["budget"] is not None else max(1, int(n * (1 - p["ratio"])))  # kvpress: compute_n_kept
        floor = min(n, self.minimum(p))
        if keep < floor:
            ev["notes"].append(f"{self.name} keeps at least {floor} entries per KV head (its protected ones); "
                               f"{keep} was raised to {floor}")
            keep = floor
        if keep >= n or not self.ready(p, step):
            ev["notes"].append(f"nothing was evicted: the prompt has {n} tokens and {self.name} keeps {keep} "
                               f"per KV head")
            self.finish(store, p)
            return
        self.score(store, p, ctx, step)
        ev["evicted"] += store.select(self.budgets(store, p, ctx, n, keep), sinks, recent)
        ev["selections"] += 1
        self.finish(store, p)

    def finish(self, store, p: dict) -> None:
        """After the one-shot selection (H2O drops its accumulated scores)."""


# ---------------------------------------------------------------------------------------
# Budgets that vary by layer, same total
# ---------------------------------------------------------------------------------------


def proportional(total: int, weights: list[float], lo: int, hi: int) -> list[int]:
    """Integers b_i in [lo, hi] summing to ``total`` (clamped to the feasible range), as
    close to proportional to ``weights`` as the bounds allow: water-filling (a layer that
    hits a bound keeps it and the rest is shared among the others), then largest
    remainders, ties to the lower index."""
    n = len(weights)
    total = max(lo * n, min(hi * n, total))
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        room = total - sum(fixed.values())
        wsum = sum(max(weights[i], 0.0) for i in free)
        share = {i: (room * max(weights[i], 0.0) / wsum if wsum > 0 else room / len(free)) for i in free}
        over = [i for i in free if share[i] > hi]
        under = [i for i in free if share[i] < lo]
        if not over and not under:
            break
        for i in over:
            fixed[i] = hi
        if not over:
            for i in under:
                fixed[i] = lo
    exact = [fixed.get(i, share.get(i, 0.0)) for i in range(n)]
    out = [int(x) for x in exact]
    rest = total - sum(out)
    order = sorted(range(n), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out

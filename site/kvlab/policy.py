"""Parse and apply a policy: ``{technique name: {parameter: value}}``.

Everything is validated before the store is touched, so a bad policy changes nothing.

A parsed policy is applied through one ``Applied`` object per cache fill (a generation,
each pass of an evaluation): it sets the empty store up, plans how a feed of tokens is cut
into model runs (a technique may need the prompt's last tokens as a run of their own), and
lets every technique act after each run, in a fixed order: every technique's scorers run
before any selection (kvpress's ``ComposedPress`` warns that a scorer placed after a
pruning step sees stale attention), and at most one technique selects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import formats
from .techniques import REGISTRY, PolicyError
from .techniques.base import QUESTION_FALLBACK

#: prompt tokens per model run while reading: bounds the (S, P+S) attention buffers the
#: graph allocates, at a small cost in speed
PREFILL_CHUNK = 512


def parse_policy(policy: Any) -> dict[str, dict]:
    """Validate a policy (a dict, or its JSON text) and fill in every default.

    Returns a new dict in registry order; raises ``PolicyError`` with a readable message.
    """
    if policy is None or policy == "":
        policy = {}
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except json.JSONDecodeError as e:
            raise PolicyError(f"policy is not valid JSON: {e.msg} (at character {e.pos})") from None
    if not isinstance(policy, dict):
        raise PolicyError(f"a policy is a JSON object of techniques, got {policy!r}")
    unknown = sorted(set(policy) - set(REGISTRY))
    if unknown:
        raise PolicyError(f"unknown technique {unknown[0]!r}; known: {', '.join(REGISTRY)}")
    parsed = {name: t.validate(policy[name]) for name, t in REGISTRY.items() if name in policy}
    evicting = [name for name in parsed if REGISTRY[name].family in ("evict", "structure")]
    if len(evicting) > 1:
        raise PolicyError(f"{' and '.join(evicting)} each choose which entries to keep: use one of them")
    for name, params in parsed.items():
        REGISTRY[name].check_policy(params, parsed)
    return parsed


@dataclass
class Context:
    """What techniques may read besides their parameters: the model's configuration, the
    head profile (``kvlab.profile``'s object; None when none was given) and the policy."""

    model: dict
    profile: dict | None = None
    #: the parsed policy this context serves (a technique may read another's settings)
    policy: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One model run, as the techniques see it after the store took its tokens.

    start: position of its first token; S: its tokens; phase: "prompt" while a prompt is
    read, "decode" for everything after it; last: the run ends the prompt (one-shot
    techniques compress now); question: the run is the prompt's question, read apart
    (``Applied.plan``), so its attention is the question's alone."""

    start: int
    S: int
    phase: str
    last: bool
    question: bool = False


@dataclass
class Applied:
    """A parsed policy applied to one cache fill."""

    policy: dict[str, dict]
    ctx: Context
    #: what the techniques report (eviction: entries evicted, notes), for the result object
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctx.policy = self.policy
        for name, params in self.policy.items():
            REGISTRY[name].check_context(params, self.ctx)

    def configure(self, store) -> None:
        """Set the (empty) store up. It first goes back to the full fp32 cache, so nothing
        of an earlier request's policy survives into this one."""
        store.configure(-1, formats.F32, formats.F32, formats.GROUP_DEFAULT)
        self.report = {}
        for name, params in self.policy.items():
            REGISTRY[name].configure(store, params, self.ctx)

    def plan(self, n: int, phase: str, question: int = 0) -> list[int]:
        """Model runs (their token counts) to feed n tokens: chunks of PREFILL_CHUNK (or of
        the smallest ``prompt_run`` a technique asks for while a prompt is read), with the
        tails the techniques ask for as runs of their own: a prompt's question (its last
        ``question`` tokens, else QUESTION_FALLBACK) for a technique that reads it apart
        (``question_tail``), else its last ``prompt_tail`` tokens (SnapKV's observation
        window; their attention is then exact), and the last ``chunk_tail`` tokens of every
        chunk (rolling TOVA's one-query attention)."""
        techniques = [(REGISTRY[name], params) for name, params in self.policy.items()]
        tail, size = 0, PREFILL_CHUNK
        if phase == "prompt":
            tail = max((t.prompt_tail(p) for t, p in techniques), default=0)
            if any(t.question_tail(p) for t, p in techniques):
                tail = question or QUESTION_FALLBACK
            size = min([PREFILL_CHUNK] + [t.prompt_run(p) for t, p in techniques if t.prompt_run(p)])
        if not 0 < tail < n:
            tail = 0
        runs = plan_chunks(n - tail, size)
        every = max((t.chunk_tail(p) for t, p in techniques), default=0)
        if every:
            runs = [x for r in runs for x in ((r - every, every) if r > every else (r,))]
        return runs + [tail] if tail else runs

    def asks_question(self) -> bool:
        """A technique reads the prompt's question as a run of its own."""
        return any(REGISTRY[name].question_tail(p) for name, p in self.policy.items())

    def eviction(self) -> dict | None:
        """What eviction did in this fill (technique, entries evicted, selections, notes),
        or None for a policy that evicts nothing by design."""
        ev = self.report.get("eviction")
        if ev is not None and ev["evicted"] == 0 and not ev["notes"]:
            ev["notes"].append(f"nothing was evicted: no KV head held more entries than {ev['technique']} keeps")
        return ev

    def after_step(self, store, step: Step) -> None:
        for name, params in self.policy.items():
            REGISTRY[name].after_step(store, params, self.ctx, step, self.report)


def plan_chunks(n: int, size: int = PREFILL_CHUNK) -> list[int]:
    """n tokens in runs of at most ``size``."""
    return [min(size, n - i) for i in range(0, n, size)]

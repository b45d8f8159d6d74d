"""The one interface every compression technique implements.

A *policy* is a JSON object ``{technique name: {parameter: value}}``; ``{}`` is the full
fp32 cache. Techniques compose: each configures the store before the prompt is read
(formats, budgets) and may act after each model run (eviction, re-compression); a
technique may also ask for the prompt's last tokens, or every chunk's, as runs of their
own (``kvlab.policy.Applied.plan``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


#: tokens at a prompt's end that stand for its question when the request names none (a
#: technique that routes by the question's attention then reads them as the question)
QUESTION_FALLBACK = 16


class PolicyError(ValueError):
    """A policy that cannot be applied: unknown technique, unknown or invalid parameter."""


@dataclass(frozen=True)
class Param:
    """One parameter of a technique, described well enough to validate it and draw a control."""

    name: str
    kind: str  # "int" | "float" | "bool" | "str" | "heads" (a list of [layer, kv_head] pairs)
    default: Any  # None: optional, no value unless given
    help: str
    choices: tuple = ()  # allowed values, when the set is small and discrete
    lo: float | None = None  # inclusive bounds, when continuous
    hi: float | None = None

    def check(self, technique: str, value: Any) -> Any:
        where = f"{technique}.{self.name}"
        if value is None and self.default is None:
            return None
        if self.kind == "str":
            if not isinstance(value, str) or value not in self.choices:
                raise PolicyError(f"{where} must be one of {', '.join(map(repr, self.choices))}; got {value!r}")
            return value
        if self.kind == "heads":
            return check_heads(where, value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise PolicyError(f"{where} must be true or false, got {value!r}")
            return value
        # bool is an int subclass in Python: refuse it for numbers, it is always a mistake
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{where} must be a number, got {value!r}")
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise PolicyError(f"{where} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if self.choices and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise PolicyError(f"{where} must be one of {allowed}; got {value!r}")
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            raise PolicyError(f"{where} must be between {self.lo} and {self.hi}; got {value!r}")
        return value

    def describe(self) -> dict:
        """The parameter as plain data (for the page and ``kvlab techniques``)."""
        return {
            "name": self.name, "kind": self.kind, "default": self.default, "help": self.help,
            "choices": list(self.choices), "lo": self.lo, "hi": self.hi,
        }


def check_heads(where: str, value: Any) -> list[list[int]]:
    """A non-empty list of distinct [layer, kv_head] pairs of whole numbers ≥ 0 (the model's
    bounds are the technique's check_context)."""
    def pair(x) -> bool:
        return (isinstance(x, (list, tuple)) and len(x) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x))
    if not isinstance(value, (list, tuple)) or not value or not all(pair(x) for x in value):
        raise PolicyError(f"{where} must be a list of [layer, kv_head] pairs, e.g. [[11, 0], [2, 0]]; got {value!r}")
    heads = [[int(a), int(b)] for a, b in value]
    if len({tuple(h) for h in heads}) != len(heads):
        raise PolicyError(f"{where} names a head twice: {value!r}")
    return heads


@dataclass
class Technique:
    """Base class: subclasses set the class attributes and override the hooks they need."""

    name: str = ""
    family: str = ""  # "quantize" | "evict" | "structure"
    summary: str = ""
    source: str = ""  # the paper / seed document it is based on
    params: tuple[Param, ...] = field(default_factory=tuple)

    def validate(self, given: Any) -> dict:
        """Check a technique's parameter object and fill in defaults."""
        if not isinstance(given, dict):
            raise PolicyError(f"{self.name} takes an object of parameters, got {given!r}")
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise PolicyError(
                f"unknown parameter {unknown[0]!r} for {self.name}; "
                f"it takes: {', '.join(known) or 'nothing'}"
            )
        return {p.name: p.check(self.name, given.get(p.name, p.default)) for p in self.params}

    def example(self) -> dict:
        """A valid parameter object with the fewest settings (the test matrix and the page
        start from it): {} where every parameter has a default."""
        return {}

    def check_policy(self, params: dict, policy: dict) -> None:
        """Refuse (PolicyError) a combination with the policy's other techniques (``policy``:
        every technique's parsed parameters, this one's included)."""

    def check_context(self, params: dict, ctx) -> None:
        """Refuse (PolicyError) a setting this model or profile cannot serve, before the
        store is touched; ctx is a ``kvlab.policy.Context``."""

    def configure(self, store, params: dict, ctx) -> None:
        """Set the store up before any token is cached (formats, budgets)."""

    def prompt_tail(self, params: dict) -> int:
        """Tokens at a prompt's end to read as a run of their own (0: none)."""
        return 0

    def question_tail(self, params: dict) -> bool:
        """Whether the prompt's question (the request's, else its last QUESTION_FALLBACK
        tokens) is read as a run of its own, the prompt's last: routing by the question's
        attention needs it alone, and question-blind scores must not see it."""
        return False

    def prompt_run(self, params: dict) -> int:
        """Most tokens per model run while a prompt is read (0: PREFILL_CHUNK): scores
        taken per run (a max over runs, a weight per run) are as fine as the runs."""
        return 0

    def chunk_tail(self, params: dict) -> int:
        """Tokens at the end of every run to read as a run of their own (0: none)."""
        return 0

    def after_step(self, store, params: dict, ctx, step, report: dict) -> None:
        """Act after the store took a run's new tokens (evict, re-compress); step is a
        ``kvlab.policy.Step``; report collects what the result object should say."""

    def describe(self) -> dict:
        return {
            "name": self.name, "family": self.family, "summary": self.summary,
            "source": self.source, "params": [p.describe() for p in self.params],
        }

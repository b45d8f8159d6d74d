"""Parse and apply a policy: ``{technique name: {parameter: value}}``.

Everything is validated before the store is touched, so a bad policy changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from . import formats
from .techniques import REGISTRY, PolicyError


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
    return {name: t.validate(policy[name]) for name, t in REGISTRY.items() if name in policy}


def configure(store, policy: dict[str, dict], config: dict) -> None:
    """Let every technique of a parsed policy set the (empty) store up.

    The store first goes back to the full fp32 cache, so nothing of an earlier
    request's policy survives into this one.
    """
    store.configure(-1, formats.F32, formats.F32, formats.GROUP_DEFAULT)
    for name, params in policy.items():
        REGISTRY[name].configure(store, params, config)


def after_step(store, policy: dict[str, dict], config: dict) -> None:
    for name, params in policy.items():
        REGISTRY[name].after_step(store, params, config)

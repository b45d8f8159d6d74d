"""What the page calls: the engine on the browser host, with JSON in and out.

``static/boot.js`` imports this module under Pyodide and calls ``init(js_host, emit,
should_stop)`` once, then ``generate_json`` / ``reset_json`` / ``techniques_json``. JSON
text crosses the bridge instead of proxies: one string conversion, nothing to destroy.

Results are the CLI's ``generate --json`` objects; a failure is ``{"error": message}``
(with ``"kind": "input"`` for bad input, ``"internal"`` otherwise) so the page can show
the engine's own words and stay usable.
"""

from __future__ import annotations

import json

from .engine import Engine, InputError, Request
from .store import StoreError
from .techniques import REGISTRY, PolicyError

_engine: Engine | None = None
_emit = None  # JS function(json text) → dispatches kvlab:token
_should_stop = None  # JS function() → bool, the Stop button

#: the page's camelCase option → the Request field
OPTIONS = {
    "prompt": "prompt", "chat": "chat", "maxNewTokens": "max_new_tokens", "policy": "policy",
    "temperature": "temperature", "topK": "top_k", "topP": "top_p", "seed": "seed",
    "ignoreEos": "ignore_eos",
}


# ---- setup --------------------------------------------------------------------------------

def init(js_host, emit, should_stop) -> None:
    """Build the engine on the page's host (shapes the store: kv_init)."""
    global _engine, _emit, _should_stop
    from .host.browser import BrowserHost

    _engine = Engine(BrowserHost(js_host))
    _emit, _should_stop = emit, should_stop


def techniques() -> list[dict]:
    """The registry, as ``python -m kvlab techniques`` prints it."""
    return [t.describe() for t in REGISTRY.values()]


def techniques_json() -> str:
    return json.dumps(techniques())


# ---- requests -----------------------------------------------------------------------------

def check_options(opts, known, what: str, error=InputError) -> None:
    """Refuse anything but an options object whose keys are all in ``known``, by name."""
    if not isinstance(opts, dict):
        raise error(f"{what} takes an options object, got {opts!r}")
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise error(f"unknown option {unknown[0]!r}; known: {', '.join(known)}")


async def _json_call(fn, *texts: str, **kw) -> str:
    """``await fn(*parsed texts, **kw)`` with JSON text in and out: what crosses the bridge."""
    try:
        args = [json.loads(t) for t in texts]
    except ValueError as e:
        return json.dumps({"error": f"options are not valid JSON: {e}", "kind": "input"})
    return json.dumps(await fn(*args, **kw))


def request(opts: dict) -> Request:
    """A Request from the page's options object; unknown keys are refused by name."""
    check_options(opts, OPTIONS, "generate")
    return Request(**{OPTIONS[k]: v for k, v in opts.items() if v is not None})


async def generate(opts: dict) -> dict:
    """Run one request; the result object of ``generate --json``, or {"error": ...}."""
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        req = request(opts)
        on_token = (lambda ev: _emit(json.dumps(ev))) if _emit is not None else None
        return await _engine.generate_async(req, on_token=on_token, should_stop=_should_stop)
    except (InputError, PolicyError) as e:
        return {"error": str(e), "kind": "input"}
    except StoreError as e:
        # e.g. out of memory: the store is unchanged by a failed step_begin; start clean
        _engine.store.reset()
        return {"error": str(e), "kind": "store"}


async def generate_json(opts_json: str) -> str:
    return await _json_call(generate, opts_json)


def reset() -> dict:
    """Empty the store (its memory goes back to the allocator); returns the meter's zeros."""
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    _engine.store.reset()
    return {"tokens_cached": 0, "cache_bytes": _engine.store.bytes(),
            "layer_bytes": _engine.layer_bytes()}


def reset_json() -> str:
    return json.dumps(reset())


# ---- the head profile ----------------------------------------------------------------------

#: settings the page may override (kvlab.profile.Settings fields)
PROFILE_OPTIONS = ("context", "queries", "recent", "sinks", "facts", "positions", "quant_positions", "budget",
                   "quant_bits", "seed")


async def profile(opts: dict, texts: list[dict], on_progress=None) -> dict:
    """Run the head profile on this page's engine (``kvlab.profile``); the profile object,
    or {"error": ...}. ``texts``: the builder's ``profile_texts.json``."""
    from dataclasses import replace

    from .profile import ProfileError, ProfileStopped, Settings, profile_async

    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        check_options(opts, PROFILE_OPTIONS, "profile", ProfileError)
        settings = replace(Settings(), **opts)
        res = await profile_async(_engine, texts, settings, on_progress, _should_stop)
        # the page shows seed 001's observations beside the heatmaps: derive them here too,
        # so a live profile's sentences say what this browser measured
        from .observe import observations

        return res | {"observations": observations(res)}
    except ProfileError as e:
        return {"error": str(e), "kind": "input"}
    except ProfileStopped as e:  # the store was reset on the way out
        return {"error": str(e), "kind": "stopped"}
    except StoreError as e:
        _engine.store.reset()
        return {"error": str(e), "kind": "store"}


async def profile_json(opts_json: str, texts_json: str, progress=None) -> str:
    """``profile`` with JSON text in and out; ``progress(json)`` gets each progress event."""
    on_progress = (lambda ev: progress(json.dumps(ev))) if progress is not None else None
    return await _json_call(profile, opts_json, texts_json, on_progress=on_progress)


# ---- the quality harness -------------------------------------------------------------------

#: the options of ``kvlab.evaluate`` (the keyword arguments of ``kvlab.evaluate.evaluate``)
EVAL_OPTIONS = ("task", "policy", "context", "seed", "n", "positions")


async def evaluate(opts: dict) -> dict:
    """Run one quality task (``python -m kvlab eval``) on the page's host; the object of
    ``eval --json``, or {"error": ...}. Uses the store like ``generate``: one at a time."""
    from .evaluate import EvalError, evaluate_async

    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        check_options(opts, EVAL_OPTIONS, "evaluate", EvalError)
        if "task" not in opts:
            raise EvalError("the option 'task' is required")
        return await evaluate_async(_engine, **{k: v for k, v in opts.items() if v is not None})
    except (EvalError, PolicyError) as e:
        return {"error": str(e), "kind": "input"}
    except StoreError as e:
        _engine.store.reset()
        return {"error": str(e), "kind": "store"}


async def evaluate_json(opts_json: str) -> str:
    return await _json_call(evaluate, opts_json)

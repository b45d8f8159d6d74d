"""What the page calls: the engine on the browser host, with JSON in and out.

``static/boot.js`` imports this module under Pyodide and calls ``init(js_host, emit,
should_stop, profile_json)`` once, then ``generate_json`` / ``reset_json`` /
``techniques_json`` / ``cache_map_json`` / ``key_channels_json``. JSON text crosses the
bridge instead of proxies: one string conversion, nothing to destroy.

Results are the CLI's ``generate --json`` objects; a failure is ``{"error": message}``
(with ``"kind": "input"`` for bad input, ``"internal"`` otherwise) so the page can show
the engine's own words and stay usable.
"""

from __future__ import annotations

import json
import math
import struct

from . import formats
from .engine import Engine, InputError, Request
from .store import StoreError
from .techniques import REGISTRY, PolicyError

_engine: Engine | None = None
_emit = None  # JS function(json text) → dispatches kvlab:token
_should_stop = None  # JS function() → bool, the Stop button

#: the page's camelCase option → the Request field
OPTIONS = {
    "prompt": "prompt", "question": "question", "chat": "chat", "maxNewTokens": "max_new_tokens", "policy": "policy",
    "temperature": "temperature", "topK": "top_k", "topP": "top_p", "seed": "seed",
    "ignoreEos": "ignore_eos", "cacheMap": "cache_map",
}


# ---- setup --------------------------------------------------------------------------------

def init(js_host, emit, should_stop, profile_json: str | None = None) -> None:
    """Build the engine on the page's host (shapes the store: kv_init). ``profile_json``:
    the builder's ``profile.json`` (the head profile that pyramidkv's entropy shape,
    compresskv and duo read; without it they refuse, as natively)."""
    global _engine, _emit, _should_stop
    from .host.browser import BrowserHost

    profile = json.loads(profile_json) if profile_json else None
    _engine = Engine(BrowserHost(js_host), profile=profile)
    _emit, _should_stop = emit, should_stop


def has_profile() -> bool:
    return _engine is not None and _engine.profile is not None


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


async def _guarded(run) -> dict:
    """``await run()`` with the engine started; bad input → {"error", "kind": "input"}; a
    store failure (e.g. out of memory) → the store emptied, {"error", "kind": "store"}: the
    page shows the engine's words and stays usable."""
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        return await run()
    except (InputError, PolicyError) as e:
        return {"error": str(e), "kind": "input"}
    except StoreError as e:
        _engine.store.reset()  # a failed step_begin leaves the store unchanged; start clean
        return {"error": str(e), "kind": "store"}


async def _json_call(fn, *texts: str, **kw) -> str:
    """``await fn(*parsed texts, **kw)`` with JSON text in and out: what crosses the bridge."""
    try:
        args = [json.loads(t) for t in texts]
    except ValueError as e:
        return json.dumps({"error": f"options are not valid JSON: {e}", "kind": "input"})
    return json.dumps(await fn(*args, **kw))


def _json_sync(fn, text: str) -> str:
    """``fn(parsed text)`` with JSON text in and out, for the calls that need no await."""
    try:
        opts = json.loads(text)
    except ValueError as e:
        return json.dumps({"error": f"options are not valid JSON: {e}", "kind": "input"})
    return json.dumps(fn(opts))


def request(opts: dict) -> Request:
    """A Request from the page's options object; unknown keys are refused by name."""
    check_options(opts, OPTIONS, "generate")
    if not isinstance(opts.get("cacheMap", False), bool):
        raise InputError(f"cacheMap must be true or false, got {opts['cacheMap']!r}")
    return Request(**{OPTIONS[k]: v for k, v in opts.items() if v is not None})


def token_text(tok: int) -> str:
    """One token's own text, for the cache map's hover (a piece of a character: U+FFFD)."""
    return _engine.tokenizer.token_bytes(tok).decode("utf-8", errors="replace")


def token_sink(req: Request, read=None):
    """The ``on_token`` that hands each event to the page. With ``cacheMap`` the events
    also say what the map's positions hold: the first one ``prompt_tokens`` (each prompt
    token's text, computed once per request), every one ``token_text`` (its own token's:
    a stream piece may be "" mid-character). Positions 0..P-1 are the prompt's, P.. the
    generated tokens in order. ``read()``: the ids at 0..P-1 when they are not the
    request's prompt (a chat turn: the whole conversation so far)."""
    if _emit is None:
        return None
    if not req.cache_map:
        return lambda ev: _emit(json.dumps(ev))

    def on_token(ev: dict) -> None:
        if ev["index"] == 0:  # the request passed its checks: the prompt's ids are these
            ids = read() if read is not None else _engine.prompt_ids(req)
            ev["prompt_tokens"] = [token_text(t) for t in ids]
        ev["token_text"] = token_text(ev["id"])
        _emit(json.dumps(ev))

    return on_token


async def generate(opts: dict) -> dict:
    """Run one request; the result object of ``generate --json``, or {"error": ...}."""
    async def run():
        req = request(opts)
        return await _engine.generate_async(req, on_token=token_sink(req), should_stop=_should_stop)
    return await _guarded(run)


async def generate_json(opts_json: str) -> str:
    return await _json_call(generate, opts_json)


def reset() -> dict:
    """Empty the store (its memory goes back to the allocator); returns the meter, read
    from the store (zeros, but for whatever working memory it keeps)."""
    global _conversation
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    _engine.store.reset()
    _conversation = None
    return _engine.meter()


def reset_json() -> str:
    return json.dumps(reset())


def check_policy(policy) -> dict:
    """``kvlab.checkPolicy``: the policy with its defaults filled in, as the engine would
    run it, or {"error": ...} saying why not (a technique's bad setting, two that cannot
    combine). Nothing runs: the page checks the panel's policy as it changes."""
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        return {"policy": _engine.apply(policy).policy}
    except (InputError, PolicyError) as e:
        return {"error": str(e), "kind": "input"}


def check_policy_json(policy_json: str) -> str:
    return _json_sync(check_policy, policy_json)


# ---- compare -------------------------------------------------------------------------------

#: compare's options: generate's, with two policies instead of one
COMPARE_OPTIONS = [k for k in OPTIONS if k != "policy"] + ["policyA", "policyB"]


async def compare(opts: dict) -> dict:
    """``kvlab.compare``: the object of ``python -m kvlab compare --json`` (``kvlab.compare``),
    or {"error": ...}. Token events carry ``side`` ("a" or "b"): the compare panel's, not
    the main meter's."""
    from .compare import compare_async

    async def run():
        check_options(opts, COMPARE_OPTIONS, "compare")
        req = request({k: v for k, v in opts.items() if k not in ("policyA", "policyB")})
        on_token = None if _emit is None else (lambda side, ev: _emit(json.dumps(ev | {"side": side})))
        return await compare_async(_engine, req, opts.get("policyA"), opts.get("policyB"), on_token=on_token,
                                   should_stop=_should_stop)
    return await _guarded(run)


async def compare_json(opts_json: str) -> str:
    return await _json_call(compare, opts_json)


# ---- chat: turns on one cache --------------------------------------------------------------

_conversation = None  # kvlab.conversation.Conversation of the page's chat panel
CHAT_OPTIONS = ["message", "new", "policy", "maxNewTokens", "temperature", "topK", "topP", "seed", "cacheMap"]


async def chat(opts: dict) -> dict:
    """``kvlab.chat``: one turn of the conversation (a new one with ``new``, or when there is
    none): ``Conversation.turn``'s object, or {"error": ...} with the conversation as it
    was. The policy is the first turn's; a later turn naming another is refused. Token
    events carry ``turn``."""
    from .conversation import Conversation

    async def run():
        global _conversation
        check_options(opts, CHAT_OPTIONS, "chat")
        new = opts.get("new", False)
        if not isinstance(new, bool):
            raise InputError(f"new must be true or false, got {new!r}")
        gen = {k: v for k, v in opts.items() if k not in ("message", "new", "policy")}
        req = request(gen | {"prompt": "-"})
        conv = _conversation
        if new or conv is None:
            conv = Conversation(_engine, opts.get("policy"), seed=req.seed)
        elif "policy" in opts and _engine.apply(opts["policy"]).policy != conv.pol.policy:
            raise InputError("this conversation runs under its first turn's policy; start a new conversation to change it")
        _conversation = conv  # a turn that fails partway leaves it broken: it says so next time
        sink = token_sink(req, read=lambda: conv.history + conv.pending)  # the map: the whole conversation
        return await _engine.drive_async(conv.turn_steps(opts.get("message"), req, on_token=sink,
                                                         should_stop=_should_stop))
    return await _guarded(run)


async def chat_json(opts_json: str) -> str:
    return await _json_call(chat, opts_json)


# ---- lessons ------------------------------------------------------------------------------

def lesson_item(spec: dict) -> dict:
    """``kvlab.lesson.item``: a lesson's question as the engine reads it (prompt, question,
    where each fact's code sits), or {"error": ...}."""
    from . import lesson

    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        return lesson.item(_engine, spec)
    except InputError as e:
        return {"error": str(e), "kind": "input"}


def lesson_item_json(spec_json: str) -> str:
    return _json_sync(lesson_item, spec_json)


async def lesson_run(opts: dict) -> dict:
    """One run of a lesson, ``{"item": spec, "policy": policy}``: the question generated
    under the policy (token events with the cache map, as ``generate`` with cacheMap),
    then ``kvlab.lesson.read``: the object ``python -m kvlab lesson`` gives per run."""
    from . import lesson

    async def run():
        check_options(opts, ("item", "policy"), "lessonRun")
        it = lesson.item(_engine, opts.get("item"))
        req = lesson.request(it, opts.get("policy"), cache_map=True)
        res = await _engine.generate_async(req, on_token=token_sink(req), should_stop=_should_stop)
        return lesson.read(_engine, it, res)
    return await _guarded(run)


async def lesson_run_json(opts_json: str) -> str:
    return await _json_call(lesson_run, opts_json)


# ---- the cache map and texts ----------------------------------------------------------------

def cache_map(opts: dict | None = None) -> dict:
    """``Engine.cache_map()`` for the store as it is now (``python -m kvlab cachemap``'s
    map): per layer the keep-mask string, ``kept`` per head and (unless ``{"positions":
    false}``) the kept ``positions``."""
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    opts = {} if opts is None else opts
    try:
        check_options(opts, ("positions",), "cachemap")
        positions = opts.get("positions", True)
        if not isinstance(positions, bool):
            raise InputError(f"positions must be true or false, got {positions!r}")
    except InputError as e:
        return {"error": str(e), "kind": "input"}
    return _engine.cache_map(positions=positions)


def cache_map_json(opts_json: str = "{}") -> str:
    return _json_sync(cache_map, opts_json)


def sample_text(opts: dict) -> dict:
    """About ``tokens`` tokens of real text (CPython's reference documentation, as the
    quality harness reads it: ``kvlab.texts.token_stream``), for long prompts."""
    from .texts import token_stream

    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    try:
        check_options(opts, ("tokens", "start"), "sampleText")
        n, start = opts.get("tokens", 1000), opts.get("start", 0)
        for name, v, lo in (("tokens", n, 1), ("start", start, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= _engine.config["context"]:
                raise InputError(f"{name} must be a whole number from {lo} to {_engine.config['context']}, got {v!r}")
        ids, used = token_stream(_engine.tokenizer, n, start)
    except (InputError, ValueError) as e:
        return {"error": str(e), "kind": "input"}
    return {"text": _engine.tokenizer.decode(ids), "tokens": len(ids), "sources": used}


def sample_text_json(opts_json: str) -> str:
    return _json_sync(sample_text, opts_json)


# ---- one key's channels, before and after the rotation ----------------------------------------

#: kv_layer_ptr's buffer of a layer's staged keys: (kv_heads, capacity, head_dim) f32
STAGED_K = 0


def _whole(name: str, v, hi: int) -> int:
    """``v`` if it is a whole number in [0, hi), else an InputError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
        raise InputError(f"{name} must be a whole number from 0 to {hi - 1}, got {v!r}")
    return v


def _spread(x: list[float]) -> tuple[float, float]:
    """(L2 norm, peak-to-RMS ratio max|x| / rms): how much one channel stands out."""
    norm = math.sqrt(sum(v * v for v in x))
    rms = norm / math.sqrt(len(x))
    return norm, (max(abs(v) for v in x) / rms if rms > 0 else 0.0)


def newest_key(engine: Engine, layer: int, head: int) -> dict:
    """The newest live key of one layer and KV head, read from the store's staging (what
    the model reads: after RoPE, and dequantized when a format is lossy), with its
    rotation (``formats.rotate_row``). Layer and head must be in range."""
    store = engine.store
    if store.tokens(-1) == 0:
        raise InputError("nothing cached yet: generate first")
    live = store.live(layer, head)
    if live == 0:
        raise InputError(f"layer {layer} KV head {head} keeps no entries")
    # a head's entries sit in position order in slots [0, live): its newest is the last
    slot, D, P = live - 1, store.head_dim, store.capacity(layer)
    ptr = store.module.call("kv_layer_ptr", layer, STAGED_K)
    if ptr <= 0:  # an error code, or 0: no staging allocated
        raise StoreError(ptr or formats.ESTATE, "kv_layer_ptr")
    raw = store.module.read(ptr + 4 * (head * P + slot) * D, 4 * D)
    channels = list(struct.unpack(f"<{D}f", raw))
    rotated = formats.rotate_row(channels)
    (n0, p0), (n1, p1) = _spread(channels), _spread(rotated)
    positions = store.positions(layer, head)  # original positions: they differ once evicted
    return {"layer": layer, "head": head, "position": positions[slot] if slot < len(positions) else slot,
            "channels": channels, "rotated": rotated,
            "peak_to_rms": {"before": p0, "after": p1}, "norm": {"before": n0, "after": n1}}


def key_channels(opts: dict | None = None) -> dict:
    """One real key vector's ``head_dim`` channels before and after the random-sign
    Walsh-Hadamard rotation that ``quant``'s ``rotate`` and the turbo formats use: the
    newest live entry of ``{"layer", "head"}`` (a KV head; both default 0) in the store as
    it is now. The values are the key as the model reads it: after RoPE, and dequantized
    when a quant policy is active (so a rotated policy shows its rows already unrotated).

    Returns ``{layer, head, position, channels, rotated, peak_to_rms: {before, after},
    norm: {before, after}}``; the two norms agree to float rounding (the rotation is
    orthonormal), while the peak-to-RMS ratio shows how far the largest channel stands
    above the rest."""
    if _engine is None:
        return {"error": "the engine is not started yet", "kind": "internal"}
    opts = {} if opts is None else opts
    c = _engine.config
    try:
        check_options(opts, ("layer", "head"), "keyChannels")
        layer = _whole("layer", opts.get("layer", 0), c["n_layers"])
        head = _whole("head (a KV head)", opts.get("head", 0), c["n_kv_heads"])
        return newest_key(_engine, layer, head)
    except InputError as e:
        return {"error": str(e), "kind": "input"}
    except StoreError as e:
        return {"error": str(e), "kind": "store"}


def key_channels_json(opts_json: str = "{}") -> str:
    return _json_sync(key_channels, opts_json)


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
EVAL_OPTIONS = ("task", "policy", "context", "seed", "n", "positions", "question")


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

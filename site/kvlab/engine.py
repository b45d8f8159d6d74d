"""The generation loop: prompt → tokens, through the model and the compressed KV store.

Per model run of S new tokens (a prefill chunk, or one decode step):

    store.step_begin(S)   → a step table: where each layer's past K/V/mask lives in the
                             store's memory, and where the model's outputs must go
    host.run(ids, pos, t) → the model reads the past and writes new K/V, attention
                             statistics and the last position's logits into the store
    store.step_commit(S)  → the store compresses and keeps the new K/V
    policy.after_step     → techniques that evict or re-compress act
    store.sample(logits)  → the next token (argmax or seeded sampling, in wasm)

Nothing here loops over tokens, channels or the vocabulary: that is the store's work.

The loop is written once, as a generator that *yields* each model run it needs; a driver
performs the runs: ``generate`` calls ``host.run`` (native, synchronous), and
``generate_async`` awaits ``host.run_async`` (the browser, where onnxruntime-web answers
with a Promise). So both hosts run the very same loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import policy as policies
from .chat import render_chat
from .tokenizer import Tokenizer

#: prompt tokens per model run while reading the prompt: bounds the (S, P+S) attention
#: buffers the graph allocates, at a small cost in speed
PREFILL_CHUNK = 512


class InputError(ValueError):
    """A request that cannot be run as given (empty or over-long prompt, bad setting)."""


@dataclass
class Request:
    """One generation request, as the CLI and the page's ``kvlab.generate`` take it."""

    prompt: str
    chat: bool = False
    max_new_tokens: int = 64
    policy: object = None  # dict or JSON text; None / {} = full fp32 cache
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # run exactly max_new_tokens (for comparisons)


class Engine:
    """Generates text on a host. One engine holds one KV store; requests run one at a time."""

    def __init__(self, host) -> None:
        self.host = host
        self.store = host.store
        self.config = host.config
        self.tokenizer = Tokenizer.from_json(host.tokenizer_json)
        c = self.config
        self.n_layers = c["n_layers"]
        # values the store holds per cached token, over all layers: K and V
        self.values_per_token = c["n_layers"] * c["n_kv_heads"] * c["head_dim"] * 2
        # end of turn (<|im_end|>) and end of text both end a generation
        tok = self.tokenizer
        self.stop_ids = {tok.eos_id, *(tok.special[s] for s in ("<|endoftext|>",) if s in tok.special)}
        self.store.init(c["n_layers"], c["n_kv_heads"], c["n_heads"], c["head_dim"], c["vocab"])

    # ---- inputs ------------------------------------------------------------------------

    def prompt_ids(self, req: Request) -> list[int]:
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise InputError("the prompt is empty: write some text to continue or a question to answer")
        text = render_chat([{"role": "user", "content": req.prompt}]) if req.chat else req.prompt
        return self.tokenizer.encode(text)

    def check(self, req: Request) -> tuple[list[int], dict]:
        """Validate everything before touching the store, so bad input loses nothing."""
        ctx = self.config["context"]
        n = req.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= ctx:
            raise InputError(f"max_new_tokens must be a whole number from 1 to {ctx}, got {n!r}")
        if not _number(req.temperature) or req.temperature < 0:
            raise InputError(f"temperature must be 0 (greedy) or more, got {req.temperature!r}")
        if not _number(req.top_p) or not 0 < req.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {req.top_p!r}")
        if isinstance(req.top_k, bool) or not isinstance(req.top_k, int) or req.top_k < 0:
            raise InputError(f"top_k must be a whole number ≥ 0 (0 = off), got {req.top_k!r}")
        if isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed < 2**32:
            raise InputError(f"seed must be a whole number from 0 to 2^32-1, got {req.seed!r}")
        pol = policies.parse_policy(req.policy)
        ids = self.prompt_ids(req)
        # the last generated token is sampled, never fed back: the model sees prompt + n - 1
        if len(ids) + n - 1 > ctx:
            raise InputError(
                f"the prompt is {len(ids)} tokens; with max_new_tokens={n} it would need "
                f"{len(ids) + n - 1} positions, more than the model's context of {ctx}"
            )
        return ids, pol

    # ---- the loop ----------------------------------------------------------------------

    def generate(
        self,
        req: Request,
        on_token: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        """Run one request; returns the result object of ``python -m kvlab generate --json``.

        ``on_token`` gets a dict per generated token (its text, the store's bytes, timings);
        ``should_stop`` is polled between tokens (the page's Stop button).
        """
        return self.drive(self.steps(req, on_token, should_stop))

    def feed(self, ids: list[int], start: int, policy: dict) -> int:
        """Read ``ids`` (at positions start..) into the cache under a parsed policy, on a
        synchronous host; returns the pointer to the last position's logits in the store."""
        return self.drive(self.runs(ids, start, policy))

    def drive(self, loop):
        """Perform the model runs a loop generator yields (synchronous host); return what
        the generator returns. Every loop in kvlab (generation, eval, profile) is such a
        generator, so the same code runs on both hosts."""
        try:
            run = next(loop)
            while True:
                self.host.run(*run)
                run = loop.send(None)
        except StopIteration as done:
            return done.value

    async def drive_async(self, loop):
        """``drive`` for hosts whose model runs asynchronously (``await host.run_async``)."""
        try:
            run = next(loop)
            while True:
                await self.host.run_async(*run)
                run = loop.send(None)
        except StopIteration as done:
            return done.value

    async def generate_async(
        self,
        req: Request,
        on_token: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        """``generate`` for hosts whose model runs asynchronously (``await host.run_async``)."""
        return await self.drive_async(self.steps(req, on_token, should_stop))

    def steps(self, req: Request, on_token=None, should_stop=None):
        """The generation loop as a generator: yields (ids, positions, step table) for each
        model run it needs, returns the result object. Bad input raises before the store
        is touched."""
        ids, pol = self.check(req)
        host, store, now = self.host, self.store, self.host.now_ms
        store.reset()
        policies.configure(store, pol, self.config)
        store.seed(req.seed)

        t0 = now()
        logits = yield from self.runs(ids, 0, pol)  # read the prompt
        pos = len(ids)
        prefill_ms = now() - t0

        decoder = self.tokenizer.stream_decoder()
        out: list[int] = []
        bytes_per_step: list[int] = []
        step_ms: list[float] = []
        text_parts: list[str] = []
        stop_reason = "length"
        t_tok = t0
        while True:
            tok = store.sample(logits, self.config["vocab"], req.temperature, req.top_k, req.top_p)
            out.append(tok)
            t_now = now()
            step_ms.append(t_now - t_tok)
            t_tok = t_now
            is_stop = tok in self.stop_ids and not req.ignore_eos
            piece = "" if is_stop else decoder.add(tok)
            text_parts.append(piece)
            cache_bytes = store.bytes()
            bytes_per_step.append(cache_bytes)
            if on_token is not None:
                on_token(self._token_event(len(out) - 1, tok, piece, cache_bytes, step_ms[-1]))
            if is_stop:
                stop_reason = "eos"
                break
            if len(out) >= req.max_new_tokens:
                break
            if should_stop is not None and should_stop():
                stop_reason = "stopped"
                break
            logits = yield from self.runs([tok], pos, pol)
            pos += 1
        text_parts.append(decoder.flush())

        decode_ms = step_ms[1:]  # step 0 is the prompt's
        tokens = store.tokens(-1)
        return {
            "prompt_ids": ids,
            "ids": out,
            "text": "".join(text_parts),
            "stop_reason": stop_reason,
            "policy": pol,
            "tokens_cached": tokens,
            "cache_bytes": store.bytes(),
            "fp32_bytes": tokens * self.values_per_token * 4,
            "fp16_bytes": tokens * self.values_per_token * 2,
            "layer_bytes": self.layer_bytes(),
            "bytes_per_step": bytes_per_step,
            "prefill_ms": round(prefill_ms, 3),
            "ttft_ms": round(step_ms[0], 3),
            "ms_per_token": round(sum(decode_ms) / len(decode_ms), 3) if decode_ms else None,
            "host": host.name,
            "store": host.variant,
        }

    def runs(self, ids: list[int], start: int, pol: dict):
        """Feed tokens at positions start.. through the model, chunked: a generator that
        yields each model run (use with ``yield from``); returns the logits pointer."""
        table = None
        for i in range(0, len(ids), PREFILL_CHUNK):
            table = yield from self.step(ids[i:i + PREFILL_CHUNK], start + i, pol)
        return table.logits

    def step(self, ids: list[int], start: int, pol: dict):
        """One model run of ``ids`` at positions start.. (no chunking): a generator that
        yields the run; returns its step table, whose outputs (logits, attn, entropy) stay
        readable until the next run."""
        table = self.store.step_begin(len(ids))
        yield ids, list(range(start, start + len(ids))), table
        self.store.step_commit(len(ids))
        policies.after_step(self.store, pol, self.config)
        return table

    # ---- what the meter shows ------------------------------------------------------------

    def layer_bytes(self) -> list[list[int]]:
        """Bytes held per layer, [K, V] each (index/metadata bytes are counted in K's share
        only when a technique keeps them per key)."""
        return [[self.store.bytes(i, 0), self.store.bytes(i, 1)] for i in range(self.n_layers)]

    def _token_event(self, index: int, tok: int, piece: str, cache_bytes: int, ms: float) -> dict:
        tokens = self.store.tokens(-1)
        return {
            "index": index, "id": tok, "text": piece, "tokens_cached": tokens,
            "cache_bytes": cache_bytes,
            "fp32_bytes": tokens * self.values_per_token * 4,
            "fp16_bytes": tokens * self.values_per_token * 2,
            "layer_bytes": self.layer_bytes(), "ms": round(ms, 3),
        }


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x

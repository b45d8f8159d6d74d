"""The generation loop: prompt → tokens, through the model and the compressed KV store.

Per model run of S new tokens (a prefill chunk, or one decode step):

    store.step_begin(S)   → a step table: where each layer's past K/V/mask lives in the
                             store's memory, and where the model's outputs must go
    host.run(ids, pos, t) → the model reads the past and writes new K/V, attention
                             statistics and the last position's logits into the store
    store.step_commit(S)  → the store compresses and keeps the new K/V
    policy.after_step     → techniques that evict or re-compress act (kvlab.policy.Applied)
    store.sample(logits)  → the next token (argmax or seeded sampling, in wasm)

How a feed of tokens is cut into runs is the policy's plan (``Applied.plan``): chunks of
PREFILL_CHUNK, and a prompt's last tokens alone when a technique asks (SnapKV's window).

Nothing here loops over tokens, channels or the vocabulary: that is the store's work.

The loop is written once, as a generator that *yields* each model run it needs; a driver
performs the runs: ``generate`` calls ``host.run`` (native, synchronous), and
``generate_async`` awaits ``host.run_async`` (the browser, where onnxruntime-web answers
with a Promise). So both hosts run the very same loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import formats
from . import policy as policies
from .chat import render_chat
from .policy import PREFILL_CHUNK, Applied, Context, Step  # noqa: F401  (PREFILL_CHUNK: re-exported)
from .tokenizer import Tokenizer


class InputError(ValueError):
    """A request that cannot be run as given (empty or over-long prompt, bad setting)."""


@dataclass
class Request:
    """One generation request, as the CLI and the page's ``kvlab.generate`` take it."""

    prompt: str
    #: read right after the prompt as its question (raw text; a technique that routes by
    #: the question's attention reads it as a run of its own); "" = none named
    question: str = ""
    chat: bool = False
    max_new_tokens: int = 64
    policy: object = None  # dict or JSON text; None / {} = full fp32 cache
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # run exactly max_new_tokens (for comparisons)
    cache_map: bool = False  # token events carry the cache map (``Engine.cache_map``)


class Engine:
    """Generates text on a host. One engine holds one KV store; requests run one at a time."""

    def __init__(self, host, profile: dict | None = None) -> None:
        self.host = host
        #: the head profile (``kvlab.profile``'s object) for techniques that read it
        self.profile = profile
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
        """The prompt's ids, its question's (if any) appended: tokenized apart, as the
        harness's tasks are, so the question's tokens are the last ``question_tokens``."""
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise InputError("the prompt is empty: write some text to continue or a question to answer")
        text = render_chat([{"role": "user", "content": req.prompt}]) if req.chat else req.prompt
        return self.tokenizer.encode(text) + self.question_ids(req)

    def question_ids(self, req: Request) -> list[int]:
        if not isinstance(req.question, str):
            raise InputError(f"the question must be text, got {req.question!r}")
        if not req.question:
            return []
        if req.chat:
            raise InputError("a question is read after a raw prompt; with chat, write it inside the prompt")
        if not req.question.strip():
            raise InputError("the question is only blanks: write one, or leave it empty")
        return self.tokenizer.encode(req.question)

    def apply(self, policy) -> Applied:
        """A policy (dict or JSON text, validated here) applied to this model and profile;
        raises PolicyError before anything is touched."""
        pol = policy if isinstance(policy, Applied) else policies.parse_policy(policy)
        return pol if isinstance(pol, Applied) else Applied(pol, Context(self.config, self.profile))

    def check(self, req: Request) -> tuple[list[int], Applied]:
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
        pol = self.apply(req.policy)
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

    def feed(self, ids: list[int], start: int, policy, phase: str = "prompt") -> int:
        """Read ``ids`` (at positions start..) into the cache under a policy (as configured
        already: a dict, its JSON or an ``Applied``), on a synchronous host; returns the
        pointer to the last position's logits in the store."""
        return self.drive(self.runs(ids, start, self.apply(policy), phase))

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

    def steps(self, req: Request, on_token=None, should_stop=None, on_logits=None):
        """The generation loop as a generator: yields (ids, positions, step table) for each
        model run it needs, returns the result object. Bad input raises before the store
        is touched. ``on_logits(j, ptr)``: called with the logits each generated token j is
        chosen from, before it is (``kvlab.compare`` keeps them)."""
        ids, pol = self.check(req)
        store, now = self.store, self.host.now_ms
        store.reset()
        pol.configure(store)
        store.seed(req.seed)

        t0 = now()
        question = len(self.question_ids(req))
        logits = yield from self.runs(ids, 0, pol, "prompt", question=question)  # read the prompt
        res = yield from self.decode(req, pol, logits, len(ids), t0, on_token, should_stop, on_logits)
        return {"prompt_ids": ids, **res}

    def decode(self, req: Request, pol: Applied, logits: int, pos: int, t0: float, on_token=None,
               should_stop=None, on_logits=None, event: dict | None = None):
        """The decode loop from the logits of a read prompt (its last position ``pos`` - 1,
        read since ``t0``): sample, report, feed back, until a stop token, the length or
        ``should_stop``. A generator of model runs; returns the result object but for
        ``prompt_ids``. ``event``: fields every token event also carries (a chat's turn)."""
        host, store, now = self.host, self.store, self.host.now_ms
        prefill_ms = now() - t0
        decoder = self.tokenizer.stream_decoder()
        out: list[int] = []
        bytes_per_step: list[int] = []
        step_ms: list[float] = []
        text_parts: list[str] = []
        stop_reason = "length"
        t_tok = t0
        while True:
            if on_logits is not None:
                on_logits(len(out), logits)
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
                ev = self._token_event(len(out) - 1, tok, piece, cache_bytes, step_ms[-1])
                if req.cache_map:
                    ev["cache_map"] = self.cache_map(positions=False)
                on_token(ev | (event or {}))
            if is_stop:
                stop_reason = "eos"
                break
            if len(out) >= req.max_new_tokens:
                break
            if should_stop is not None and should_stop():
                stop_reason = "stopped"
                break
            logits = yield from self.runs([tok], pos, pol, "decode")
            pos += 1
        text_parts.append(decoder.flush())

        decode_ms = step_ms[1:]  # step 0 is the prompt's
        return {
            "ids": out,
            "text": "".join(text_parts),
            "stop_reason": stop_reason,
            "policy": pol.policy,
            **self.meter(),
            **self.savings(),
            "eviction": pol.eviction(),
            "chunks": pol.report.get("chunks"),  # routed / summarized chunks, under chunks
            "bytes_per_step": bytes_per_step,
            "prefill_ms": round(prefill_ms, 3),
            "ttft_ms": round(step_ms[0], 3),
            "ms_per_token": round(sum(decode_ms) / len(decode_ms), 3) if decode_ms else None,
            "host": host.name,
            "store": host.variant,
        }

    def runs(self, ids: list[int], start: int, pol: Applied, phase: str = "prompt", on_run=None,
             question: int = 0):
        """Feed tokens at positions start.. through the model in the runs the policy plans:
        a generator that yields each model run (use with ``yield from``); returns the
        logits pointer. phase "prompt": the feed is a prompt (its last run ends it, and
        one-shot techniques compress then); "decode": anything after it. ``question``: the
        prompt's last tokens that are its question (0: none named). ``on_run(table)`` is
        called after each run (progress bars)."""
        table, i = None, 0
        plan = pol.plan(len(ids), phase, question)
        apart = phase == "prompt" and pol.asks_question() and len(plan) > 1
        for n in plan:
            last = i + n == len(ids)
            table = yield from self.step(ids[i:i + n], start + i, pol, phase, last=last, question=apart and last)
            i += n
            if on_run is not None:
                on_run(table)
        return table.logits

    def step(self, ids: list[int], start: int, pol: Applied, phase: str = "prompt", last: bool = True,
             question: bool = False):
        """One model run of ``ids`` at positions start.. (no chunking): a generator that
        yields the run; returns its step table, whose outputs (logits, attn, entropy) stay
        readable until the next run."""
        table = self.store.step_begin(len(ids))
        yield ids, list(range(start, start + len(ids))), table
        self.store.step_commit(len(ids))
        pol.after_step(self.store, Step(start, len(ids), phase, last, question))
        return table

    # ---- what the meter shows ------------------------------------------------------------

    def layer_bytes(self) -> list[list[int]]:
        """Bytes held per layer, [K, V] each (the index is apart: ``layer_index_bytes``)."""
        return [[self.store.bytes(i, 0), self.store.bytes(i, 1)] for i in range(self.n_layers)]

    def meter(self) -> dict:
        """What the store holds now, as the meter shows it: the cache (rows and their index)
        apart from the working memory beside it (the fp32 staging the model reads, step I/O)."""
        store, tokens = self.store, self.store.tokens(-1)
        rows = store.meter()  # per layer: K, V, index bytes, live entries per KV head
        return {
            "tokens_cached": tokens,
            "cache_bytes": sum(r[0] + r[1] + r[2] for r in rows),
            "index_bytes": sum(r[2] for r in rows),
            "fp32_bytes": tokens * self.values_per_token * 4,
            "fp16_bytes": tokens * self.values_per_token * 2,
            "layer_bytes": [[r[0], r[1]] for r in rows],
            "layer_index_bytes": [r[2] for r in rows],
            "kept": [list(r[3:]) for r in rows],
            # bits per value of each KV head's keys and values (entropy_bits gives heads their own)
            "head_bits": [[[formats.BITS[k], formats.BITS[v]] for k, v in layer] for layer in store.formats()],
            # 1 where a KV head's keys are collapsed (a mean key + a residual at head_bits' K width)
            "head_collapsed": store.collapsed_map(),
            "working_bytes": store.working_bytes(),
        }

    def savings(self) -> dict:
        """The saving vs fp32, each factor measured on the store: eviction (entries appended
        over entries kept) × quantization (fp32 bytes of the kept entries over the bytes
        their rows hold), and the total (fp32 bytes of every appended token over all the
        bytes held, index included): eviction × quantization = total but for the index."""
        store, c = self.store, self.config
        appended = store.tokens(-1) * c["n_layers"] * c["n_kv_heads"]
        per_layer = store.meter()
        kept = sum(sum(r[3:]) for r in per_layer)
        rows = sum(r[0] + r[1] for r in per_layer)
        held = rows + sum(r[2] for r in per_layer)
        row_fp32 = 2 * 4 * c["head_dim"]  # K + V of one entry in fp32
        return {"savings": {
            "eviction": round(appended / kept, 4) if kept else None,
            "quantization": round(kept * row_fp32 / rows, 4) if rows else None,
            "total": round(appended * row_fp32 / held, 4) if held else None,
        }}

    def cache_map(self, positions: bool = True) -> dict:
        """Which entries the cache keeps, per layer and KV head (``python -m kvlab cachemap``).

        ``tokens``: positions appended (0..tokens-1); ``layers``: per layer one character
        per position, the bit mask of the KV heads that keep it ('0' none .. '7' all three;
        wasm ``kv_keep_map``); ``kept``: live entries per layer and head; ``positions`` (when
        asked): per layer and head the kept positions, ascending."""
        store, n = self.store, self.store.tokens(-1)
        out = {"tokens": n, "kv_heads": store.n_kv_heads,
               "layers": [store.keep_map(i, n) for i in range(self.n_layers)], "kept": store.kept()}
        if positions:
            out["positions"] = [[store.positions(i, h) for h in range(store.n_kv_heads)]
                                for i in range(self.n_layers)]
        return out

    def _token_event(self, index: int, tok: int, piece: str, cache_bytes: int, ms: float) -> dict:
        return {"index": index, "id": tok, "text": piece, **self.meter(), "ms": round(ms, 3)}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x

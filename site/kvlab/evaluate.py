"""The quality harness: one policy's cache against the full cache, teacher-forced.

Every task reads the SAME token sequence twice: once through the full fp32 cache (the
*reference pass*) and once through the policy's cache (the *compressed pass*). At each
scored position the reference pass's logits are copied into a scratch buffer in the store
(``kv_memcpy``), and the compressed pass compares its own logits with them in wasm
(``kv_logit_stats``, wasm/stats.c): log p of the true next token under each, KL(full ‖
compressed) in nats, top-1 agreement. Python only adds up a few numbers per position,
never per vocabulary entry.

    ppl           ``context`` tokens of real text are read in chunks under the policy
                  (compressing as the cache grows), then ``positions`` more are fed one
                  token at a time, teacher-forced, so every prediction attends to the
                  compressed past. score = perplexity exp(−mean log p) of those tokens.
    needle, multi-needle, multi-hop
                  ``kvlab.tasks`` builds each question; the answer is the greedy
                  continuation (exact match of its leading digits). Stats (KL, top-1) are
                  taken at the answer positions while both passes have fed the same
                  tokens (after a divergence the two sequences differ and are not compared).
                  score = exact-match rate. multi-hop asks twice: hop 1's digits (the link
                  number) become hop 2's question, read with the same text on an empty
                  cache, and the answer counts only if both are right; hop 2's stats are
                  compared when both passes gave the same hop-1 digits (``kvlab.tasks``
                  says why the task is built so).

Both hosts run the very same code: a whole evaluation is ONE generator of model runs
(``evaluation``; every feed is ``yield from engine.runs(...)``), like generation in
``kvlab.engine``. ``evaluate`` drives it synchronously (native: ``engine.drive``),
``evaluate_async`` awaits each run (the page, where onnxruntime-web answers with a
Promise: ``engine.drive_async``). Bad settings raise when the generator is made, before the
store is touched.

Results also carry the store's real bytes for the compressed pass (``cache_bytes``, its last
read: multi-hop's is hop 2's) and the ratios to fp32 / fp16 for the same number of tokens.

Texts: ``kvlab.texts`` reads CPython's ``pydoc_data``, which Pyodide leaves out of its
standard library; the site ships the build's copy inside ``kvlab.zip``, so both hosts read
the same text (the results name it by sha256).
"""

from __future__ import annotations

import math
import re
from typing import Callable

from . import policy as policies
from . import tasks as tasklib
from . import texts
from .store import KVStore, StoreError

N_STATS = KVStore.N_STATS  # f32 words kv_logit_stats writes (wasm/stats.c)
FULL = {}  # the full fp32 cache's policy
ANSWER_TOKENS = 6  # four digits, the full stop, and one more to see that the number ended
HOPS = 2  # multi-hop: questions per item (link number, then code)

DEFAULT_CONTEXT = 1024
DEFAULT_POSITIONS = 256
DEFAULT_N = 10
QUESTION_MODES = ("before", "after")  # retrieval: the question read before / after compression


class EvalError(ValueError):
    """A request the harness cannot run (unknown task, bad context, ...)."""


# ---------------------------------------------------------------------------------------
# Passes over one token sequence
# ---------------------------------------------------------------------------------------


class _Pass:
    """One pass of the engine over a sequence under a policy, position by position."""

    def __init__(self, engine, pol):
        self.engine, self.pol = engine, engine.apply(pol)  # kvlab.policy.Applied
        self.store, self.module = engine.store, engine.store.module
        self.vocab = engine.config["vocab"]
        self.restart()

    def restart(self) -> None:
        """An empty cache under the pass's policy; the next feed is at position 0."""
        self.store.reset()
        self.pol.configure(self.store)
        self.pos = 0
        self.logits = 0  # pointer to the last position's logits (store memory): (vocab,) f32

    def feed(self, ids: list[int], phase: str = "decode", question: int = 0):
        """Read ids at the next positions: a generator of model runs (``yield from``).
        phase "prompt": they end a prompt (one-shot techniques compress after them), whose
        last ``question`` tokens are its question."""
        self.logits = yield from self.engine.runs(ids, self.pos, self.pol, phase, question=question)
        self.pos += len(ids)
        return self.logits

    def argmax(self) -> int:
        return self.store.argmax(self.logits, self.vocab)

    def keep(self, dst: int) -> None:
        """Copy the current logits to dst (scratch): (vocab,) f32."""
        self.module.call("kv_memcpy", dst, self.logits, 4 * self.vocab)

    def stats(self, ref_ptr: int, target: int, out: int, cmp_ptr: int | None = None) -> tuple[float, ...]:
        """Compare the current logits (or those at cmp_ptr) with the reference at ref_ptr
        (see wasm/stats.c)."""
        cmp = self.logits if cmp_ptr is None else cmp_ptr
        try:
            return self.store.logit_stats(ref_ptr, cmp, target, out)
        except StoreError as e:
            raise EvalError(f"kv_logit_stats failed ({e.code})") from None


class _Acc:
    """Per-position sums: log p (compressed, full), KL, top-1."""

    def __init__(self):
        self.n = 0
        self.lp = self.lp_full = self.kl = self.top1 = 0.0

    def add(self, s: tuple[float, ...]) -> None:
        self.n += 1
        self.lp += s[0]
        self.lp_full += s[1]
        self.kl += s[2]
        self.top1 += s[3]

    def kld(self):
        return self.kl / self.n if self.n else None

    def agreement(self):
        return self.top1 / self.n if self.n else None


class _Run:
    """What one evaluation shares: the engine, the scratch buffers, the sums, progress."""

    def __init__(self, engine, scratch: int, out: int, total: int, on_progress, question: str = "before"):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.question = question  # retrieval: the question read "before" or "after" compression
        self.memo = None  # the reference passes kept for later evaluations (``reference``)
        self.recall = True  # use the kept ones (not when the reference pass is the result)
        self.vocab4 = 4 * engine.config["vocab"]
        self.scratch = scratch  # (slots, vocab) f32: the reference pass's logits
        self.out = out  # (N_STATS,) f32: kv_logit_stats' output
        self.acc = _Acc()
        self.done, self.total, self.on_progress = 0, total, on_progress

    def remembered(self, i: int):
        """Question i's reference trace from an earlier evaluation of the same questions
        (``reference``), its logits written back into the scratch slots; None if not known."""
        if self.memo is None or i not in self.memo or not self.recall:
            return None
        trace, blob = self.memo[i]
        self.engine.store.module.write(self.scratch, blob)
        return trace if trace is not None else True

    def remember(self, i: int, trace, slots: int) -> None:
        if self.memo is not None:
            self.memo[i] = (trace, self.engine.store.module.read(self.scratch, slots * self.vocab4))

    def slot(self, j: int) -> int:
        return self.scratch + j * self.vocab4

    def tick(self) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


# ---------------------------------------------------------------------------------------
# ppl
# ---------------------------------------------------------------------------------------


def _ppl(run: _Run, pol, ids: list[int], context: int, positions: int, reuse_full: bool):
    """Generator of model runs; returns the compressed pass (its store state is the result's)."""
    acc, out = run.acc, run.out
    ref = _Pass(run.engine, FULL)
    if not run.remembered(0):  # else the reference's logits are back in their scratch slots
        yield from ref.feed(ids[:context], "prompt")
        for j in range(positions):
            ref.keep(run.slot(j))
            yield from ref.feed([ids[context + j]])
            run.tick()
        run.remember(0, None, positions)
    if reuse_full:  # the policy is the full cache: compare the kept logits with themselves
        for j in range(positions):
            acc.add(ref.stats(run.slot(j), ids[context + j], out, cmp_ptr=run.slot(j)))
        return ref
    cmp = _Pass(run.engine, pol)
    yield from cmp.feed(ids[:context], "prompt")
    for j in range(positions):
        acc.add(cmp.stats(run.slot(j), ids[context + j], out))
        yield from cmp.feed([ids[context + j]])
        run.tick()
    return cmp


# ---------------------------------------------------------------------------------------
# needle, multi-needle, multi-hop
# ---------------------------------------------------------------------------------------


def _digits(text: str) -> str:
    m = re.match(r"\s*(\d+)", text)
    return m.group(1) if m else ""


def _sentence_ended(text: str) -> bool:
    return "." in text or "\n" in text


def _greedy(run: _Run, p: _Pass, first_slot: int, ref_tokens: list[int] | None, compare: bool, stop=None):
    """Greedy continuation of up to ANSWER_TOKENS tokens from p's current logits, feeding
    all but the last: a generator of model runs; returns the tokens.

    The reference pass (ref_tokens None) keeps its logits at every position in the scratch
    slots from first_slot on. The compressed pass compares its logits with those kept
    there while it has produced exactly ref_tokens so far (and ``compare``: both passes fed
    the same question). ``stop(text)`` ends the answer early (hop 1: at the full stop)."""
    got: list[int] = []
    for j in range(ANSWER_TOKENS):
        where = run.slot(first_slot + j)
        if ref_tokens is None:
            p.keep(where)
        elif compare and j < len(ref_tokens) and got == ref_tokens[:j]:
            run.acc.add(p.stats(where, ref_tokens[j], run.out))
        got.append(p.argmax())
        if stop is not None and stop(run.tokenizer.decode(got)):
            break
        if j + 1 < ANSWER_TOKENS:
            yield from p.feed([got[-1]])
    return got


def _read(run: _Run, p: _Pass, ids: list[int], question_at: int):
    """Read a question's text: with ``question`` "before" the whole of it is the prompt (the
    question is read before the cache is compressed: inside SnapKV's window); "after", the
    text up to the question is the prompt and the question comes after the compression
    (kvpress's default: the compressed context serves any question)."""
    if run.question == "after":
        yield from p.feed(ids[:question_at], "prompt")
        yield from p.feed(ids[question_at:])
    else:
        yield from p.feed(ids, "prompt", question=len(ids) - question_at)


def _held(p: _Pass, fact: dict | None) -> dict:
    """What the compressed cache holds of the fact an answer copies, right after the
    prompt was read (``fact_held``); {"kept": None} when the item names no such fact."""
    if fact is None:
        return {"kept": None}
    return fact_held(p.store, p.pol.report.get("chunks"), fact["digits"])


def fact_held(store, chunks: dict | None, digits: list[int]) -> dict:
    """What the cache holds of the tokens [lo, hi) of a fact's code: ``kept``, the share
    of (layer, KV head) pairs keeping every one of them as an exact entry (a summary's
    position does not count), ``per_token``, each token's share alike, and, under
    ``chunks`` (its report), ``routed``: whether those tokens lie in routed chunks or the
    exact sinks and recent tokens (routing accuracy: right even when the answer is wrong).
    Read from the store as it is when called: the harness calls it right after the prompt;
    one-shot techniques change no prompt entry after that, but a rolling budget may evict
    more of the fact while the answer is generated."""
    lo, hi = digits
    summaries = {s[2] for s in chunks["summarized"]} if chunks else set()
    pairs = full = 0
    per_token = [0] * (hi - lo)
    for layer in range(store.n_layers):
        row = store.keep_map(layer, hi)[lo:hi]
        for h in range(store.n_kv_heads):
            pairs += 1
            has = [bool((int(c, 32) >> h) & 1) and lo + i not in summaries for i, c in enumerate(row)]
            full += all(has)
            per_token = [n + x for n, x in zip(per_token, has)]
    out = {"kept": round(full / pairs, 4), "per_token": [round(n / pairs, 4) for n in per_token]}
    if chunks is not None:
        spans = chunks["routed"] + chunks["exact"]
        out["routed"] = all(any(a <= t < b for a, b in spans) for t in range(lo, hi))
    return out


def _ask(run: _Run, p: _Pass, item: tasklib.Item, ref: dict | None):
    """Read one question and answer it (both hops for multi-hop): a generator of model
    runs; returns the trace. ref is None for the reference pass, else its trace."""
    tok = run.tokenizer
    trace: dict = {"tokens": []}  # per hop: the answer's tokens

    def hop(index: int, stop=None):
        ref_tokens = None if ref is None else (ref["tokens"][index] if index < len(ref["tokens"]) else [])
        # compare only when both passes read the same question: hop 2's is asked with the
        # digits each pass gave in hop 1
        compare = ref is not None and (index == 0 or trace["named"] == ref["named"])
        got = yield from _greedy(run, p, index * ANSWER_TOKENS, ref_tokens, compare, stop)
        trace["tokens"].append(got)
        return got

    yield from _read(run, p, item.ids, item.question_at)
    trace["held"] = [_held(p, tasklib.fact_of(item, item.key))]
    hop_ok, wrong_chain = True, False
    if item.hop:  # hop 1: the link number; hop 2: its code, asked with the model's digits
        got = yield from hop(0, stop=_sentence_ended)
        trace["hop_answer"] = tok.decode(got)
        trace["named"] = named = _digits(trace["hop_answer"])
        hop_ok = named == item.hop
        wrong_chain = named in item.others  # hop 1 gave the distractor chain's link number
        # hop 2 reads the text again with the new question, on an empty cache: right after
        # hop 1's question and answer, the full cache took the distractor chain's code in 1
        # of 30 questions where the same question on the bare text gets 30 of 30
        p.restart()
        yield from _read(run, p, tasklib.hop_question(item, tok, named), item.question_at)
        trace["held"].append(_held(p, tasklib.fact_of(item, item.hop)))
        got = yield from hop(1)
    else:
        got = yield from hop(0)
    text = tok.decode(got)
    digits = _digits(text)
    correct = hop_ok and digits == item.code
    trace.update(answer=text, digits=digits, correct=correct,
                 crossover=not correct and (digits in item.others.values() or wrong_chain))
    return trace


def _kept(trace: dict) -> list[tuple[int, int]]:
    """(scratch slot, token chosen there) for every position the reference pass kept."""
    return [(i * ANSWER_TOKENS + j, t) for i, toks in enumerate(trace["tokens"]) for j, t in enumerate(toks)]


def _retrieval(run: _Run, pol, items: list[tasklib.Item], reuse_full: bool):
    """Generator of model runs; returns (question details, the compressed pass)."""
    details, cmp = [], None
    for i, item in enumerate(items):
        ref = _Pass(run.engine, FULL)
        full = run.remembered(i)
        if full is None:
            full = yield from _ask(run, ref, item, None)
            run.tick()
            run.remember(i, full, HOPS * ANSWER_TOKENS)
        if reuse_full:  # the policy is the full cache: the reference pass is its own result
            cmp, mine = ref, full
            for j, t in _kept(full):
                run.acc.add(ref.stats(run.slot(j), t, run.out, cmp_ptr=run.slot(j)))
        else:
            cmp = _Pass(run.engine, pol)
            mine = yield from _ask(run, cmp, item, full)
            run.tick()
        d = {"key": item.key, "code": item.code, "depth": item.depth, "tokens": len(item.ids),
             "answer": mine["answer"], "correct": mine["correct"], "crossover": mine["crossover"],
             "answer_full": full["answer"], "correct_full": full["correct"],
             "crossover_full": full["crossover"]}
        d["held"] = mine["held"]  # per hop: what the cache kept of the fact it needed
        held = [x["kept"] for x in mine["held"] if x["kept"] is not None]
        d["kept"] = min(held) if held else None  # None: the item names no such fact
        if "routed" in mine["held"][0]:
            d["routed"] = all(x["routed"] for x in mine["held"])
        if item.hop:
            d.update(hop=item.hop, named=mine["named"], named_full=full["named"],
                     hop_answer=mine["hop_answer"], hop_answer_full=full["hop_answer"])
        if item.others:
            d["others"] = item.others
        details.append(d)
    return details, cmp


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------


def evaluation(engine, task: str, policy=None, context: int = DEFAULT_CONTEXT, seed: int = 0,
               n: int = DEFAULT_N, positions: int = DEFAULT_POSITIONS, reuse_full: bool = False,
               on_progress: Callable[[int, int], None] | None = None, question: str = "before",
               reference: dict | None = None):
    """One evaluation as a generator of model runs (drive it with ``engine.drive`` or
    ``engine.drive_async``); it returns the object ``kvlab eval --json`` prints.

    The settings are checked and the texts and questions built here, at once: bad input
    raises (EvalError, PolicyError) before the store is touched. ``on_progress(done,
    total)`` is called after each teacher-forced ppl position and each answered question,
    per pass. ``question`` (retrieval tasks): "before" reads each question before the cache
    is compressed (the whole text is the prompt), "after" compresses the text first and
    then reads the question (kvpress's default). ``reference``: a dict in which the
    full-cache passes are kept (their traces and logits); handed to the next evaluation of the
    same task, context, seed, n and positions (another policy, the other question mode: the
    full cache reads the same either way), it runs the reference pass once instead of again.
    """
    if task not in tasklib.TASKS:
        raise EvalError(f"unknown task {task!r}: choose one of {', '.join(tasklib.TASKS)}")
    pol = engine.apply(policy).policy  # raises PolicyError on bad input
    if question not in QUESTION_MODES:
        raise EvalError(f"question must be one of {', '.join(QUESTION_MODES)}, got {question!r}")
    max_ctx = engine.config["context"]
    for name, v, lo in (("context", context, 64), ("n", n, 1), ("positions", positions, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise EvalError(f"{name} must be a whole number ≥ {lo}, got {v!r}")
    need = context + (positions + 1 if task == "ppl" else 64)
    if need > max_ctx:
        raise EvalError(f"context {context} leaves no room: the model reads at most {max_ctx} positions")
    reuse = reuse_full and pol == policies.parse_policy(FULL)
    passes = 1 if reuse else 2
    if task == "ppl":
        ids, used = texts.token_stream(engine.tokenizer, context + positions + 1, start=seed)
        items, total = None, passes * positions
    else:
        try:
            items = tasklib.make_items(task, engine.tokenizer, context, n, seed)
        except ValueError as e:  # e.g. a context too short for the task's facts
            raise EvalError(str(e)) from None
        used = []
        for it in items:
            used += [t for t in it.texts if t not in used]
        total = passes * n
    if reference is not None:
        key = [task, context, seed, n, positions if task == "ppl" else None]
        if reference.setdefault("key", key) != key:
            raise EvalError(f"this reference holds {reference['key']}, not {key}")
    return _evaluation(engine, task, pol, context, seed, n, positions, reuse, items,
                       ids if items is None else None, used, total, on_progress, question, reference)


def _evaluation(engine, task, pol, context, seed, n, positions, reuse, items, ids, used, total, on_progress,
                question, reference):
    store, vocab = engine.store, engine.config["vocab"]
    slots = positions if task == "ppl" else HOPS * ANSWER_TOKENS
    scratch = store.alloc(4 * vocab * slots)  # (slots, vocab) f32: the reference's logits
    out = store.alloc(4 * N_STATS)
    run = _Run(engine, scratch, out, total, on_progress, question)
    run.memo, run.recall = reference, not reuse
    acc = run.acc
    extra: dict = {}
    t0 = engine.host.now_ms()
    try:
        if task == "ppl":
            last = yield from _ppl(run, pol, ids, context, positions, reuse)
            score = math.exp(-acc.lp / acc.n)
            score_full = math.exp(-acc.lp_full / acc.n)
        else:
            qs, last = yield from _retrieval(run, pol, items, reuse)
            score = sum(q["correct"] for q in qs) / len(qs)
            score_full = sum(q["correct_full"] for q in qs) / len(qs)
            routed = [q["routed"] for q in qs if "routed" in q]
            held = [q["kept"] for q in qs if q["kept"] is not None]
            extra = {"questions": qs,
                     "answer_kept": round(sum(held) / len(held), 4) if held else None,
                     "routing_accuracy": round(sum(routed) / len(routed), 4) if routed else None,
                     "crossovers": sum(q["crossover"] for q in qs),
                     "misses": sum(not q["correct"] and not q["crossover"] for q in qs),
                     "crossovers_full": sum(q["crossover_full"] for q in qs)}
        # the store holds the compressed pass's last sequence (or the reference's, reused)
        tokens = store.tokens(-1)
        cache_bytes = store.bytes()
        kept = engine.savings() | {"kept": store.kept(), "index_bytes": store.bytes(-1, 2),
                                   "eviction": last.pol.eviction()}
    finally:
        store.free(out)
        store.free(scratch)
        store.reset()
    per_token = engine.values_per_token
    res = {
        "task": task,
        "policy": pol,
        "score": round(score, 6),
        "score_full": round(score_full, 6),
        "score_kind": "perplexity (lower is better)" if task == "ppl" else "exact-match rate of the greedy answer's digits",
        "kld_vs_full": None if acc.kld() is None else round(acc.kld(), 7),
        "top1_agreement": None if acc.agreement() is None else round(acc.agreement(), 6),
        "positions": acc.n,
        "context": context,
        "seed": seed,
        "tokens_cached": tokens,
        "cache_bytes": cache_bytes,
        "fp32_bytes": tokens * per_token * 4,
        "fp16_bytes": tokens * per_token * 2,
        "ratio_vs_fp32": round(tokens * per_token * 4 / cache_bytes, 4) if cache_bytes else None,
        "ratio_vs_fp16": round(tokens * per_token * 2 / cache_bytes, 4) if cache_bytes else None,
        "texts": used,
        "texts_source": texts.SOURCE,
        "seconds": round((engine.host.now_ms() - t0) / 1000, 2),
        "host": engine.host.name,
    }
    res.update(kept)
    if task != "ppl":
        res["n"] = n
        res["question"] = question
    res.update(extra)
    return res


def evaluate(engine, task: str, policy=None, context: int = DEFAULT_CONTEXT, seed: int = 0,
             n: int = DEFAULT_N, positions: int = DEFAULT_POSITIONS, reuse_full: bool = False,
             on_progress: Callable[[int, int], None] | None = None, question: str = "before",
             reference: dict | None = None) -> dict:
    """Run one task under one policy on a synchronous host (native); returns the object
    ``kvlab eval --json`` prints.

    reuse_full: when the policy is the full cache, compare the reference pass with itself
    instead of running a second, identical pass (half the time; the result is the same by
    construction, since the engine is deterministic).
    """
    return engine.drive(evaluation(engine, task, policy, context, seed, n, positions, reuse_full, on_progress,
                                   question, reference))


async def evaluate_async(engine, task: str, policy=None, context: int = DEFAULT_CONTEXT, seed: int = 0,
                         n: int = DEFAULT_N, positions: int = DEFAULT_POSITIONS, reuse_full: bool = False,
                         on_progress: Callable[[int, int], None] | None = None, question: str = "before") -> dict:
    """``evaluate`` for hosts whose model runs asynchronously (the page)."""
    return await engine.drive_async(evaluation(engine, task, policy, context, seed, n, positions, reuse_full,
                                               on_progress, question))

"""The quality harness: one policy's cache against the full cache, teacher-forced.

Every task reads the SAME token sequence twice: once through the full fp32 cache (the
*reference pass*) and once through the policy's cache (the *compressed pass*). At each
scored position the reference pass's logits are copied into a scratch buffer in the store
(``kv_memcpy``), and the compressed pass compares its own logits with them in wasm
(``kv_logit_stats``, wasm/stats.c): log p of the true next token under each, KL(full ‖
compressed) in nats, top-1 agreement. Python only adds up a few numbers per position,
never per vocabulary entry, so this runs in the page under Pyodide as it runs natively.

    ppl           ``context`` tokens of real text are read in chunks under the policy
                  (compressing as the cache grows), then ``positions`` more are fed one
                  token at a time, teacher-forced, so every prediction attends to the
                  compressed past. score = perplexity exp(−mean log p) of those tokens.
    needle, multi-needle, multi-hop
                  ``kvlab.tasks`` builds each question; the answer is the greedy
                  continuation (exact match of its leading digits). Stats (KL, top-1) are
                  taken at the answer positions while both passes have fed the same
                  tokens (after a divergence the two sequences differ and are not compared).
                  score = exact-match rate.

Results also carry the store's real bytes for the compressed pass (``cache_bytes``) and the
ratios to fp32 / fp16 for the same number of tokens.
"""

from __future__ import annotations

import math
import re
import struct

from . import policy as policies
from . import tasks as tasklib
from . import texts

N_STATS = 8  # f32 words kv_logit_stats writes (wasm/stats.c)
FULL = {}  # the full fp32 cache's policy
ANSWER_TOKENS = 6  # a space, four digits, and one more to see that the number ended
HOP_TOKENS = 8  # tokens allowed for hop 1's entity name ("CEDAR-OWL." is about 5)


class EvalError(ValueError):
    """A request the harness cannot run (unknown task, bad context, ...)."""


# ---------------------------------------------------------------------------------------
# Passes over one token sequence
# ---------------------------------------------------------------------------------------


class _Pass:
    """One pass of the engine over a sequence under a policy, position by position."""

    def __init__(self, engine, pol: dict):
        self.engine, self.pol = engine, pol
        self.store, self.module = engine.store, engine.store.module
        self.vocab = engine.config["vocab"]
        self.store.reset()
        policies.configure(self.store, pol, engine.config)
        self.pos = 0
        self.logits = 0  # pointer to the last position's logits (store memory)

    def feed(self, ids: list[int]) -> int:
        self.logits = self.engine.feed(ids, self.pos, self.pol)
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
        rc = self.module.call("kv_logit_stats", ref_ptr, cmp, self.vocab, target, out)
        if rc < 0:
            raise EvalError(f"kv_logit_stats failed ({rc})")
        return struct.unpack(f"<{N_STATS}f", self.module.read(out, 4 * N_STATS))


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


# ---------------------------------------------------------------------------------------
# ppl
# ---------------------------------------------------------------------------------------


def _ppl(engine, pol, context, positions, seed, scratch, out, acc, reuse_full):
    ids, used = texts.token_stream(engine.tokenizer, context + positions + 1, start=seed)
    vocab4 = 4 * engine.config["vocab"]
    ref = _Pass(engine, FULL)
    ref.feed(ids[:context])
    for j in range(positions):
        ref.keep(scratch + j * vocab4)
        ref.feed([ids[context + j]])
    if reuse_full:  # the policy is the full cache: compare the kept logits with themselves
        for j in range(positions):
            ptr = scratch + j * vocab4
            acc.add(ref.stats(ptr, ids[context + j], out, cmp_ptr=ptr))
        return {"texts": used}, ref
    cmp = _Pass(engine, pol)
    cmp.feed(ids[:context])
    for j in range(positions):
        acc.add(cmp.stats(scratch + j * vocab4, ids[context + j], out))
        cmp.feed([ids[context + j]])
    return {"texts": used}, cmp


# ---------------------------------------------------------------------------------------
# needle, multi-needle, multi-hop
# ---------------------------------------------------------------------------------------


def _answer(engine, p: _Pass, n_tokens: int, ref_tokens, ref_ptrs, out, acc, stop=None) -> list[int]:
    """Greedy continuation of n_tokens from p's current logits (feeding all but the last).
    While p has produced exactly ref_tokens so far, its logits are compared with the
    reference pass's at ref_ptrs. ``stop(text)`` may end the answer early."""
    got: list[int] = []
    for j in range(n_tokens):
        if ref_ptrs is not None and j < len(ref_tokens) and got == ref_tokens[:j]:
            acc.add(p.stats(ref_ptrs[j], ref_tokens[j], out))
        tok = p.argmax()
        got.append(tok)
        if stop is not None and stop(engine.tokenizer.decode(got)):
            break
        if j + 1 < n_tokens:
            p.feed([tok])
    return got


def _digits(text: str) -> str:
    m = re.match(r"\s*(\d+)", text)
    return m.group(1) if m else ""


def _entity(text: str) -> str:
    m = re.match(r"\s*([A-Z]+-[A-Z]+)", text)
    return m.group(1) if m else ""


def _ask(engine, p: _Pass, item, ref_trace, scratch, out, acc) -> dict:
    """Read one question and answer it; ref_trace is None for the reference pass (which
    records its tokens and keeps its logits at scratch), else the reference's trace."""
    vocab4 = 4 * engine.config["vocab"]
    trace = {"tokens": [], "kept": []}
    slot = [0]

    def ptrs(n):  # reference: where to keep; compressed: where the reference's are
        base = scratch + slot[0] * vocab4
        slot[0] += n
        return [base + j * vocab4 for j in range(n)]

    def run(n_tokens, stop=None, index=0):
        where = ptrs(n_tokens)
        if ref_trace is None:  # keep every answer position's logits for the comparison
            got = []
            for j in range(n_tokens):
                p.keep(where[j])
                tok = p.argmax()
                trace["kept"].append((where[j], tok))
                got.append(tok)
                if stop is not None and stop(engine.tokenizer.decode(got)):
                    break
                if j + 1 < n_tokens:
                    p.feed([tok])
            trace["tokens"].append(got)
            return got
        ref_tokens = ref_trace["tokens"][index] if index < len(ref_trace["tokens"]) else []
        # compare only while both passes fed the same question tokens (hop 2 differs if hop 1 did)
        same = index == 0 or trace["tokens"][:index] == ref_trace["tokens"][:index]
        got = _answer(engine, p, n_tokens, ref_tokens, where if same else None, out, acc, stop)
        trace["tokens"].append(got)
        return got

    p.feed(item.ids)
    tok = engine.tokenizer
    if item.hop:  # hop 1: name the linked entity; hop 2: its code, asked in the model's words
        got = run(HOP_TOKENS, stop=lambda t: "." in t or "\n" in t, index=0)
        trace["hop_answer"] = tok.decode(got)
        named = _entity(trace["hop_answer"])
        p.feed([got[-1]] + tok.encode(tasklib.QUESTION_WRAP.format(tasklib.CODE_QUESTION.format(key=named or "?"))))
        got = run(ANSWER_TOKENS, index=1)
        trace["named"] = named
    else:
        got = run(ANSWER_TOKENS)
    text = tok.decode(got)
    digits = _digits(text)
    trace.update(answer=text, digits=digits, correct=digits == item.code,
                 crossover=digits != item.code and digits in item.others.values())
    return trace


def _retrieval(engine, task, pol, context, n, seed, scratch, out, acc, reuse_full):
    items = tasklib.make_items(task, engine.tokenizer, context, n, seed)
    details, cmp = [], None
    for item in items:
        ref = _Pass(engine, FULL)
        full = _ask(engine, ref, item, None, scratch, out, acc)
        if reuse_full:  # the policy is the full cache: the reference pass is its own result
            cmp, mine = ref, full
            for ptr, tok in full["kept"]:
                acc.add(ref.stats(ptr, tok, out, cmp_ptr=ptr))
        else:
            cmp = _Pass(engine, pol)
            mine = _ask(engine, cmp, item, full, scratch, out, acc)
        d = {"key": item.key, "code": item.code, "depth": item.depth, "tokens": len(item.ids),
             "answer": mine["answer"], "correct": mine["correct"], "crossover": mine["crossover"],
             "answer_full": full["answer"], "correct_full": full["correct"],
             "crossover_full": full["crossover"]}
        if item.hop:
            d.update(hop=item.hop, named=mine["named"], named_full=full["named"],
                     hop_answer=mine["hop_answer"], hop_answer_full=full["hop_answer"])
        if item.others:
            d["others"] = item.others
        details.append(d)
    used = []
    for it in items:
        used += [t for t in it.texts if t not in used]
    return {"texts": used, "questions": details}, cmp


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------

DEFAULT_CONTEXT = 1024
DEFAULT_POSITIONS = 256
DEFAULT_N = 10


def evaluate(engine, task: str, policy=None, context: int = DEFAULT_CONTEXT, seed: int = 0,
             n: int = DEFAULT_N, positions: int = DEFAULT_POSITIONS, reuse_full: bool = False) -> dict:
    """Run one task under one policy; returns the object ``kvlab eval --json`` prints.

    reuse_full: when the policy is the full cache, compare the reference pass with itself
    instead of running a second, identical pass (half the time; the result is the same by
    construction, since the engine is deterministic).
    """
    if task not in tasklib.TASKS:
        raise EvalError(f"unknown task {task!r}: choose one of {', '.join(tasklib.TASKS)}")
    pol = policies.parse_policy(policy)  # raises PolicyError on bad input
    max_ctx = engine.config["context"]
    for name, v, lo in (("context", context, 64), ("n", n, 1), ("positions", positions, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise EvalError(f"{name} must be a whole number ≥ {lo}, got {v!r}")
    need = context + (positions + 1 if task == "ppl" else 64)
    if need > max_ctx:
        raise EvalError(f"context {context} leaves no room: the model reads at most {max_ctx} positions")
    reuse = reuse_full and pol == policies.parse_policy(FULL)

    store, vocab = engine.store, engine.config["vocab"]
    slots = positions if task == "ppl" else HOP_TOKENS + ANSWER_TOKENS
    scratch = store.alloc(4 * vocab * slots)  # (slots, vocab) f32: the reference's logits
    out = store.alloc(4 * N_STATS)
    acc = _Acc()
    t0 = engine.host.now_ms()
    try:
        if task == "ppl":
            extra, cmp = _ppl(engine, pol, context, positions, seed, scratch, out, acc, reuse)
            score = math.exp(-acc.lp / acc.n)
            score_full = math.exp(-acc.lp_full / acc.n)
        else:
            extra, cmp = _retrieval(engine, task, pol, context, n, seed, scratch, out, acc, reuse)
            qs = extra["questions"]
            score = sum(q["correct"] for q in qs) / len(qs)
            score_full = sum(q["correct_full"] for q in qs) / len(qs)
            extra["crossovers"] = sum(q["crossover"] for q in qs)
            extra["misses"] = sum(not q["correct"] and not q["crossover"] for q in qs)
            extra["crossovers_full"] = sum(q["crossover_full"] for q in qs)
        tokens = store.tokens(-1)
        cache_bytes = store.bytes()
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
        "texts": extra.pop("texts"),
        "texts_source": texts.SOURCE,
        "seconds": round((engine.host.now_ms() - t0) / 1000, 2),
        "host": engine.host.name,
    }
    if task != "ppl":
        res["n"] = n
    res.update(extra)
    return res

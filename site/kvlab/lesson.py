"""Lessons that run one harness question live under a few policies (seed 004's lesson).

A lesson is data (``static/lessons.json``'s ``lessons``): an item of a retrieval task
(``{"task", "context", "seed", "index"}``: the harness's ``make_items(task, …, context,
index + 1, seed)[index]``) and its runs, each a policy. ``item`` turns the harness's item
into what the engine is sent — the text before the question as the prompt and the question
as ``Request.question`` (read as the prompt's last run, as the harness reads it) — and finds
every fact's code again in the engine's own tokens of that text: decoding the harness's ids
and encoding the text again can merge tokens where the harness joined pieces, so positions
are found by bytes, not copied. ``read`` says, after one run, what the answer was, where
each of its digits came from, and what the cache kept of every fact (``fact_held``).

Where a digit came from: the facts whose code has that digit at that place (the asked
fact's, another's — a crossover takes all four from one other fact — or none). That is what
the text allows one to say: it names the candidates, not the attention that chose one.

The page (``web.lesson_item`` / ``web.lesson_run``) and ``python -m kvlab lesson ID`` return
the same objects.
"""

from __future__ import annotations

from . import tasks
from .engine import InputError, Request
from .evaluate import _digits, fact_held

ANSWER_TOKENS = 8  # "3166.\n\n" and a little more: the digits are the first four or five tokens
SINGLE = ("needle", "multi-needle")  # tasks asked in one question (multi-hop asks two)


def check_spec(spec, context_max: int) -> dict:
    """The lesson's item spec, or an InputError naming what is wrong."""
    if not isinstance(spec, dict):
        raise InputError(f"a lesson names its item as an object, got {spec!r}")
    unknown = sorted(set(spec) - {"task", "context", "seed", "index"})
    if unknown:
        raise InputError(f"unknown item field {unknown[0]!r}; known: task, context, seed, index")
    s = {"seed": 0, "index": 0} | spec
    if s.get("task") not in SINGLE:
        raise InputError(f"a lesson's task is one of {', '.join(SINGLE)}, got {s.get('task')!r}")
    for name, lo, hi in (("context", 64, context_max), ("seed", 0, 2 ** 31), ("index", 0, 99)):
        v = s.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise InputError(f"the item's {name} must be a whole number from {lo} to {hi}, got {v!r}")
    return s


def item(engine, spec: dict) -> dict:
    """The item of ``spec`` as the engine reads it: ``prompt`` and ``question`` (texts),
    ``tokens`` (the prompt's ids, question included), ``question_at``, the asked ``key``
    and ``code``, the ``others`` (key → code), and ``facts`` in position order, each
    ``{"key", "code", "asked", "sentence": [lo, hi), "digits": [lo, hi)}`` in the engine's
    token positions."""
    s = check_spec(spec, engine.config["context"] - ANSWER_TOKENS)
    tok = engine.tokenizer
    try:
        it = tasks.make_items(s["task"], tok, s["context"], s["index"] + 1, s["seed"])[s["index"]]
    except ValueError as e:
        raise InputError(str(e)) from None
    prompt, question = tok.decode(it.ids[:it.question_at]), tok.decode(it.ids[it.question_at:])
    ids = engine.prompt_ids(Request(prompt=prompt, question=question))
    ends, n = [], 0  # each token's end, in bytes of the text
    for t in ids:
        n += len(tok.token_bytes(t))
        ends.append(n)
    text = b"".join(tok.token_bytes(t) for t in ids)

    def span(a: int, b: int) -> list[int]:  # the tokens covering bytes [a, b)
        lo = next(i for i, e in enumerate(ends) if e > a)
        return [lo, next(i for i, e in enumerate(ends) if e >= b) + 1]

    facts = []
    for f in it.facts:
        sentence = tasks.CODE_SENTENCE.format(key=f["key"], code=f["code"]).encode()
        a = text.index(sentence)
        c = a + len(sentence) - 1 - len(f["code"])  # the code, before the full stop
        facts.append({"key": f["key"], "code": f["code"], "asked": f["key"] == it.key,
                      "sentence": span(a, a + len(sentence)), "digits": span(c, c + len(f["code"]))})
    return {**s, "prompt": prompt, "question": question, "tokens": len(ids),
            "question_at": len(ids) - len(engine.question_ids(Request(prompt=prompt, question=question))),
            "key": it.key, "code": it.code, "others": it.others, "facts": facts}


def request(it: dict, policy, cache_map: bool = False) -> Request:
    """The generation request of one run: greedy, a few tokens, the question apart."""
    return Request(prompt=it["prompt"], question=it["question"], policy=policy, max_new_tokens=ANSWER_TOKENS,
                   cache_map=cache_map)


def read(engine, it: dict, result: dict) -> dict:
    """One run's lesson, from the generate result and the store as the run left it:
    the answer (``text``, its leading ``digits``, ``correct``, ``crossover``), ``origin``
    (per answer digit: the facts whose code has it at that place), ``facts`` (each with
    ``fact_held``: the share of (layer, KV head) pairs that kept its code exactly, per
    token too, and under chunks whether it was routed), ``chunks`` (routed and summarized
    spans, or None), the map of kept entries (``Engine.cache_map`` without positions), the
    ratio vs fp32, and ``result``: the generate result (the page's meter and its download
    read it). The cache is read as the run left it, after the answer: a rolling budget may
    have evicted more of a fact by then than when the answer began."""
    text = result["text"]
    digits = _digits(text)
    correct = digits == it["code"]
    origin = [{"digit": d, "place": j, "facts": [f["key"] for f in it["facts"] if j < len(f["code"]) and f["code"][j] == d]}
              for j, d in enumerate(digits)]
    rep = result.get("chunks")
    facts = [f | fact_held(engine.store, rep, f["digits"]) for f in it["facts"]]
    return {"policy": result["policy"], "text": text, "ids": result["ids"], "digits": digits, "correct": correct,
            "crossover": not correct and digits in it["others"].values(),
            "origin": origin, "facts": facts,
            "chunks": None if rep is None else {k: rep[k] for k in ("routed", "summarized", "exact", "notes")},
            "map": engine.cache_map(positions=False),
            "ratio_vs_fp32": round(result["fp32_bytes"] / result["cache_bytes"], 4),
            "result": result}


def run(engine, spec: dict, policies: list) -> dict:
    """The whole lesson natively: ``{"item", "runs"}``, one run per policy, in order."""
    it = item(engine, spec)
    return {"item": it, "runs": [read(engine, it, engine.generate(request(it, p))) for p in policies]}


def lessons_file():
    """``static/lessons.json`` beside the package (the page loads the same file)."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "static" / "lessons.json"


def find(lessons: list[dict], lesson_id) -> dict:
    """The lesson named ``lesson_id``, or an InputError listing the known ids."""
    for les in lessons:
        if les["id"] == lesson_id:
            return les
    raise InputError(f"unknown lesson {lesson_id!r}; known: {', '.join(les['id'] for les in lessons)}")

"""The quality harness (``python -m kvlab eval``, ``kvlab.evaluate``) on the real model.

Kept quick: small contexts except the retrieval checks at 1,024 tokens (the tasks' promise:
the full cache answers at least 90% of the questions, or a task teaches nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvlab import tasks
from kvlab.evaluate import EvalError, evaluate, evaluate_async
from kvlab.techniques import PolicyError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
Q4 = {"quant": {"k_bits": 4, "v_bits": 4}}
KEYS = {"task", "policy", "score", "score_full", "kld_vs_full", "top1_agreement", "cache_bytes",
        "ratio_vs_fp32", "ratio_vs_fp16", "positions", "context", "texts", "seed", "tokens_cached"}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "site"), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "kvlab", "eval", *args], capture_output=True,
                          text=True, env=env, timeout=300)


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def test_cli_json_shape_and_q4_costs_something(bundle):
    r = cli("--task", "ppl", "--context", "128", "--positions", "16", "--policy", json.dumps(Q4), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert KEYS <= set(res)
    assert res["task"] == "ppl" and res["positions"] == 16 and res["context"] == 128
    assert res["kld_vs_full"] > 0  # a 4-bit cache is measurably not the full cache
    assert res["ratio_vs_fp32"] == 6.4 and res["ratio_vs_fp16"] == 3.2  # Q4_1, G = 32
    assert res["tokens_cached"] == 128 + 16
    assert all(len(t["sha256"]) == 64 and t["name"].startswith("pydoc_data.topics#") for t in res["texts"])


@pytest.mark.parametrize("args, words", [
    (["--task", "sudoku"], "unknown task"),
    (["--task", "ppl", "--policy", '{"nope": {}}'], "nope"),
    (["--task", "ppl", "--policy", "{not json"], "JSON"),
])
def test_cli_bad_input_exits_2(args, words):
    r = cli(*args, "--json")
    assert r.returncode == 2
    assert words.lower() in r.stderr.lower() and r.stdout == ""


def test_bad_settings_raise(engine):
    with pytest.raises(EvalError, match="unknown task"):
        evaluate(engine, "sudoku")
    with pytest.raises(EvalError, match="context"):
        evaluate(engine, "ppl", context=9000)
    with pytest.raises(PolicyError):
        evaluate(engine, "ppl", {"quant": {"k_bits": 5}})


# ---------------------------------------------------------------------------------------
# What the numbers must say
# ---------------------------------------------------------------------------------------


def test_full_cache_against_itself(engine):
    """A real second pass (no reuse) through the full cache: identical distributions."""
    res = evaluate(engine, "ppl", {}, context=256, positions=32)
    assert res["positions"] == 32
    assert res["kld_vs_full"] == 0.0 and res["top1_agreement"] == 1.0
    assert res["score"] == res["score_full"] and 1 < res["score"] < 100
    assert res["ratio_vs_fp32"] == 1.0 and res["ratio_vs_fp16"] == 0.5


def test_q4_costs_more_than_q8(engine):
    q8 = evaluate(engine, "ppl", {"quant": {"k_bits": 8, "v_bits": 8}}, context=256, positions=32)
    q4 = evaluate(engine, "ppl", Q4, context=256, positions=32)
    assert 0 < q8["kld_vs_full"] < q4["kld_vs_full"]
    assert q8["score_full"] == q4["score_full"]


@pytest.mark.parametrize("task", tasks.RETRIEVAL)
def test_full_cache_answers_the_retrieval_tasks(engine, task):
    res = evaluate(engine, task, {}, context=1024, n=10, reuse_full=True)
    print(json.dumps({k: res[k] for k in ("task", "score_full", "crossovers_full", "seconds")}))
    assert res["score_full"] >= 0.9
    assert len(res["questions"]) == 10 and len({q["depth"] for q in res["questions"]}) == 10
    assert all(q["tokens"] <= 1024 for q in res["questions"])


def run_to_end(coro):
    """Run a coroutine that never waits on anything, without an event loop: asyncio.run
    refuses to start while the e2e tests' Playwright loop runs in this thread."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited on something")


def test_async_driver_gives_the_same_result(engine, monkeypatch):
    """evaluate_async (the page's driver) runs the very same generator as evaluate."""

    async def run_async(ids, pos, table):  # the native model, behind an awaitable
        engine.host.run(ids, pos, table)

    monkeypatch.setattr(engine.host, "run_async", run_async, raising=False)
    seen = []
    for task, kw in (("ppl", {"context": 128, "positions": 8}), ("multi-hop", {"context": 256, "n": 2})):
        a = evaluate(engine, task, Q4, **kw)
        b = run_to_end(evaluate_async(engine, task, Q4, on_progress=lambda d, t: seen.append((d, t)), **kw))
        a.pop("seconds"), b.pop("seconds")
        assert a == b
        assert seen[-1][0] == seen[-1][1] == 2 * (kw.get("positions") or kw["n"])  # both passes
        seen.clear()


def test_deterministic_with_the_seed(engine):
    tok = engine.tokenizer
    for task in tasks.RETRIEVAL:
        a, b = (tasks.make_items(task, tok, 512, 3, seed=7) for _ in range(2))
        c = tasks.make_items(task, tok, 512, 3, seed=8)
        assert [i.ids for i in a] == [i.ids for i in b] != [i.ids for i in c]
        # every read is at most the context; the longer question makes it exactly so
        reads = [(i.ids, tasks.hop_question(i, tok, i.hop) if i.hop else i.ids) for i in a]
        assert all(max(len(x), len(y)) == 512 for x, y in reads)
    runs = [evaluate(engine, "multi-needle", Q4, context=256, n=2, seed=3) for _ in range(2)]
    for r in runs:
        r.pop("seconds")
    assert runs[0] == runs[1]


def test_multi_hop_items_chain(bundle):
    """key → link number → code, and a distractor chain with nothing in common but the shape."""
    from kvlab.tokenizer import Tokenizer
    from kvlab.artifacts import default_dir

    tok = Tokenizer.from_file(f"{default_dir()}/tokenizer.json")
    for item in tasks.make_items("multi-hop", tok, 512, 10, seed=0):
        text = tok.decode(item.ids)
        assert item.hop.isdigit() and len(item.hop) == 4
        assert tasks.LINK_SENTENCE.format(a=item.key, b=item.hop) in text
        assert tasks.CODE_SENTENCE.format(key=item.hop, code=item.code) in text
        assert text.endswith(tasks.LINK_QUESTION.format(a=item.key))
        (link, code), = item.others.items()
        assert tasks.CODE_SENTENCE.format(key=link, code=code) in text
        assert not set(link) & set(item.hop)  # no digit in common
        other = text.split(f"-{link}.")[0].rsplit("link: ", 1)[1]  # the distractor's key
        assert not set(other.split("-")) & set(item.key.split("-"))  # no word in common
        # hop 2 reads the same text, then asks the code of the link number given
        second = tasks.hop_question(item, tok, item.hop)
        assert second[:item.question_at] == item.ids[:item.question_at]
        assert tok.decode(second).endswith(tasks.CODE_QUESTION.format(key=item.hop))


def test_multi_hop_compares_both_hops(engine):
    """Where the compressed pass answers as the full cache did, every answer position of
    both hops is compared: as many positions as the full cache's own."""
    q8 = evaluate(engine, "multi-hop", {"quant": {"k_bits": 8, "v_bits": 8}}, context=256, n=2)
    full = evaluate(engine, "multi-hop", {}, context=256, n=2, reuse_full=True)
    assert all(q["named"] == q["named_full"] and q["answer"] == q["answer_full"] for q in q8["questions"])
    assert q8["positions"] == full["positions"] > 2 * 2 * 4  # two hops of ≥ 4 digits each
    assert 0 < q8["kld_vs_full"] and full["kld_vs_full"] == 0


def test_multi_hop_counts_only_both_hops(engine, monkeypatch):
    """Right only if both hops are; taking the distractor chain is a crossover."""
    make_items = tasks.make_items

    def wrong_link(*args):  # hop 1 is marked as expecting a number the text never links
        items = make_items(*args)
        for it in items:
            it.hop = "0000"
        return items

    monkeypatch.setattr(tasks, "make_items", wrong_link)
    res = evaluate(engine, "multi-hop", {}, context=256, n=2, reuse_full=True)
    for q in res["questions"]:  # the model still follows the real chain to the real code ...
        assert q["named_full"] != "0000" and q["answer_full"].startswith(q["code"])
        assert not q["correct_full"]  # ... but hop 1 was not what the item expected
    monkeypatch.undo()

    def distractor_question(item, tok, link):  # hop 2 asks the other chain's link number
        return hop_question(item, tok, next(iter(item.others)))

    hop_question = tasks.hop_question
    monkeypatch.setattr(tasks, "hop_question", distractor_question)
    res = evaluate(engine, "multi-hop", {}, context=256, n=2, reuse_full=True)
    for q in res["questions"]:
        assert q["named_full"] == q["hop"]  # hop 1 was right
        assert q["answer_full"].startswith(next(iter(q["others"].values())))
        assert not q["correct_full"] and q["crossover_full"]
    assert res["crossovers_full"] == 2 and res["score_full"] == 0


def test_items_do_not_depend_on_the_hash_seed(bundle):
    """The same seed gives the same questions in any process (no set-order leaks)."""
    code = ("import hashlib, json; from kvlab import tasks; from kvlab.tokenizer import Tokenizer; "
            "from kvlab.artifacts import default_dir; t = Tokenizer.from_file(f'{default_dir()}/tokenizer.json'); "
            "print(hashlib.sha256(json.dumps([[i.ids, i.key, i.code, i.others] for task in tasks.RETRIEVAL "
            "for i in tasks.make_items(task, t, 256, 2, 5)]).encode()).hexdigest())")
    outs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed,
                   PYTHONPATH=os.pathsep.join([str(ROOT / "site"), str(ROOT)]))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip())
    assert len(outs) == 1


@pytest.mark.parametrize("task", ["ppl", "multi-hop"])
def test_a_kept_reference_gives_the_same_result(engine, task):
    """``reference`` runs the full-cache pass once for several policies: same numbers."""
    kw = dict(context=256, n=2, positions=16)
    policy = {"snapkv": {"ratio": 0.5, "window": 16}}
    alone = evaluate(engine, task, policy, **kw)
    ref: dict = {}
    evaluate(engine, task, Q4, reference=ref, **kw)  # fills the reference
    shared = evaluate(engine, task, policy, reference=ref, **kw)
    for k in ("score", "score_full", "kld_vs_full", "top1_agreement", "positions", "cache_bytes", "kept"):
        assert shared[k] == alone[k], k
    with pytest.raises(EvalError, match="this reference holds"):
        evaluate(engine, task, policy, reference=ref, context=320, n=2, positions=16)


def test_question_after_compression(engine):
    """question "after": the context is compressed first, then the question read and kept."""
    before = evaluate(engine, "needle", {"snapkv": {"ratio": 0.75, "window": 16}}, context=256, n=2)
    after = evaluate(engine, "needle", {"snapkv": {"ratio": 0.75, "window": 16}}, context=256, n=2,
                     question="after")
    assert before["question"] == "before" and after["question"] == "after"
    # after: every question token is kept on top of the compressed context, so more is held
    assert after["cache_bytes"] > before["cache_bytes"]
    with pytest.raises(EvalError, match="question must be one of"):
        evaluate(engine, "needle", {}, context=256, n=2, question="during")

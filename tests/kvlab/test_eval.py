"""The quality harness (``python -m kvlab eval``, ``kvlab.evaluate``) on the real model.

Kept quick: small contexts except the needle check at 1,024 tokens (the task's promise:
the full cache finds the fact at least 90% of the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvlab import tasks
from kvlab.evaluate import EvalError, evaluate
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


def test_needle_full_cache_finds_the_fact(engine):
    res = evaluate(engine, "needle", {}, context=1024, n=10, reuse_full=True)
    print(json.dumps({k: res[k] for k in ("score_full", "seconds")}))
    assert res["score_full"] >= 0.9
    assert len(res["questions"]) == 10 and {q["depth"] for q in res["questions"]} >= {0.1, 0.5, 0.9}
    assert all(q["tokens"] <= 1024 for q in res["questions"])


def test_deterministic_with_the_seed(engine):
    tok = engine.tokenizer
    for task in tasks.RETRIEVAL:
        a, b = (tasks.make_items(task, tok, 512, 3, seed=7) for _ in range(2))
        c = tasks.make_items(task, tok, 512, 3, seed=8)
        assert [i.ids for i in a] == [i.ids for i in b] != [i.ids for i in c]
        assert all(len(i.ids) == 512 for i in a)
    runs = [evaluate(engine, "multi-needle", Q4, context=256, n=2, seed=3) for _ in range(2)]
    for r in runs:
        r.pop("seconds")
    assert runs[0] == runs[1]


def test_multi_hop_items_chain():
    """The asked chain's entity appears as a link target and as a code's owner."""
    from kvlab.tokenizer import Tokenizer
    from kvlab.artifacts import default_dir

    tok = Tokenizer.from_file(f"{default_dir()}/tokenizer.json")
    for item in tasks.make_items("multi-hop", tok, 512, 3, seed=0):
        text = tok.decode(item.ids)
        assert tasks.LINK_SENTENCE.format(a=item.key, b=item.hop) in text
        assert tasks.CODE_SENTENCE.format(key=item.hop, code=item.code) in text
        assert text.endswith(tasks.LINK_QUESTION.format(a=item.key))


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

"""The chunks table's command still works on a small cell, and its importance rows keep the
recipe's entries (the same bytes).

``benchmarks/chunks_table.py`` makes ``results/chunks.jsonl`` (hours on 2 cores at 4,096 and
8,128 tokens); this runs it on a 512-token multi-needle cell, n = 1.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "chunks_table.py"
RESULTS = REPO / "results" / "chunks.jsonl"

pytestmark = pytest.mark.slow


def load():
    spec = importlib.util.spec_from_file_location("chunks_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_command_runs_and_renders(bundle, head_profile, tmp_path):
    out = tmp_path / "t.jsonl"
    rows = ["full", "chunks k=1 r=256", "importance question"]
    args = [sys.executable, str(SCRIPT), "--artifacts", str(bundle), "--cells", "multi-needle 512", "--n", "1",
            "--rows", *rows, "--out", str(out)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["row"] for x in got] == rows
    chunks, imp = got[1]["result"], got[2]["result"]
    assert chunks["routing_accuracy"] is not None and chunks["ratio_vs_fp32"] > 1
    assert imp["routing_accuracy"] is None and imp["policy"]["importance"]["signal"] == "question"
    assert got[0]["result"]["score"] == got[0]["result"]["score_full"]
    again = subprocess.run(args, capture_output=True, text=True)  # every row is there: nothing to do
    assert again.returncode == 0 and len(out.read_text().splitlines()) == 3
    table = subprocess.run([sys.executable, str(SCRIPT), "--render", "--out", str(out)], capture_output=True, text=True)
    assert table.returncode == 0


def test_a_committed_row_recomputes(profiled_engine):
    """The committed chunks k = 1, r = 256 row of multi-needle at 4,096: its first question,
    recomputed (n = 1, ~1.5 min), gives the committed answers, the same share of the fact
    kept and the same routing."""
    from kvlab.evaluate import evaluate

    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    row = next(r for r in rows if (r["row"], r["task"], r["context"]) == ("chunks k=1 r=256", "multi-needle", 4096))
    want = row["result"]["questions"][0]
    got = evaluate(profiled_engine, "multi-needle", row["policy"], context=4096, seed=row["result"]["seed"], n=1)
    q = got["questions"][0]
    for key in ("key", "code", "answer", "correct", "crossover", "answer_full", "kept", "routed"):
        assert q[key] == want[key], key


def test_importance_rows_keep_the_recipes_entries(profiled_engine):
    """The importance rows' budget is the entries the chunks recipe holds per KV head."""
    from kvlab.evaluate import evaluate

    mod = load()
    keep = mod.recipe_entries("multi-needle", 1024, profiled_engine.tokenizer, 0)
    res = evaluate(profiled_engine, "multi-needle", {"chunks": mod.RECIPE["multi-needle"]}, context=1024, n=1)
    per_head = res["tokens_cached"] and [k for row in res["kept"] for k in row]
    answered = res["tokens_cached"] - 1024  # the answer's tokens, appended after the prompt
    assert all(k - answered == keep for k in per_head)


def test_the_mechanism_command_runs(bundle):
    """benchmarks/summary_mechanism.py on one short prompt: a summary key is never longer
    than the mean of its chunk's key norms (the triangle inequality), so the ratio is ≤ 1."""
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "summary_mechanism.py"), "--artifacts", str(bundle),
                        "--context", "256", "--n", "1", "--chunk", "32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    mean, lo, hi = (float(line.split(w)[1].split(",")[0]) for w in (": mean ", "min ", "max "))
    assert 0 < lo <= mean <= hi <= 1

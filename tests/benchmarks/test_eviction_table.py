"""The eviction table's command still works, and one committed row recomputes.

``benchmarks/eviction_table.py`` makes ``results/eviction.jsonl`` (hours on 2 cores, so it
is committed with each row's provenance); this runs the command on a tiny grid and
recomputes one committed ppl row with the engine, so the committed figures stay the code's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "eviction_table.py"
RESULTS = REPO / "results" / "eviction.jsonl"

pytestmark = pytest.mark.slow


def test_the_command_runs_and_renders(bundle, head_profile, tmp_path):
    out = tmp_path / "t.jsonl"
    args = [sys.executable, str(SCRIPT), "--artifacts", str(bundle), "--tasks", "needle", "--contexts", "256",
            "--n", "2", "--techniques", "snapkv", "--keeps", "0.5", "--out", str(out)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["technique"], x["question"]) for x in rows] == [("full", "before"), ("snapkv", "before"),
                                                                ("full", "after"), ("snapkv", "after")]
    assert all(x["provenance"]["commit"] and x["result"]["n"] == 2 for x in rows)
    again = subprocess.run(args, capture_output=True, text=True)  # every row is there: nothing to do
    assert again.returncode == 0 and len(out.read_text().splitlines()) == 4
    table = subprocess.run([sys.executable, str(SCRIPT), "--render", "--out", str(out)], capture_output=True, text=True)
    assert table.returncode == 0 and "| `snapkv` | 50% |" in table.stdout


def test_a_committed_row_recomputes(profiled_engine):
    from kvlab.evaluate import evaluate

    spec = importlib.util.spec_from_file_location("eviction_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    row = next(x for x in rows if x["task"] == "ppl" and x["technique"] != "full")
    want = row["result"]
    got = evaluate(profiled_engine, "ppl", mod.policy_of(row["technique"], row["keep"], row["quant"]),
                   context=row["context"])
    assert got["cache_bytes"] == want["cache_bytes"] and got["kept"] == want["kept"]
    assert got["score"] == pytest.approx(want["score"], rel=1e-3)
    assert got["kld_vs_full"] == pytest.approx(want["kld_vs_full"], rel=2e-2, abs=1e-4)

"""kvlab.results: the committed quant table folded per row, and seed 001's rows beside ours."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from kvlab.observe import SEED_001
from kvlab.results import SEED_ROWS, read_lines, seed_001, summarise

RESULTS = Path(__file__).resolve().parents[2] / "results" / "quant.jsonl"


def test_each_row_is_the_mean_and_spread_of_its_texts():
    lines = read_lines(RESULTS)
    table = summarise(lines)
    for name in ("K4 + V4 + k128", "collapse top 1, mean only", "KIVI K3 + V3"):
        mine = [r["result"] for r in lines if r["row"] == name and r.get("task", "ppl") == "ppl"]
        s = table[name]
        assert s["texts"] == len(mine) == 5
        kl = [x["kld_vs_full"] for x in mine]
        assert s["kl"] == {"mean": pytest.approx(statistics.mean(kl)), "min": min(kl), "max": max(kl)}
        d = [100 * (x["score"] / x["score_full"] - 1) for x in mine]
        assert s["dppl_pct"]["mean"] == pytest.approx(statistics.mean(d))
        assert s["context"] == [1024] and s["positions"] == [256] and s["provenance"]
    retrieval = {r["row"] for r in lines if r.get("task", "ppl") != "ppl"} - {r["row"] for r in lines
                                                                            if r.get("task", "ppl") == "ppl"}
    assert retrieval.isdisjoint(table)  # retrieval lines are not folded into the ppl table


def test_the_seeds_rows_are_all_there_in_its_order():
    res = seed_001(read_lines(RESULTS))
    assert [r["seed"]["config"] for r in res["rows"][:-1]] == [r["config"] for r in SEED_001["ppl_table"]]
    assert [r["row"] for r in res["rows"][:-1]] == list(SEED_ROWS.values())
    assert all(r["here"] is not None for r in res["rows"])  # every one measured (committed)
    assert res["rows"][0]["here"]["kl"]["max"] == 0  # FP32 against itself
    assert {o["row"] for o in res["others"]}.isdisjoint(r["row"] for r in res["rows"])


def test_a_row_not_measured_yet_says_so():
    res = seed_001([])
    assert all(r["here"] is None for r in res["rows"]) and res["others"] == []

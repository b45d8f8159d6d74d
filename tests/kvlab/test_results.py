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


# ---- every committed result as points (the results page, its CSV) -------------------------

REPO = RESULTS.parents[1]


def all_lines():
    return [read_lines(REPO / "results" / f"{n}.jsonl") for n in ("quant", "eviction", "chunks")]


def test_points_cover_every_committed_line_once():
    from kvlab.results import points

    quant, eviction, chunks = all_lines()
    pts = points(quant, eviction, chunks)
    # ppl rows of the quant table fold their texts; every other line is a point of its own
    assert sum(p["n"] for p in pts if p["table"] == "quant" and p["task"] == "ppl") == \
        sum(1 for r in quant if r.get("task", "ppl") == "ppl")
    assert len([p for p in pts if p["table"] == "eviction"]) == len(eviction)
    assert len([p for p in pts if p["table"] == "chunks"]) == len(chunks)
    fp32 = next(p for p in pts if p["table"] == "quant" and p["label"] == "FP32")
    assert fp32["ratio_vs_fp32"] == 1.0 and fp32["kl"] == 0.0 and fp32["n"] == 5
    k4 = next(p for p in pts if p["label"] == "K4 + V4 + k128" and p["task"] == "ppl")
    assert k4["kl"] == pytest.approx(summarise(quant)["K4 + V4 + k128"]["kl"]["mean"], abs=1e-6)
    row = next(r for r in chunks if (r["row"], r["task"], r["context"]) == ("chunks k=1 r=256", "multi-needle", 4096))
    p = next(p for p in pts if (p["table"], p["label"], p["task"], p["context"]) ==
             ("chunks", "chunks k=1 r=256", "multi-needle", 4096))
    assert p["score"] == row["result"]["score"] and p["cache_bytes"] == row["result"]["cache_bytes"]
    assert p["command"] == row["provenance"]["command"] and p["commit"] == row["provenance"]["commit"]


def test_the_csv_reads_back_as_the_points():
    import csv
    import io
    import json

    from kvlab.results import FIELDS, points, to_csv

    pts = points(*all_lines())
    rows = list(csv.DictReader(io.StringIO(to_csv(pts))))
    assert len(rows) == len(pts) and list(rows[0]) == FIELDS
    for r, p in zip(rows, pts):
        assert r["label"] == p["label"] and float(r["ratio_vs_fp32"]) == p["ratio_vs_fp32"]
        assert json.loads(r["policy"]) == p["policy"]


def test_seed_004_rows_quote_the_committed_cells():
    from kvlab.results import SEED_004, seed_004

    _, _, chunks = all_lines()
    rows = seed_004(chunks)
    assert [(r["task"], r["row"]) for r in rows] == list(SEED_004)
    mn = next(r for r in rows if r["row"] == "chunks k=1 r=256")
    line = next(r for r in chunks if r["row"] == "chunks k=1 r=256" and r["task"] == "multi-needle")
    assert mn["here"] == [{"context": 4096, "match": round(line["result"]["score"] * 6), "n": 6,
                           "crossovers": line["result"]["crossovers"], "cache_bytes": line["result"]["cache_bytes"],
                           "ratio_vs_fp32": line["result"]["ratio_vs_fp32"], "kl": line["result"]["kld_vs_full"]}]


def test_seed_002_and_000_claims_quote_the_rows():
    from kvlab.results import SEED_000, SEED_002, seed_claims

    quant, _, _ = all_lines()
    table = summarise(quant)
    for claims in (SEED_002, SEED_000):
        got = seed_claims(quant, claims)
        assert [c["claim"] for c in got] == [c for c, _ in claims]
        for c in got:
            for r in c["rows"]:
                assert r["here"] == table[r["row"]], r["row"]  # every row named is committed

"""The committed results, summarised: seed 001's table on this model beside the seed's own.

``results/quant.jsonl`` (``benchmarks/quant_table.py``) holds one line per (row, text): a
``kvlab eval --task ppl`` result and its provenance. ``summarise`` folds the lines of each
row into the figures the README's table and the page show (mean over the texts, with the
spread), and ``seed_001`` sets the seed's rows (Llama 3.2 1B, quant.cpp) beside the same
configurations measured here. The builder writes the result to ``results.json`` in the
site and renders it on the profile page; nothing in it is typed in by hand but the seed's
published numbers (``kvlab.observe.SEED_001``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .observe import SEED_001

#: this lab's row for each of the seed's (its table's order), and the seed's PyramidKV line,
#: which it gives in words ("~same" at "6.4x+") rather than as a PPL
SEED_ROWS = {
    "FP32 baseline": "FP32",
    "K=4b + V=FP16 + k128": "K4 + V16 + k128",
    "K=4b + V=Q4 + k128": "K4 + V4 + k128",
    "K=3b + V=Q4 + k128": "K3 + V4 + k128",
    "K=4b + V=Q2 + k128": "K4 + V2 + k128",
}
SEED_PYRAMID = {"config": "K=4b + V=Q4 + k128 + PyramidKV (b=256)", "row": "K4 + V4 + k128 + PyramidKV (b=256)",
                "claim": "~same PPL at 6.4x+"}


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def spread(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "min": min(xs), "max": max(xs)}


def summarise(lines: list[dict]) -> dict[str, dict]:
    """Per row name (first-seen order), over its ppl lines: texts, ×fp32, KL, top-1, PPL and
    ΔPPL vs the full cache (%, mean and spread), the (context, positions) and provenance."""
    by: dict[str, list[dict]] = {}
    for r in lines:
        if r.get("task", "ppl") == "ppl":
            by.setdefault(r["row"], []).append(r)
    out = {}
    for name, rows in by.items():
        rows = sorted(rows, key=lambda r: r["seed"])
        res = [r["result"] for r in rows]
        out[name] = {
            "texts": len(res),
            "seeds": [r["seed"] for r in rows],
            "ratio_vs_fp32": statistics.mean(x["ratio_vs_fp32"] for x in res),
            "kl": spread([x["kld_vs_full"] for x in res]),
            "top1": statistics.mean(x["top1_agreement"] for x in res),
            "ppl": statistics.mean(x["score"] for x in res),
            "dppl_pct": spread([100 * (x["score"] / x["score_full"] - 1) for x in res]),
            "context": sorted({r["context"] for r in rows}),
            "positions": sorted({r["positions"] for r in rows}),
            "provenance": sorted({(r["provenance"]["command"], r["provenance"]["commit"], r["provenance"]["host"])
                                  for r in rows}),
            "dates": [min(r["provenance"]["date"] for r in rows), max(r["provenance"]["date"] for r in rows)],
        }
    return out


def seed_001(lines: list[dict]) -> dict:
    """The seed's table and this model's figures for the same configurations (None where a
    row is not measured yet), plus every other row measured here."""
    here = summarise(lines)
    rows = []
    for seed_row in SEED_001["ppl_table"]:
        ours = SEED_ROWS[seed_row["config"]]
        rows.append({"seed": seed_row, "row": ours, "here": here.get(ours)})
    rows.append({"seed": {"config": SEED_PYRAMID["config"], "claim": SEED_PYRAMID["claim"]},
                 "row": SEED_PYRAMID["row"], "here": here.get(SEED_PYRAMID["row"])})
    mapped = {r["row"] for r in rows}
    return {
        "format": "kvlab-results-1",
        "seed_model": SEED_001["model"],
        "rows": rows,
        "others": [{"row": name, "here": s} for name, s in here.items() if name not in mapped],
        "source": "results/quant.jsonl (python benchmarks/quant_table.py)",
    }

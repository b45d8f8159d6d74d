"""The committed results, summarised: seed 001's table on this model beside the seed's own,
and every measured configuration as one flat list of points (the results page, its CSV).

``results/quant.jsonl`` (``benchmarks/quant_table.py``) holds one line per (row, text): a
``kvlab eval --task ppl`` result and its provenance. ``summarise`` folds the lines of each
row into the figures docs/results.md's table and the page show (mean over the texts, with the
spread), and ``seed_001`` sets the seed's rows (Llama 3.2 1B, quant.cpp) beside the same
configurations measured here. The builder writes the result to ``results.json`` in the
site and renders it on the profile page; nothing in it is typed in by hand but the seed's
published numbers (``kvlab.observe.SEED_001``, ``SEED_004`` here).

``points`` flattens the three committed tables (``results/quant.jsonl``,
``eviction.jsonl``, ``chunks.jsonl``) into one row per configuration and task: compression
vs fp32 measured on the store, KL vs the full cache (mean and spread), the task's score
beside the full cache's, and the provenance of its lines (command, commit, date, host).
The builder writes them as ``results_all.json`` and ``results.csv``.
"""

from __future__ import annotations

import csv
import io
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


# ---------------------------------------------------------------------------------------
# Seed 004 beside this model, and every result as points
# ---------------------------------------------------------------------------------------

#: seed 004's own numbers (Qwen2.5-1.5B; its needle row at 16k tokens), keyed by
#: (task, this lab's row name in results/chunks.jsonl)
SEED_004 = {
    ("needle", "full"): "2/3 · 881 MB (16k)",
    ("needle", "chunks k=3 r=1024"): "2/3 · 87 MB (10×, 16k)",
    ("multi-hop", "full"): "6/6 · 224 MB",
    ("multi-hop", "chunks k=3 r=1024"): "6/6 · 67 MB (3.4×)",
    ("multi-needle", "full"): "6/6 · 223 MB",
    ("multi-needle", "chunks k=1 r=256"): "5/6 · 22 MB (10×)",
    ("multi-needle", "routing, no summaries, k=1 r=256"): "0/6, routing right",
    ("multi-needle", "importance question"): "crossovers (right name, another fact's digits)",
}

FIELDS = ["table", "label", "task", "context", "question", "n", "ratio_vs_fp32", "cache_bytes", "kl", "kl_min",
          "kl_max", "top1", "score", "score_full", "score_kind", "crossovers", "policy", "command", "commit", "date",
          "host"]


def _point(table: str, label: str, lines: list[dict]) -> dict:
    """One configuration on one task from its result lines (several texts for ppl)."""
    res = [r["result"] for r in lines]
    kls = [x["kld_vs_full"] for x in res if x["kld_vs_full"] is not None]
    prov = [r["provenance"] for r in lines]
    retrieval = res[0]["task"] != "ppl"
    return {
        "table": table, "label": label, "task": res[0]["task"], "context": res[0]["context"],
        "question": res[0].get("question"),
        "n": sum(x["n"] for x in res) if retrieval else len(res),  # questions, or texts
        "ratio_vs_fp32": round(statistics.mean(x["ratio_vs_fp32"] for x in res), 4),
        "cache_bytes": round(statistics.mean(x["cache_bytes"] for x in res)),
        "kl": round(statistics.mean(kls), 6) if kls else None,
        "kl_min": round(min(kls), 6) if kls else None, "kl_max": round(max(kls), 6) if kls else None,
        "top1": round(statistics.mean(x["top1_agreement"] for x in res if x["top1_agreement"] is not None), 6)
        if any(x["top1_agreement"] is not None for x in res) else None,
        "score": round(statistics.mean(x["score"] for x in res), 6),
        "score_full": round(statistics.mean(x["score_full"] for x in res), 6),
        "score_kind": res[0]["score_kind"],
        "crossovers": sum(x.get("crossovers", 0) for x in res) if retrieval else None,
        "policy": res[0]["policy"],
        "command": "; ".join(sorted({p["command"] for p in prov})),
        "commit": ", ".join(sorted({p["commit"] for p in prov})),
        "date": max(p["date"] for p in prov),
        "host": "; ".join(sorted({p["host"] for p in prov})),
    }


def points(quant: list[dict], eviction: list[dict], chunks: list[dict]) -> list[dict]:
    """Every committed configuration × task as a point (see FIELDS), in the tables' order."""
    groups: dict[tuple, list[dict]] = {}
    for r in quant:  # a row over several texts (ppl) or a retrieval run
        groups.setdefault(("quant", r["row"], r.get("task", "ppl"), r["context"]), []).append(r)
    for r in eviction:
        label = f"{r['technique']} {round(100 * r['keep'])} % kept" + (" + q4" if r["quant"] else "")
        if r["technique"] == "full":
            label = "full" + (" + q4" if r["quant"] else "")
        groups.setdefault(("eviction", label, r["task"], r["context"], r["question"]), []).append(r)
    for r in chunks:
        groups.setdefault(("chunks", r["row"], r["task"], r["context"]), []).append(r)
    return [_point(key[0], key[1], lines) for key, lines in groups.items()]


def to_csv(pts: list[dict]) -> str:
    """The points as CSV (FIELDS as columns; the policy as JSON text)."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for p in pts:
        w.writerow({k: json.dumps(p[k]) if k == "policy" else p[k] for k in FIELDS})
    return out.getvalue()


def seed_004(chunk_lines: list[dict]) -> list[dict]:
    """Seed 004's rows beside this model's: per (task, row), the seed's words and this
    lab's cells ({context, match, n, crossovers, cache_bytes, ratio_vs_fp32, kl})."""
    out = []
    for (task, row), theirs in SEED_004.items():
        here = [{"context": r["context"], "match": round(r["result"]["score"] * r["result"]["n"]),
                 "n": r["result"]["n"], "crossovers": r["result"]["crossovers"],
                 "cache_bytes": r["result"]["cache_bytes"], "ratio_vs_fp32": r["result"]["ratio_vs_fp32"],
                 "kl": r["result"]["kld_vs_full"]}
                for r in chunk_lines if r["task"] == task and r["row"] == row]
        out.append({"task": task, "row": row, "seed": theirs, "here": here})
    return out


# ---------------------------------------------------------------------------------------
# Seeds 002 and 000: their claims beside the rows of results/quant.jsonl that test them
# ---------------------------------------------------------------------------------------

#: (what the seed says, this lab's rows that measure it)
SEED_002 = [
    ("Per-head bits by Rényi-2 attention entropy, b_h = b̄ + 0.25·(H̄ − H₂(h)), improve quality "
     "+8 % over uniform bits at the same bytes",
     ["K4 + V4", "entropy_bits 4", "entropy_bits 4, no skip", "K3 + V3", "entropy_bits 3", "entropy_bits 3, no skip"]),
    ("The lowest-entropy 2 % of heads (sinks) cause most of the loss: keeping them unquantized helps more "
     "than redistributing bits over all the others",
     ["entropy_bits 4, skip only", "entropy_bits 4, skip only, extra bytes"]),
]
SEED_000 = [
    ("The most collapsed head's keys as one mean key plus a small residual: 2× with zero measurable loss (±0.007)",
     ["collapse top 1, K8 residual"]),
    ("The same head at 500–680× (the mean alone): quality better than baseline, the mean acting as a denoiser",
     ["collapse top 1, mean only", "collapse top 1, mean only, prompt mean"]),
    ("Not in the seed: more heads collapsed, here",
     ["collapse top 5, mean only", "collapse top 10, mean only", "collapse top 20, mean only",
      "collapse top 20, K4 residual", "collapse top 20, K2 residual"]),
]


def seed_claims(lines: list[dict], claims: list[tuple[str, list[str]]]) -> list[dict]:
    """Each claim with its rows as measured here (``summarise``'s figures; None where a row
    is not in the committed lines)."""
    here = summarise(lines)
    return [{"claim": claim, "rows": [{"row": r, "here": here.get(r)} for r in rows]} for claim, rows in claims]

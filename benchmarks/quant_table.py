"""The quantization table: seed 001's rows (and this lab's formats beside them) on SmolLM2,
over several texts, through ``kvlab eval --task ppl`` (native host).

    python benchmarks/quant_table.py [--rows "K4 + V4" ...] [--seeds 0 1 2 3 4]
        [--context 1024] [--positions 256] [--threads 1] [--out results/quant.jsonl]
    python benchmarks/quant_table.py --task needle --rows ... --seeds 0   # retrieval rows
    python benchmarks/quant_table.py --render [--out FILE]     # the Markdown tables

Each (row, seed) is one ``evaluate``: ``context`` tokens of text ``seed`` read into the
cache, then ``positions`` teacher-forced tokens scored against the full fp32 cache's
predictions (KL, top-1) and the text (PPL). Results are appended to ``--out`` as JSON
lines with their provenance as they finish; a rerun skips the (row, seed) pairs already
there. The rendered table gives, per row, the mean over the texts and the spread (min to
max) of KL and of the PPL change, so that one text's luck does not read as a result.
``--task needle`` / ``multi-hop`` runs the retrieval tasks instead (n = 10 questions of
``context`` tokens per seed, the question read after the context; no eviction, so before
and after are the same here), rendered as a second table.

Seed 001 (quant.cpp on Llama 3.2 1B) reports, each "+ k128" (the newest 128 keys kept in
fp32): K4 + V16 +1.3 % PPL at 2.9x, K4 + V4 +3.0 % at 6.4x, K3 + V4 +9.8 % at 7.1x, K4 + V2
+102 % at 8.0x, and "+ PyramidKV (b=256)" on top of K4 + V4 + k128: "~same" at "6.4x+". The
rows here are its configurations with and without k128 (``recent_k: 128``), and this lab's
other formats and layouts beside them (rotation, TurboQuant-style codebooks, KIVI's
per-channel keys).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from kvlab.artifacts import default_dir, default_profile
from kvlab.engine import Engine
from kvlab.evaluate import evaluate
from kvlab.host.native import NativeHost
from kvlab.results import read_lines, summarise

REPO = Path(__file__).resolve().parent.parent


def q(**kw) -> dict:
    return {"quant": kw}


# name -> policy; the first is the reference every other row is compared with
ROWS = {
    "FP32": {},
    "K8 + V8": q(k_bits=8, v_bits=8),
    "K4 + V16": q(k_bits=4, v_bits=16),
    "K4 + V4": q(k_bits=4, v_bits=4),
    "K3 + V4": q(k_bits=3, v_bits=4),
    "K4 + V2": q(k_bits=4, v_bits=2),
    "K3 + V3": q(k_bits=3, v_bits=3),
    "q4_0 / q4_0": q(k_format="q4_0", v_format="q4_0"),
    "K4 + V4 rotated": q(k_bits=4, v_bits=4, rotate=True),
    "K3 + V4 rotated": q(k_bits=3, v_bits=4, rotate=True),
    "K3 + V3 rotated": q(k_bits=3, v_bits=3, rotate=True),
    "K2 + V2": q(k_bits=2, v_bits=2),
    "K2 + V2 rotated": q(k_bits=2, v_bits=2, rotate=True),
    "turbo4 / turbo4": q(k_format="turbo4", v_format="turbo4"),
    "turbo3 / turbo3": q(k_format="turbo3", v_format="turbo3"),
    "turbo3 / turbo2": q(k_format="turbo3", v_format="turbo2"),
    "K4 + V16 + k128": q(k_bits=4, v_bits=16, recent_k=128),
    "K4 + V4 + k128": q(k_bits=4, v_bits=4, recent_k=128),
    "K4 + V4 + k128 + PyramidKV (b=256)": q(k_bits=4, v_bits=4, recent_k=128) | {"pyramidkv": {"budget": 256}},
    "K3 + V4 + k128": q(k_bits=3, v_bits=4, recent_k=128),
    "K4 + V2 + k128": q(k_bits=4, v_bits=2, recent_k=128),
    "KIVI K4 + V4": q(k_bits=4, v_bits=4, k_axis="channel"),
    "KIVI K3 + V3": q(k_bits=3, v_bits=3, k_axis="channel"),
    "KIVI K3 + V2": q(k_bits=3, v_bits=2, k_axis="channel"),
    "KIVI K2 + V2": q(k_bits=2, v_bits=2, k_axis="channel"),
    "KIVI K2 + V2, r128": q(k_bits=2, v_bits=2, k_axis="channel", recent_k=128, recent_v=128),
    # seed 002: bits per KV head from the profile's entropy, at uniform 4 / 3 bits' bytes
    "entropy_bits 4": {"entropy_bits": {"bits": 4}},
    "entropy_bits 4, no skip": {"entropy_bits": {"bits": 4, "skip": 0.0}},
    "entropy_bits 4, skip only": {"entropy_bits": {"bits": 4, "alpha": 0.0}},
    "entropy_bits 4, skip only, extra bytes": {"entropy_bits": {"bits": 4, "alpha": 0.0, "match_bytes": False}},
    "entropy_bits 4 + 9 retrieval heads": {"entropy_bits": {"bits": 4, "retrieval": 9}},
    "entropy_bits 3": {"entropy_bits": {"bits": 3}},
    "entropy_bits 3, no skip": {"entropy_bits": {"bits": 3, "skip": 0.0}},
    # seed 000: the most collapsed KV heads' keys as a mean pre-RoPE key + a residual
    "collapse top 1, K8 residual": {"collapse": {"heads": 1, "bits": 8}},
    "collapse top 1, mean only": {"collapse": {"heads": 1, "bits": 0}},
    "collapse top 1, mean only, prompt mean": {"collapse": {"heads": 1, "bits": 0, "mean": "prompt"}},
    "collapse top 5, mean only": {"collapse": {"heads": 5, "bits": 0}},
    "collapse top 10, mean only": {"collapse": {"heads": 10, "bits": 0}},
    "collapse top 10, mean only, prompt mean": {"collapse": {"heads": 10, "bits": 0, "mean": "prompt"}},
    "collapse top 20, mean only": {"collapse": {"heads": 20, "bits": 0}},
    "collapse top 20, mean only, prompt mean": {"collapse": {"heads": 20, "bits": 0, "mean": "prompt"}},
    "collapse top 20, K4 residual": {"collapse": {"heads": 20, "bits": 4}},
    "collapse top 20, K2 residual": {"collapse": {"heads": 20, "bits": 2}},
    "K4 + V4 + k128, collapse top 20 mean only": q(k_bits=4, v_bits=4, recent_k=128) | {"collapse": {"heads": 20, "bits": 0}},
}


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def run(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = out.read_text().splitlines() if out.exists() else []
    done = {(r["row"], r["seed"], r["context"], r["positions"], r.get("task", "ppl")) for r in map(json.loads, lines)}
    prof = json.loads(Path(args.head_profile or default_profile()).read_text())
    engine = Engine(NativeHost(args.artifacts or default_dir(), threads=args.threads), profile=prof)
    retrieval = args.task != "ppl"
    positions = 0 if retrieval else args.positions
    names = args.rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown row {unknown[0]!r}; known: {', '.join(ROWS)}")
    for seed in args.seeds:
        ref: dict = {}  # the full cache's pass of this text, run once
        for name in names:
            if (name, seed, args.context, positions, args.task) in done:
                continue
            t0 = time.perf_counter()
            if retrieval:
                res = evaluate(engine, args.task, ROWS[name], context=args.context, seed=seed, n=args.n,
                               question="after", reuse_full=not ROWS[name], reference=ref)
            else:
                res = evaluate(engine, "ppl", ROWS[name], context=args.context, seed=seed, positions=positions,
                               reuse_full=not ROWS[name], reference=ref)
            res.pop("texts", None)
            res.pop("items", None)
            row = {"row": name, "seed": seed, "context": args.context, "positions": positions, "task": args.task,
                   "result": res,
                   "provenance": {
                       "command": " ".join(["python", "benchmarks/quant_table.py", *sys.argv[1:]]),
                       "commit": commit(),
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "host": f"{platform.node()} ({platform.machine()}, {args.threads} threads)"}}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            what = f"{args.task} {res['score']}" if retrieval else f"PPL {res['score']} vs {res['score_full']}"
            print(f"text {seed} {name}: KL {res['kld_vs_full']} {what} ({time.perf_counter() - t0:.0f} s)", flush=True)


def render(args) -> None:
    every = read_lines(Path(args.out))
    rows = [r for r in every if r.get("task", "ppl") == "ppl"]
    table = summarise(every)  # per row: the mean over its texts and the spread (kvlab.results)
    order = [n for n in ROWS if n in table] + sorted(n for n in table if n not in ROWS)
    print("| configuration | texts | ×fp32 | KL (mean; min–max) | top-1 | PPL | ΔPPL (mean; min–max) |")
    print("|---|---|---|---|---|---|---|")
    for name in order:
        t = table[name]
        kl, d = t["kl"], t["dppl_pct"]
        print(f"| {name} | {t['texts']} | {t['ratio_vs_fp32']:.2f} | {kl['mean']:.4f}; {kl['min']:.4f}–{kl['max']:.4f} | "
              f"{100 * t['top1']:.1f} % | {t['ppl']:.2f} | {d['mean']:+.1f} %; {d['min']:+.1f}–{d['max']:+.1f} % |")
    ctx = {(r["context"], r["positions"]) for r in rows}
    print(f"\n(context, positions) per text: {sorted(ctx)}")
    tasks = sorted({r.get("task", "ppl") for r in every} - {"ppl"})
    if not tasks:
        return
    print("\n| configuration | ×fp32 | " + " | ".join(f"{t} (n, context)" for t in tasks) + " |")
    print("|---|---|" + "---|" * len(tasks))
    names = [n for n in ROWS if any(r["row"] == n and r.get("task", "ppl") in tasks for r in every)]
    for name in names:
        cells, ratio = [], None
        for t in tasks:
            got = [r for r in every if r["row"] == name and r.get("task", "ppl") == t]
            if not got:
                cells.append("")
                continue
            right = sum(round(r["result"]["score"] * r["result"]["n"]) for r in got)
            total = sum(r["result"]["n"] for r in got)
            ratio = got[0]["result"]["ratio_vs_fp32"]
            cells.append(f"{right}/{total} ({got[0]['context']})")
        print(f"| {name} | {ratio:.2f} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--head-profile", default=None)
    ap.add_argument("--task", default="ppl", choices=("ppl", "needle", "multi-needle", "multi-hop"))
    ap.add_argument("--n", type=int, default=10, help="questions per seed (retrieval tasks)")
    ap.add_argument("--rows", nargs="+", default=None, help="row names (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="texts")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results" / "quant.jsonl"))
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    render(args) if args.render else run(args)


if __name__ == "__main__":
    main()

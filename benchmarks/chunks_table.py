"""Seed 004's table on SmolLM2: chunk summaries plus routed exact chunks, beside its three
failures (routing without summaries, question-blind and question-aware token importance),
through ``kvlab eval`` (native host).

    python benchmarks/chunks_table.py [--cells "multi-needle 4096" ...] [--rows NAME ...]
        [--n 6] [--seed 0] [--threads 1] [--out results/chunks.jsonl]
    python benchmarks/chunks_table.py --render [--out FILE]     # the Markdown table

A *cell* is a task at a context (the seed's: needle, multi-hop and multi-needle at 4,096
tokens, needle at 8,128: the model's whole context of 8,192 positions, less the 64 the
harness keeps for the answer); a *row* is a policy. Each (cell, row) is one
``evaluate`` of n = 6 questions (the seed's count), seed 0, the question read as the
prompt's last run (``question`` "before": routing and the question-aware signal need it).
Importance rows keep the same entries per KV head as the cell's seed recipe (``chunks`` k = 3,
r = 1024 for needle and multi-hop; k = 1, r = 256 for multi-needle): the same bytes. Rows are
appended to ``--out`` as JSON lines with their provenance; a rerun skips those there.

Seed 004 (Qwen2.5-1.5B): single needle 16k baseline 2/3, summary k=3 r=1024 2/3 at 10×;
multi-hop 4k 6/6 → 6/6 at 3.4×; multi-needle 4k 6/6 → 5/6 at 10× (k=1 r=256); routing
without summaries 0/6 on multi-needle; question-aware importance: crossovers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

from kvlab import tasks
from kvlab.artifacts import default_dir, default_profile
from kvlab.engine import Engine
from kvlab.evaluate import evaluate
from kvlab.host.native import NativeHost
from kvlab.results import SEED_004

REPO = Path(__file__).resolve().parent.parent
CELLS = [("needle", 4096), ("multi-hop", 4096), ("multi-needle", 4096), ("needle", 8128)]
K3, K1 = {"k": 3, "recent": 1024}, {"k": 1, "recent": 256}
RECIPE = {"needle": K3, "multi-hop": K3, "multi-needle": K1}  # the seed's setting per task


def chunks(base: dict, **kw) -> dict:
    return {"chunks": base | kw}


# name -> (policy, or None for importance at the recipe's entries, its signal), and the cells
# it runs in (None: every cell)
ROWS = {
    "full": ({}, None),
    "chunks k=3 r=1024": (chunks(K3), None),
    "chunks k=1 r=256": (chunks(K1), None),
    "routing, no summaries, k=3 r=1024": (chunks(K3, summaries=False), {c for c in CELLS if RECIPE[c[0]] is K3}),
    "routing, no summaries, k=1 r=256": (chunks(K1, summaries=False), {c for c in CELLS if RECIPE[c[0]] is K1}),
    "zero-key summaries, k=1 r=256": (chunks(K1, summary="zero_key"), {("multi-needle", 4096)}),
    "zero summaries, k=1 r=256": (chunks(K1, summary="zero"), {("multi-needle", 4096)}),
    "routed by the context, k=1 r=256": (chunks(K1, route_by="context"), {("multi-needle", 4096)}),
    "routed by all heads, k=1 r=256": (chunks(K1, heads="all"), {("multi-needle", 4096)}),
    "importance sum": ("sum", None),
    "importance max": ("max", None),
    "importance tail": ("tail", None),
    "importance question": ("question", None),
}


def recipe_entries(task: str, context: int, tokenizer, seed: int) -> int:
    """Entries per KV head the task's chunks recipe keeps once the prompt is read, for the
    cell's first question: every prompt token but the summarized chunks', plus one summary
    per summarized chunk (its routed chunks taken as whole chunks)."""
    item = tasks.make_items(task, tokenizer, context, 1, seed)[0]
    p = {"chunk": 64, "sinks": 4} | RECIPE[task]
    n, n_ctx = len(item.ids), item.question_at
    chunked = max(0, n_ctx - p["recent"] - p["sinks"])
    n_chunks = math.ceil(chunked / p["chunk"])
    k = min(p["k"], n_chunks)
    return n - max(0, chunked - k * p["chunk"]) + (n_chunks - k)


def policy_of(name: str, task: str, context: int, tokenizer, seed: int) -> dict:
    pol, _ = ROWS[name]
    if isinstance(pol, dict):
        return pol
    keep = recipe_entries(task, context, tokenizer, seed)
    return {"importance": {"signal": pol, "budget": keep}}


def runs_in(name: str, cell: tuple[str, int]) -> bool:
    where = ROWS[name][1]
    return where is None or cell in where


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def parse_cell(text: str) -> tuple[str, int]:
    task, ctx = text.rsplit(" ", 1)
    return task, int(ctx)


def run(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["row"], r["task"], r["context"]) for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else set()
    prof = json.loads(Path(args.head_profile or default_profile()).read_text())
    engine = Engine(NativeHost(args.artifacts or default_dir(), threads=args.threads), profile=prof)
    names = args.rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown row {unknown[0]!r}; known: {', '.join(ROWS)}")
    for cell in map(parse_cell, args.cells) if args.cells else CELLS:
        task, context = cell
        ref: dict = {}  # the full cache's pass of the cell, run once
        for name in ["full"] + [n for n in names if n != "full"]:
            if (name, task, context) in done or not runs_in(name, cell):
                continue
            t0 = time.perf_counter()
            pol = policy_of(name, task, context, engine.tokenizer, args.seed)
            res = evaluate(engine, task, pol, context=context, seed=args.seed, n=args.n, reuse_full=not pol,
                           reference=ref)
            res.pop("texts", None)
            row = {"row": name, "task": task, "context": context, "policy": pol, "result": res,
                   "provenance": {
                       "command": " ".join(["python", "benchmarks/chunks_table.py", *sys.argv[1:]]),
                       "commit": commit(),
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "host": f"{platform.node()} ({platform.machine()}, {args.threads} threads)"}}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{task} {context} {name}: {res['score']:.3f} ({res['crossovers']} cross) "
                  f"KL {res['kld_vs_full']} ×{res['ratio_vs_fp32']} routed {res['routing_accuracy']} "
                  f"kept {res['answer_kept']} ({time.perf_counter() - t0:.0f} s)", flush=True)


def cell_text(res: dict) -> str:
    n = res["n"]
    s = f"{round(res['score'] * n)}/{n}"
    if res.get("crossovers"):
        s += f" ({res['crossovers']}×)"
    return s


def render(args) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    cells = list(dict.fromkeys((r["task"], r["context"]) for r in rows))
    by = {(r["row"], r["task"], r["context"]): r["result"] for r in rows}
    print("Each cell: match (crossovers×) · KV MiB (×fp32) · KL · routed · kept\n")
    print("| row | " + " | ".join(f"{t} {c}" for t, c in cells) + " |")
    print("|---|" + "---|" * len(cells))
    for name in ROWS:
        line = []
        for cell in cells:
            res = by.get((name,) + cell)
            if res is None:
                line.append("")
                continue
            routed = "–" if res.get("routing_accuracy") is None else f"{res['routing_accuracy'] * res['n']:.0f}/{res['n']}"
            kl = "–" if res["kld_vs_full"] is None else f"{res['kld_vs_full']:.3f}"
            line.append(f"{cell_text(res)} · {res['cache_bytes'] / 2 ** 20:.1f} ({res['ratio_vs_fp32']:.1f}×) · {kl} · "
                        f"{routed} · {res['answer_kept']:.2f}")
        if any(line):
            print(f"| {name} | " + " | ".join(line) + " |")
    print("\nBeside the seed (match · KV cache; here: MiB and ×fp32 at the cell's context):\n")
    print("| task | row | seed 004, Qwen2.5-1.5B | SmolLM2-135M, here |")
    print("|---|---|---|---|")
    for (task, name), theirs in SEED_004.items():
        ours = [f"{c}: {cell_text(by[(name, t, c)])} · {by[(name, t, c)]['cache_bytes'] / 2 ** 20:.1f} MiB "
                f"({by[(name, t, c)]['ratio_vs_fp32']:.1f}×)" for t, c in cells if t == task and (name, t, c) in by]
        print(f"| {task} | {name} | {theirs} | {'; '.join(ours) or '–'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--head-profile", default=None)
    ap.add_argument("--cells", nargs="+", default=None, help='e.g. "multi-needle 4096"')
    ap.add_argument("--rows", nargs="+", default=None)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results" / "chunks.jsonl"))
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    render(args) if args.render else run(args)


if __name__ == "__main__":
    main()

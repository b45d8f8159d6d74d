"""The eviction quality table: every eviction technique at 50 %, 25 % and 10 % of the prompt
kept, through ``kvlab eval`` (native host).

    python benchmarks/eviction_table.py [--tasks ppl needle ...] [--contexts 1024 2048]
        [--keeps 0.5 0.25 0.1] [--techniques snapkv ...] [--questions before after]
        [--threads 1] [--out results/eviction.jsonl]
    python benchmarks/eviction_table.py --render [--out FILE]     # the Markdown table

Each row is one ``evaluate`` (n = 10 questions, seed 0; ppl: 1,024 or 2,048 tokens read,
then 256 teacher-forced positions) of ``{technique: {"ratio": 1 − keep}}``; kvpress's
semantics, the prompt compressed once it is read. Retrieval rows run twice: with the
question read *before* the compression (inside SnapKV's window) and *after* it (kvpress's
default). ``--quant`` adds each technique with q4/q4 on top. Rows are appended to ``--out``
(JSON lines, each with its provenance: command, commit, date, host) as they finish, and a
rerun skips the rows already there, so a long grid can be made in parts.
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
from kvlab.techniques import REGISTRY

REPO = Path(__file__).resolve().parent.parent
EVICTING = [n for n, t in REGISTRY.items() if t.family == "evict"]
Q4 = {"quant": {"k_bits": 4, "v_bits": 4}}


def policy_of(technique: str, keep: float, quant: bool) -> dict:
    pol = {technique: {"ratio": round(1 - keep, 6)}} if technique != "full" else {}
    return pol | (Q4 if quant else {})


def key_of(row: dict) -> tuple:
    return (row["technique"], row["keep"], row["quant"], row["task"], row["context"], row.get("question"))


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def run(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {key_of(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    prof = json.loads(Path(args.head_profile or default_profile()).read_text())
    engine = Engine(NativeHost(args.artifacts or default_dir(), threads=args.threads), profile=prof)
    refs: dict = {}
    grid = [("full", 1.0, False)] + [(t, k, q) for q in ([False, True] if args.quant else [False])
                                     for t in args.techniques for k in args.keeps]
    for context in args.contexts:
        for task in args.tasks:
            for question in (args.questions if task != "ppl" else [None]):
                for technique, keep, quant in grid:
                    row = {"technique": technique, "keep": keep, "quant": quant, "task": task,
                           "context": context, "question": question}
                    if key_of(row) in done:
                        continue
                    t0 = time.perf_counter()
                    ref = refs.setdefault((task, context), {})  # the full cache's pass, run once
                    res = evaluate(engine, task, policy_of(technique, keep, quant), context=context,
                                   n=args.n, reuse_full=technique == "full", question=question or "before",
                                   reference=ref)
                    res.pop("texts", None)
                    row |= {"result": res, "provenance": {
                        "command": " ".join(["python", "benchmarks/eviction_table.py", *sys.argv[1:]]),
                        "commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                            timespec="seconds"), "host": f"{platform.node()} ({platform.machine()}, "
                                                          f"{args.threads or 'default'} threads)"}}
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{task} {context} {question or ''} {technique} keep {keep} {'+q4' if quant else ''}: "
                          f"score {res['score']} KL {res['kld_vs_full']} ({time.perf_counter() - t0:.0f} s)",
                          flush=True)


def render(args) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    cols = sorted({(r["task"], r["context"], r.get("question")) for r in rows},
                  key=lambda c: (c[1], ["ppl", "needle", "multi-needle", "multi-hop"].index(c[0]), c[2] or ""))
    by = {key_of(r): r["result"] for r in rows}
    head = ["technique", "kept", "×fp32 (retrieval)"]
    for task, ctx, q in cols:
        head.append(f"{task} {ctx}" + (f" (question {q})" if q else " KL / top-1 / PPL"))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for tech, keep, quant in sorted({(r["technique"], r["keep"], r["quant"]) for r in rows},
                                    key=lambda x: (x[0] != "full", x[2], x[0], -x[1])):
        cells, ratio = [], None
        for task, ctx, q in cols:
            res = by.get((tech, keep, quant, task, ctx, q))
            if res is None:
                cells.append("")
                continue
            if task != "ppl" and ratio is None:  # the bytes of the prompt itself (ppl also keeps 256 more)
                ratio = res["ratio_vs_fp32"]
            if task == "ppl":
                cells.append(f"{res['kld_vs_full']:.4f} / {res['top1_agreement']:.3f} / {res['score']:.2f}")
            else:
                extra = f" ({res['crossovers']} cross)" if res.get("crossovers") else ""
                cells.append(f"{res['score']:.1f}{extra}")
        name = f"`{tech}`" + (" + q4/q4" if quant else "")
        print(f"| {name} | {keep:.0%} | {'' if ratio is None else f'{ratio:.1f}'} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--head-profile", default=None)
    ap.add_argument("--tasks", nargs="+", default=["ppl", "needle", "multi-needle", "multi-hop"])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    ap.add_argument("--techniques", nargs="+", default=EVICTING)
    ap.add_argument("--questions", nargs="+", default=["before", "after"])
    ap.add_argument("--quant", action="store_true", help="also each technique with q4/q4 on top")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results" / "eviction.jsonl"))
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    render(args) if args.render else run(args)


if __name__ == "__main__":
    main()

"""How seed 004's page lesson chose its question: multi-needle items run under the lesson's
policies (``kvlab.lesson``, native host), one line each.

    python benchmarks/lesson_scan.py [--context 1024] [--seeds 0 1 2] [--n 6] [--k 1] [--recent 128]

Per item: the full cache's answer; question-aware importance at the entries the chunks
recipe keeps (the same bytes), its answer and whether it crossed over; chunks (summaries +
routing) and routing without summaries, their answers and whether the routed chunks held the
asked fact. The lesson wants an item the full cache answers, so that every wrong answer is
the cache's; the printout shows which of the seed's three failures this model shows there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kvlab import lesson
from kvlab.artifacts import default_dir, default_profile
from kvlab.engine import Engine
from kvlab.host.native import NativeHost


def entries(rep: dict, tokens: int) -> int:
    """Entries per KV head a chunks run keeps once the prompt is read: its tokens, less the
    summarized chunks' tokens, plus one summary each (or none, without summaries)."""
    gone = sum(hi - lo for lo, hi, _ in rep["summarized"])
    return tokens - gone + len(rep["summarized"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--recent", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    prof = json.loads(Path(default_profile()).read_text())
    engine = Engine(NativeHost(default_dir(), threads=args.threads), profile=prof)
    recipe = {"chunks": {"k": args.k, "recent": args.recent}}
    blind = {"chunks": {"k": args.k, "recent": args.recent, "summaries": False}}
    for seed in args.seeds:
        for index in range(args.n):
            t0 = time.perf_counter()
            spec = {"task": "multi-needle", "context": args.context, "seed": seed, "index": index}
            it = lesson.item(engine, spec)
            full, chunks, dropped = (lesson.read(engine, it, engine.generate(lesson.request(it, p)))
                                     for p in ({}, recipe, blind))
            keep = entries(chunks["chunks"], it["tokens"])
            imp = lesson.read(engine, it, engine.generate(lesson.request(
                it, {"importance": {"signal": "question", "budget": keep}})))

            def say(r: dict) -> str:
                asked = next(f for f in r["facts"] if f["asked"])
                mark = "ok" if r["correct"] else ("CROSS" if r["crossover"] else "miss")
                routed = "" if "routed" not in asked else f" routed={asked['routed']}"
                return f"{r['digits'] or '-':>5} {mark:<5} kept {asked['kept']:.2f}{routed}"

            print(f"seed {seed} #{index} {it['key']}={it['code']} ({it['tokens']} tokens, budget {keep}) | "
                  f"full {say(full)} | importance-q {say(imp)} | chunks {say(chunks)} | no-summaries {say(dropped)}"
                  f" ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

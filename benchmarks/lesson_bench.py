"""Each lesson's live time in the browser: what a room waits for when the teacher presses Run.

    python benchmarks/lesson_bench.py [--repeat 1] [--no-isolation]

Headless Debian Chromium (Playwright) on the built ``dist/``, served on 127.0.0.1 (with
cross-origin isolation, so onnxruntime-web may use its threads, unless --no-isolation).
The page boots once; then every lesson of ``lessons.json`` is run as a person runs it (its
Run button), ``--repeat`` times, and each run's seconds as the page measured them
(``data-seconds`` on its panel: the question read, the answer generated, the cache read
back) are printed, with the builder's native time for the same lesson beside them
(``lessons_recorded.json``). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "site")]

from browser_bench import ARGS, CHROMIUM  # noqa: E402  (the same browser and flags; this folder is on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each lesson (default 1)")
    ap.add_argument("--no-isolation", action="store_true", help="serve without COOP/COEP: one onnxruntime thread")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from builder.serve import start_in_thread
    from builder.site import DIST

    lessons = json.loads((DIST / "lessons.json").read_text())["lessons"]
    recorded = json.loads((DIST / "lessons_recorded.json").read_text())["lessons"]
    server, base = start_in_thread(DIST, isolate=not args.no_isolation)
    profile = tempfile.mkdtemp(prefix="kvlab-lesson-bench-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            t0 = time.perf_counter()
            page.goto(base + "/")
            page.wait_for_function("['ready','error'].includes(document.body.dataset.state)", timeout=300_000)
            if page.evaluate("document.body.dataset.state") != "ready":
                print("the page did not boot:", page.text_content("#boot-error"))
                return 1
            print(f"booted in {time.perf_counter() - t0:.1f} s (cold: the model downloaded into the Cache API); "
                  f"threads: {page.evaluate('self.crossOriginIsolated') and 'several' or 'one'}")
            for les in lessons:
                for rep in range(args.repeat):
                    page.evaluate("delete document.getElementById('lesson-live').dataset.done")
                    t1 = time.perf_counter()
                    page.click(f'button[data-lesson="{les["id"]}"]')
                    page.wait_for_function(f"document.getElementById('lesson-live').dataset.done === '{les['id']}' || "
                                           "document.querySelector('.lesson-status.error')", timeout=900_000)
                    wall = time.perf_counter() - t1
                    secs = page.evaluate(f"""[...document.querySelectorAll('.lesson[data-lesson="{les['id']}"] .lesson-run')]
                                             .map(p => Number(p.dataset.seconds))""")
                    runs = ", ".join(f"{r['label']} {s:.1f} s" for r, s in zip(les["runs"], secs))
                    print(f"{les['id']} (#{rep + 1}): {runs}; the lesson {wall:.1f} s in all, the longest run "
                          f"{max(secs):.1f} s; natively (the builder's recording) {recorded[les['id']]['seconds']} s in all",
                          flush=True)
            ctx.close()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

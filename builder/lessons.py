"""Record the page's live lessons natively: ``lessons_recorded.json``.

A lesson (``site/static/lessons.json``'s ``lessons``) runs one question under a few
policies (``kvlab.lesson``). The page runs it live; a browser too slow for that, or
without WebAssembly SIMD, replays this recording instead, marked as recorded. The
recording is exactly what ``python -m kvlab lesson ID --json`` prints — the same engine
and store on the native host, whose greedy tokens and bytes equal the page's (the e2e
tests check that) — plus where and when it was made.

Cached in ``cache/lessons-<key>/``, keyed by the bundle, the profile, the lessons and the
engine's sources: a rebuild that changes none of them records nothing (~25 s otherwise).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

from . import paths
from .bundle import prune

LESSONS = paths.REPO / "site" / "static" / "lessons.json"
FILE = "lessons_recorded.json"


def build_lessons(bundle: Path, profile_dir: Path, force: bool = False) -> Path:
    """Run every lesson natively (if not cached); returns the folder holding FILE."""
    sources = sorted((paths.REPO / "site" / "kvlab").rglob("*.py"))
    key = paths.hash_sources((Path(bundle) / "manifest.json").read_bytes(),
                             (Path(profile_dir) / "profile.json").read_bytes(), LESSONS, *sources)
    out = paths.cache_root() / f"lessons-{key}"
    if force or not (out / FILE).is_file():
        from kvlab import lesson
        from kvlab.engine import Engine
        from kvlab.host.native import NativeHost

        t0 = time.perf_counter()
        prof = json.loads((Path(profile_dir) / "profile.json").read_text())
        engine = Engine(NativeHost(bundle), profile=prof)
        recorded = {}
        for les in json.loads(LESSONS.read_text()).get("lessons", []):
            t1 = time.perf_counter()
            res = lesson.run(engine, les["item"], [r["policy"] for r in les["runs"]])
            recorded[les["id"]] = res | {"seconds": round(time.perf_counter() - t1, 2)}
            print(f"builder: lesson {les['id']} recorded ({len(les['runs'])} runs, {recorded[les['id']]['seconds']} s)",
                  flush=True)
        doc = {"format": "kvlab-lessons-recorded-1",
               "provenance": {"host": f"native ({platform.machine()}, onnxruntime + wasmtime)",
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "command": "python -m builder site (builder/lessons.py: kvlab.lesson.run per lesson)"},
               "lessons": recorded}
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / FILE).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        prune({out}, kinds=("lessons",))
        print(f"builder: lessons recorded in {time.perf_counter() - t0:.1f} s: {out}", flush=True)
    return out

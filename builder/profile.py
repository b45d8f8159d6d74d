"""Profile the model once per build: ``profile.json``, ``observations.json`` and the texts.

The site ships a precomputed head profile (``kvlab.profile``) and the four observations
(``kvlab.observe``) so the profile page opens at once; the page can rerun the same profile
live on the same texts (``profile_texts.json``). The result is cached in
``cache/profile-<key>/``, keyed by the bundle, the engine's source and the texts, so a
second build reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from . import paths
from .bundle import prune

FILES = ("profile.json", "observations.json", "profile_texts.json")
SITE_KVLAB = paths.REPO / "site" / "kvlab"
#: the engine's sources a profile depends on: all of kvlab but the techniques it does not
#: run (it reads with the full cache and with `quant`), the harness, the page and the CLI,
#: so that a new technique does not re-profile (~40 s)
NOT_PROFILED = {"cli.py", "web.py", "evaluate.py", "__main__.py"}


def profile_sources() -> list[Path]:
    keep = []
    for p in sorted(SITE_KVLAB.rglob("*.py")):
        rel = p.relative_to(SITE_KVLAB)
        if rel.name in NOT_PROFILED and len(rel.parts) == 1:
            continue
        if rel.parts[0] == "techniques" and rel.name not in ("base.py", "quant.py"):
            continue
        keep.append(p)
    return keep


def build_profile(bundle: Path, force: bool = False) -> Path:
    """Run the profiler natively on ``bundle`` (if not cached); returns the folder with FILES."""
    from kvlab.texts import profile_texts

    texts = profile_texts()
    texts_json = json.dumps(texts, indent=1, ensure_ascii=False) + "\n"
    key = paths.hash_sources((Path(bundle) / "manifest.json").read_bytes(), texts_json,
                             *profile_sources())
    out = paths.cache_root() / f"profile-{key}"
    if force or not all((out / f).is_file() for f in FILES):
        from kvlab.engine import Engine
        from kvlab.host.native import NativeHost
        from kvlab.observe import observations
        from kvlab.profile import profile

        t0 = time.perf_counter()
        engine = Engine(NativeHost(bundle))
        last = [0.0]

        def show(ev: dict) -> None:  # a line every few seconds: CI logs stay short
            now = time.perf_counter()
            if now - last[0] > 5 or ev["done"] == ev["total"]:
                last[0] = now
                print(f"builder: profile: {ev['stage']}, {ev['done']}/{ev['total']} runs", flush=True)

        prof = profile(engine, texts, on_progress=show)
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "profile.json").write_text(json.dumps(prof, indent=1) + "\n")
        (tmp / "observations.json").write_text(json.dumps(observations(prof), indent=1, ensure_ascii=False) + "\n")
        (tmp / "profile_texts.json").write_text(texts_json, encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        prune({out}, kinds=("profile",))
        print(f"builder: profiled in {time.perf_counter() - t0:.1f} s (profiler's own time {prof['seconds']} s): "
              f"{out}", flush=True)
    return out

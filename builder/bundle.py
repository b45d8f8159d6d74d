"""Gather the built pieces into one checked folder: the artifact *bundle*.

``cache/bundle-<key>/`` holds links to the model, tokenizer and store builds plus a
``manifest.json`` with each file's size and sha256 (what ``kvlab.artifacts.verify``
checks). ``cache/active`` is a link to the newest bundle, swapped atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import paths

FILES = {
    # file in the bundle: which build it comes from
    "model.onnx": "model",
    "config.json": "model",
    "tokenizer.json": "tokenizer",
    "kvstore.wasm": "wasm",
    "kvstore-scalar.wasm": "wasm",
}


def make_bundle(builds: dict[str, Path]) -> Path:
    """Link the files of ``builds`` ({"model": dir or file in it, ...}) into a bundle;
    returns its folder."""
    builds = {k: v if v.is_dir() else v.parent for k, v in builds.items()}
    key = paths.hash_sources(*(str(builds[k]) for k in sorted(builds)), Path(__file__))
    out = paths.cache_root() / f"bundle-{key}"
    if not (out / "manifest.json").is_file():
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            files = {}
            for name, build in FILES.items():
                src = builds[build] / name
                (tmp / name).symlink_to(src)
                files[name] = {"bytes": src.stat().st_size, "sha256": paths.sha256_file(src)}
            manifest = {
                "format": "kvlab-bundle-1",
                "model": paths.model_spec()["name"],
                "gguf_sha256": paths.model_spec()["sha256"],
                "builds": {k: v.name for k, v in sorted(builds.items())},
                "files": files,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only left if something failed
    activate(out)
    prune(keep={out, *builds.values()})
    return out


#: builds of each kind kept besides the ones in use (another clone may still use them)
KEEP_OLD = 1


def prune(keep: set[Path], kinds=("model", "tokenizer", "wasm", "bundle")) -> None:
    """Delete all but the newest ``KEEP_OLD`` unused builds of each kind: a model build is
    270 MB, and every builder change makes a new one."""
    root = paths.cache_root()
    for kind in kinds:
        old = sorted((p for p in root.glob(f"{kind}-*") if p.is_dir() and p not in keep
                      and ".tmp" not in p.name), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in old[KEEP_OLD:]:
            shutil.rmtree(p, ignore_errors=True)


def activate(bundle: Path) -> None:
    """Point ``cache/active`` at ``bundle`` (atomic: a reader sees the old or the new)."""
    link = paths.active_dir()
    tmp = link.with_name(f"active.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(bundle)
    if link.exists() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)

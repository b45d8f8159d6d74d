"""Find the built artifacts and check them against the builder's manifest.

The builder writes ``manifest.json`` beside the artifacts: each file's size and sha256.
A file that is missing, truncated or altered is refused with a message that says which
and how to rebuild — never loaded half-broken.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

#: the files the native host needs (the site needs more; its manifest lists them all)
NATIVE_FILES = ("model.onnx", "config.json", "tokenizer.json", "kvstore.wasm", "kvstore-scalar.wasm")
REBUILD = "rebuild them with: python -m builder all"


class ArtifactError(RuntimeError):
    """Artifacts missing or not what the builder wrote."""


def default_dir() -> Path:
    """``$KVLAB_ARTIFACTS``, else the builder's ``active`` folder in the artifact cache."""
    if env := os.environ.get("KVLAB_ARTIFACTS"):
        return Path(env)
    cache = Path(os.environ.get("KVLAB_CACHE", Path.home() / ".cache" / "kvlab"))
    return cache / "active"


def default_profile() -> Path | None:
    """The builder's head profile (``cache/profile-<key>/profile.json``; the builder keeps the
    newest only), or None when none was built."""
    cache = Path(os.environ.get("KVLAB_CACHE", Path.home() / ".cache" / "kvlab"))
    found = sorted(cache.glob("profile-*/profile.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# (path, size, mtime_ns) → sha256: a process checks each big file once
_verified: dict[tuple, str] = {}


def verify(folder: Path, names=NATIVE_FILES) -> dict:
    """Check ``names`` in ``folder`` against its manifest; returns the manifest."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"no built artifacts in {folder} (manifest.json missing); {REBUILD}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise ArtifactError(f"{manifest_path} is unreadable ({e}); {REBUILD}") from None
    for name in names:
        path = folder / name
        entry = files.get(name)
        if entry is None:
            raise ArtifactError(f"{name} is not in {manifest_path}; {REBUILD}")
        if not path.is_file():
            raise ArtifactError(f"{name} is missing from {folder}; {REBUILD}")
        st = path.stat()
        if st.st_size != entry["bytes"]:
            raise ArtifactError(
                f"{name} is corrupted: {st.st_size} bytes, the build wrote {entry['bytes']}; {REBUILD}"
            )
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        digest = _verified.get(key) or sha256_file(path)
        if digest != entry["sha256"]:
            raise ArtifactError(
                f"{name} is corrupted: sha256 {digest[:16]}…, the build wrote "
                f"{entry['sha256'][:16]}…; {REBUILD}"
            )
        _verified[key] = digest
    return manifest

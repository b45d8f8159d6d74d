"""``python -m builder pack``: ``dist/`` as one zip to copy to a static host or a USB stick.

Zip, because every OS opens it without tools. Inside, everything sits under
``kvcache-lab/``. Text, WebAssembly and the ONNX graph are deflated (to ~20-40 %); what is
already compressed and the weight parts (the manifest's, whatever their names) are stored as
is: deflate leaves ``.zip`` at ~98 % and the 4-bit weight blocks at ~95 %, for ~1 s a 30 MB
part. Timestamps and permissions are fixed, so the same ``dist/`` gives the same bytes (with
the same zlib).

Every packed file is checked against ``dist/manifest.json`` first (bytes, then sha256 while
it is written), and a file the manifest does not know refuses the pack: a half-built or
hand-edited ``dist/`` is never shipped. Only the pages and the manifest itself, rendered
after the manifest, are taken without a hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from . import paths
from .serve import cold_load_paths, weight_parts
from .site import DIST

OUT = paths.REPO / "kvcache-lab-site.zip"
TOP = "kvcache-lab"
#: already compressed (or, .bin, weights by another name): deflate would spend time for a few %
STORED_SUFFIXES = {".zip", ".whl", ".gz", ".br", ".bin", ".png", ".jpg", ".jpeg", ".webp", ".woff2"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's epoch: the same archive whenever it is made
CHUNK = 1 << 20


def refuse(why: str) -> SystemExit:
    return SystemExit(f"error: not packing {why}")


def plan(dist: Path) -> list[tuple[str, dict | None]]:
    """Every file of ``dist`` (sorted) with its manifest entry ({bytes, sha256}; None for the
    pages and the manifest, which are rendered after it). Refuses an unbuilt or half-built dist."""
    if not (dist / "index.html").is_file() or not (dist / "manifest.json").is_file():
        raise refuse(f"{dist}: it is not built (no index.html or manifest.json); run: python -m builder site")
    manifest = json.loads((dist / "manifest.json").read_text())
    listed = {path: {"bytes": n, "sha256": sha} for path, n, sha in cold_load_paths(manifest)}
    present = sorted(f.relative_to(dist).as_posix() for f in dist.rglob("*") if f.is_file())
    missing = sorted(set(listed) - set(present))
    if missing:
        raise refuse(f"{dist}: manifest.json lists {len(missing)} file(s) it lacks, e.g. {missing[0]}; "
                     f"rebuild with python -m builder site")
    files = []
    for rel in present:
        entry = listed.get(rel)
        if entry is None and not (rel == "manifest.json" or ("/" not in rel and rel.endswith(".html"))):
            raise refuse(f"{dist}/{rel}: manifest.json does not list it (half-built or edited dist?)")
        if entry is not None and (dist / rel).stat().st_size != entry["bytes"]:
            raise refuse(f"{dist}/{rel}: its size differs from manifest.json; rebuild with python -m builder site")
        files.append((rel, entry))
    return files


def stored(rel: str, parts: set[str]) -> bool:
    """True if ``rel`` goes into the zip as is (already compressed, or weights)."""
    return rel in parts or Path(rel).suffix.lower() in STORED_SUFFIXES


def pack(dist: Path = DIST, out: Path = OUT) -> Path:
    """Write ``dist`` into the zip ``out`` (written beside it, then moved in); returns ``out``."""
    dist, out = Path(dist), Path(out)
    files = plan(dist)
    parts = {p["path"] for p in weight_parts(json.loads((dist / "manifest.json").read_text()))}
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for rel, entry in files:
                info = zipfile.ZipInfo(f"{TOP}/{rel}", date_time=FIXED_TIME)
                info.create_system = 3  # Unix, whichever OS packs: same bytes, sane permissions
                info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
                info.compress_type = zipfile.ZIP_STORED if stored(rel, parts) else zipfile.ZIP_DEFLATED
                info.file_size = (dist / rel).stat().st_size
                h = hashlib.sha256()
                with open(dist / rel, "rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
                if entry is not None and h.hexdigest() != entry["sha256"]:
                    raise refuse(f"{dist}/{rel}: its sha256 differs from manifest.json; "
                                 f"rebuild with python -m builder site")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"pack: {out} ({len(files)} files, {out.stat().st_size / 2**20:.0f} MB)\n"
          f"  serve it: unzip {out.name} && cd {TOP} && python3 -m http.server 8000\n"
          f"  (Python 3.11+ serves .mjs and .wasm with the right types; that gives one thread: for "
          f"threads a host must send Cross-Origin-Opener-Policy: same-origin and "
          f"Cross-Origin-Embedder-Policy: require-corp, as python -m builder serve does)", flush=True)
    return out

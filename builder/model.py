"""``python -m builder model``: the GGUF → ``model.onnx`` + ``config.json`` in the artifact cache.

The output folder is ``cache_root()/model-<key>``, where the key hashes the GGUF's sha256 and
this step's three source files; a second run with the same inputs returns at once. The folder
is written under a temporary name and renamed into place, so a crash never leaves a
half-written model where a reader would find it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from builder import paths

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "gguf_load.py", HERE / "onnx_graph.py", HERE / "model.py"]
MAX_BYTES = 300 * 1000 * 1000  # the site ships this file: keep it well under what a browser fetches comfortably


def _log(msg: str) -> None:
    print(f"model: {msg}", flush=True)


# ---- the cache key ------------------------------------------------------------------------


def checked_gguf() -> tuple[Path, str]:
    """The GGUF path and its sha256, which must equal the pin in models/*.json."""
    gguf = paths.gguf_path()
    want = paths.model_spec()["sha256"]
    got = paths.sha256_file(gguf)
    if got != want:
        raise SystemExit(f"error: {gguf} has sha256 {got}, expected {want} "
                         f"(reinstall {paths.model_spec()['pip']})")
    return gguf, got


def model_dir_for(gguf_sha: str) -> Path:
    return paths.cache_root() / ("model-" + paths.hash_sources(gguf_sha, *SOURCES))


# ---- the build ----------------------------------------------------------------------------


def build_model(force: bool = False) -> Path:
    """Build (or find) the ONNX model; return its folder (``model.onnx``, ``config.json``)."""
    gguf, sha = checked_gguf()
    out = model_dir_for(sha)
    if out.is_dir() and not force:
        _log(f"up to date: {out}")
        return out

    import onnx

    from builder.gguf_load import load_gguf
    from builder.onnx_graph import MASKED, OPSET, build_graph, io_names

    t0 = time.perf_counter()
    _log(f"reading {gguf.name}")
    config, weights = load_gguf(gguf)
    _log(f"read {len(weights)} tensors, {sum(w.size for w in weights.values()) / 1e6:.1f} M parameters "
         f"({time.perf_counter() - t0:.1f} s)")
    model = build_graph(config, weights, name=paths.model_spec()["name"])
    del weights
    _log(f"graph: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers")

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the folder is served and shared
    try:
        onnx.save_model(model, str(tmp / "model.onnx"))
        size = (tmp / "model.onnx").stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"error: model.onnx is {size / 1e6:.0f} MB, over the {MAX_BYTES / 1e6:.0f} MB budget")
        ins, outs = io_names(config["n_layers"])
        meta = dict(config, onnx_opset=OPSET, onnx_bytes=size, gguf_sha256=sha, past_mask_value=MASKED,
                    inputs=ins, outputs=outs)
        (tmp / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"wrote {out / 'model.onnx'}: {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return out


def _install(tmp: Path, out: Path) -> None:
    """Move the finished folder into place atomically (replacing an old one on --force)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        # another build won the race and put an identical folder in place: keep theirs
        if not out.is_dir():
            if old is not None:
                os.rename(old, out)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Render the static site into ``dist/``: everything the page loads, and nothing else.

``dist/`` works with the network cut. Its layout::

    index.html ...            site/templates/*.html, rendered with Jinja2
    boot.js, host.js, ...     site/static/* (the runtime, ui.js and its panels, style.css), at the root
    vendor/pyodide/           the Pyodide core (npm ``pyodide``)
    vendor/ort/               onnxruntime-web's wasm backend only (npm ``onnxruntime-web``)
    vendor/uplot/             uPlot for the charts (npm ``uplot``)
    kvlab.zip                 the ``site/kvlab`` package (and CPython's ``pydoc_data``, the
                              harness's texts), unpacked into Pyodide's file system
    kvstore.wasm, kvstore-scalar.wasm, config.json, tokenizer.json
    profile.json, observations.json, profile_texts.json
                              the head profile, the four observations and the texts they
                              were measured on (``builder.profile``: computed natively once
                              per build; the profile page shows them and can rerun them)
    lessons_recorded.json     every live lesson run natively (``builder.lessons``): what the
                              page replays where a live run is too slow or impossible
    results_all.json, results.csv
                              every committed result as a point (compression vs fp32, KL,
                              score, provenance) and seed 004's rows: the results page
    results.json              seed 001's table on this model beside the seed's (``kvlab.results``,
                              from the committed results/quant.jsonl; the profile page shows it)
    model/graph.onnx          the model's graph, its fp16 matrices as external data ...
    model/weights-<sha>.bin   ... which the page builds from these: the GGUF's own Q4_1 / Q8_0
                              blocks, 96 MB instead of 257 MB, expanded in the browser into
                              exactly model.onnx's fp16 bytes (``builder.weights``)
    manifest.json             every file: bytes + sha256; the weights' parts and recipe; versions

Rebuilds are quick: the graph and the parts are made and checked once per model into the
artifact cache and hard-linked into ``dist/``. ``dist/`` is written beside itself and
swapped in, so a server never sees half a site.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from . import paths

DIST = paths.REPO / "dist"
SITE = paths.REPO / "site"
TEMPLATES = SITE / "templates"
STATIC = SITE / "static"
NODE = paths.REPO / "node_modules"
RESULTS_DIR = paths.REPO / "results"
RESULTS = RESULTS_DIR / "quant.jsonl"

# ---------------------------------------------------------------------------------------
# What comes from npm (node_modules, installed by run.sh with `npm ci`)
# ---------------------------------------------------------------------------------------

VENDOR = {
    "pyodide": ("pyodide", ["pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm",
                            "python_stdlib.zip", "pyodide-lock.json"]),
    # the wasm backend only: the rest of onnxruntime-web (WebGPU, WebNN, bundles) is 100+ MB
    "ort": ("onnxruntime-web/dist", ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs",
                                     "ort-wasm-simd-threaded.wasm"]),
    "uplot": ("uplot/dist", ["uPlot.iife.min.js", "uPlot.min.css"]),
}
NPM_NAMES = {"pyodide": "pyodide", "ort": "onnxruntime-web", "uplot": "uplot"}

#: artifacts of the bundle served as they are
ARTIFACTS = ["kvstore.wasm", "kvstore-scalar.wasm", "config.json", "tokenizer.json"]


def npm_version(package: str) -> str:
    meta = NODE / package / "package.json"
    if not meta.is_file():
        raise SystemExit(f"error: node_modules/{package} is missing; run: npm ci")
    return json.loads(meta.read_text())["version"]


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------


def kvlab_zip(dst: Path) -> None:
    """``site/kvlab`` as a zip (``kvlab/...``) with fixed timestamps: same source, same bytes.

    Also the build Python's ``pydoc_data`` (CPython's reference documentation, the quality
    harness's texts, ~160 KB deflated): Pyodide leaves it out of its standard library, and
    shipping this copy makes both hosts read exactly the same text (same sha256). The zip
    is unpacked ahead of Pyodide's own library on ``sys.path``.
    """
    import pydoc_data

    files = [(f, f.relative_to(SITE)) for f in sorted((SITE / "kvlab").rglob("*.py"))]
    pd = Path(pydoc_data.__file__).parent
    files += [(pd / name, Path("pydoc_data") / name) for name in ("__init__.py", "topics.py")]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
        for f, arc in files:
            info = zipfile.ZipInfo(arc.as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, f.read_bytes())


def write_points(dst: Path) -> dict:
    """``results_all.json`` and ``results.csv``: every committed result as a point, and seed
    004's rows beside the seed's (``kvlab.results``), for the results page."""
    from kvlab.results import SEED_000, SEED_002, points, read_lines, seed_004, seed_claims, to_csv

    lines = {name: read_lines(RESULTS_DIR / f"{name}.jsonl") if (RESULTS_DIR / f"{name}.jsonl").exists() else []
             for name in ("quant", "eviction", "chunks")}
    pts = points(lines["quant"], lines["eviction"], lines["chunks"])
    doc = {"format": "kvlab-results-all-1", "model": "SmolLM2-135M-Instruct", "points": pts,
           "seed_004": seed_004(lines["chunks"]),
           "seed_002": seed_claims(lines["quant"], SEED_002), "seed_000": seed_claims(lines["quant"], SEED_000),
           "sources": {name: f"results/{name}.jsonl ({len(v)} lines; python benchmarks/{name}_table.py)"
                       for name, v in lines.items()}}
    (dst / "results_all.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    (dst / "results.csv").write_text(to_csv(pts), encoding="utf-8")
    return doc


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (the model's 270 MB), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------


def build_site(bundle: Path, dist: Path = DIST) -> Path:
    """Render the site for the artifact ``bundle`` into ``dist``; returns ``dist``."""
    import jinja2

    import kvlab

    from .lessons import FILE as LESSONS_FILE
    from .lessons import build_lessons
    from .profile import FILES as PROFILE_FILES
    from .profile import build_profile
    from .weights import build_weights, read_recipe

    bundle = Path(bundle)
    src_manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads((bundle / "config.json").read_text())
    versions = {k: npm_version(p) for k, p in NPM_NAMES.items()} | {"kvlab": kvlab.__version__}

    tmp = dist.with_name(dist.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    # ---- copy / link every served file
    for folder, (src, names) in VENDOR.items():
        for name in names:
            _place(NODE / src / name, tmp / "vendor" / folder / name)
    for name in ARTIFACTS:
        _place(bundle / name, tmp / name)
    profiled = build_profile(bundle)
    for name in PROFILE_FILES:
        _place(profiled / name, tmp / name)
    _place(build_lessons(bundle, profiled) / LESSONS_FILE, tmp / LESSONS_FILE)
    weights_dir = build_weights(bundle)
    weights = read_recipe(weights_dir)
    parts = weights["parts"]
    _place(weights_dir / "graph.onnx", tmp / weights["graph"]["path"])
    for p in parts:
        _place(weights_dir / Path(p["path"]).name, tmp / p["path"])
    kvlab_zip(tmp / "kvlab.zip")
    results = None  # seed 001's table on this model, from the committed results (kvlab.results)
    if RESULTS.exists():
        from kvlab.results import read_lines, seed_001

        results = seed_001(read_lines(RESULTS))
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    results_all = write_points(tmp)
    if STATIC.is_dir():
        for f in sorted(STATIC.rglob("*")):
            if f.is_file():
                _place(f, tmp / f.relative_to(STATIC))

    # ---- the manifest the page checks (hashes of small files are recomputed: cheap)
    files = {}
    for f in sorted(tmp.rglob("*")):
        rel = f.relative_to(tmp).as_posix()
        if f.is_file() and not rel.startswith("model/weights-"):
            known = src_manifest["files"].get(rel)
            files[rel] = {"bytes": f.stat().st_size,
                          "sha256": known["sha256"] if known else paths.sha256_file(f)}
    manifest = {
        "format": "kvlab-site-1",
        "model": src_manifest["model"],
        "weights": weights,
        "versions": versions,
        "files": files,
    }

    # ---- templates (after the manifest, so pages may show it)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    for t in sorted(TEMPLATES.glob("*.html")):
        html = env.get_template(t.name).render(manifest=manifest, config=config, versions=versions,
                                               results=results, results_all=results_all)
        (tmp / t.name).write_text(html, encoding="utf-8")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    # ---- swap in: the old dist goes aside first, so dist/ is never half written
    old = dist.with_name(dist.name + f".old-{os.getpid()}")
    if dist.exists():
        dist.rename(old)
    tmp.rename(dist)
    shutil.rmtree(old, ignore_errors=True)
    total = sum(f.stat().st_size for f in dist.rglob("*") if f.is_file())
    print(f"builder: site rendered into {dist} ({len(files) + len(parts) + 1} files, {total / 2**20:.0f} MB)",
          flush=True)
    return dist

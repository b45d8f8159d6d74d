"""What a laptop downloads and waits for at start-up: before (fp16 model) and after (4-bit parts).

    python benchmarks/download_bench.py [--repeat 1]

Builds ``dist/`` and, beside it, the same site laid out as before the 4-bit download
(model.onnx's fp16 bytes in 64 MB parts, ``manifest.model_file``: boot.js still reads that
layout). Then, in one run, headless Chromium (Playwright, a fresh profile each) boots:

  before    fp16 parts, http://127.0.0.1 (secure, isolated: Cache API, threads)
  after     4-bit parts expanded in the page, http://127.0.0.1
  room      4-bit parts, http://classroom.test (a LAN-like plain-HTTP name mapped to
            loopback: no Cache API, no isolation: the warm load downloads again)

For each: bytes over the network from Playwright's network log (every finished request's
response body size; all, and the model's share), cold and warm boot time (navigation to
data-state="ready"), the model step, the expansion's time (kvlab.info.expandMs) and its share
of the boot, and the page's renderer process's peak resident memory (VmHWM) after the cold
boot and after the reload (the reload may hold the old page's memory a while). Loopback has
no bandwidth limit, so the times here are the floor: on a classroom's Wi-Fi the bytes
dominate. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "site")]

CHROMIUM = "/usr/bin/chromium"
ROOM = "classroom.test"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        f"--host-resolver-rules=MAP {ROOM} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
PART_BYTES = 64 << 20  # the fp16 layout's parts, as the site cut them before


def fp16_site(dist: Path, model: Path, out: Path) -> Path:
    """``dist`` with the model as fp16 parts of model.onnx (the layout before), hard-linked."""
    shutil.rmtree(out, ignore_errors=True)
    manifest = json.loads((dist / "manifest.json").read_text())
    for f in dist.rglob("*"):
        rel = f.relative_to(dist).as_posix()
        if f.is_file() and not rel.startswith("model/") and rel != "manifest.json":
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(f, out / rel)
    parts, whole = [], hashlib.sha256()
    (out / "model").mkdir(parents=True)
    with open(model, "rb") as f:
        while block := f.read(PART_BYTES):
            name = f"model/model.onnx.part{len(parts)}"
            (out / name).write_bytes(block)
            whole.update(block)
            parts.append({"path": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    del manifest["weights"]
    manifest["files"].pop("model/graph.onnx")
    manifest["model_file"] = {"bytes": sum(p["bytes"] for p in parts), "sha256": whole.hexdigest(), "parts": parts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def renderer_peak_kib(profile: str) -> int:
    """The largest VmHWM (peak resident memory) among the renderer processes of the Chromium
    whose profile is ``profile`` (the page's renderer holds the model), in KiB."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                procs[int(d.name)] = ((d / "cmdline").read_bytes(), int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]))
            except (OSError, ValueError, IndexError):
                pass
    roots = {pid for pid, (cmd, _) in procs.items() if profile.encode() in cmd and b"--type=" not in cmd}
    family, grew = set(roots), True
    while grew:
        new = {pid for pid, (_, ppid) in procs.items() if ppid in family} - family
        family |= new
        grew = bool(new)
    best = 0
    for pid in family:
        if b"--type=renderer" in procs[pid][0]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        best = max(best, int(line.split()[1]))
            except OSError:
                pass
    return best


def boot_once(page, url: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function("['ready','error'].includes(document.body.dataset.state)", timeout=300_000, polling=50)
    secs = time.perf_counter() - t0
    if page.evaluate("document.body.dataset.state") != "ready":
        raise SystemExit("boot failed: " + str(page.evaluate("document.getElementById('boot-error')?.textContent")))
    return secs, page.evaluate("kvlab.info")


def run(p, dist: Path, host: str) -> dict:
    from builder.serve import start_in_thread

    server, base = start_in_thread(dist, isolate=True)
    url = base.replace("127.0.0.1", host) + "/"
    profile = tempfile.mkdtemp(prefix="kvlab-dl-bench-")
    log: list = []
    out: dict = {}
    try:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.on("requestfinished", lambda r: log.append(r))
        for when in ("cold", "warm"):
            log.clear()
            secs, info = boot_once(page, url)
            sizes = [(r.url, r.sizes()["responseBodySize"]) for r in log]
            out[when] = {
                "s": secs, "boot_ms": info["bootMs"], "steps": info["stepMs"], "expand_ms": info.get("expandMs", 0),
                "bytes": sum(n for _, n in sizes), "model_bytes": sum(n for u, n in sizes if "/model/" in u),
                "requests": len(sizes), "from_cache": info["modelFromCache"], "threads": info["threads"],
                "notices": info.get("notices", []),
                "peak_kib": renderer_peak_kib(profile),  # after the cold boot: that boot's peak
            }
        ctx.close()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()

    from playwright.sync_api import sync_playwright

    from builder.__main__ import build_all
    from builder.site import build_site

    bundle = build_all()
    dist = build_site(bundle)
    before = fp16_site(dist, bundle / "model.onnx", dist.with_name("dist-fp16-bench"))
    modes = {"before (fp16 parts)": (before, "127.0.0.1"), "after (4-bit parts)": (dist, "127.0.0.1"),
             f"after, at {ROOM} (plain HTTP)": (dist, ROOM)}
    results = {}
    try:
        with sync_playwright() as p:
            for label, (d, host) in modes.items():
                results[label] = run(p, d, host)
                print(f"measured: {label}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(before, ignore_errors=True)

    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    print("\n| site | cold: downloaded (model) | cold boot | model step | expansion (share of boot) "
          "| warm: downloaded | warm boot | renderer peak RSS: cold boot, after the reload |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        c, w = r["cold"], r["warm"]
        share = f"{c['expand_ms']} ms ({100 * c['expand_ms'] / c['boot_ms']:.0f} %)" if c["expand_ms"] else "none"
        print(f"| {label} | {mb(c['bytes'])} ({mb(c['model_bytes'])}) | {c['s']:.1f} s | {c['steps'].get('model', 0) / 1000:.1f} s "
              f"| {share} | {mb(w['bytes'])} | {w['s']:.1f} s | {c['peak_kib'] / 1024:.0f} MiB, {w['peak_kib'] / 1024:.0f} MiB |")
    for label, r in results.items():
        print(f"{label}: threads {r['cold']['threads']}; notices {r['cold']['notices']}; "
              f"cold steps {r['cold']['steps']}; warm steps {r['warm']['steps']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A room on one network: the server under 30 cold loads, its flags and addresses, and pack.

The room test serves the built ``dist/`` on loopback to 30 clients at once, each fetching
everything a cold load fetches (every file of manifest.json and every weight part) and
checking each response's size and sha256; while they are mid-download a 31st client asks
for ``/`` and must have it within a second. Loopback measures the server, not a Wi-Fi:
a room's network is far slower, so this bounds the server's own share. The clients share
the server's process (and its GIL) here, which a room's laptops do not: pessimistic.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import subprocess
import threading
import time
import zipfile
from urllib.parse import quote

import pytest

import builder.site
from builder import serve
from builder.__main__ import parser
from builder.pack import pack
from builder.serve import banner, cold_load_paths, lan_addresses, make_server, start_in_thread, weight_parts

CLIENTS = 30
FIRST_PAGE_BUDGET_S = 1.0  # the 31st visitor's index.html while 30 others download
CHUNK = 1 << 20


# ---- the room's load on loopback ------------------------------------------------------------

@pytest.fixture(scope="module")
def site(request):
    """dist/ and its manifest; built only when missing (./run.sh test builds it first)."""
    dist = builder.site.DIST
    if not (dist / "index.html").is_file():
        builder.site.build_site(request.getfixturevalue("bundle"))
    return dist, json.loads((dist / "manifest.json").read_text())


@pytest.mark.slow
def test_a_room_of_30_cold_loads_and_a_31st_visitor(site):
    dist, manifest = site
    paths = cold_load_paths(manifest)                     # [(path, bytes, sha256)], files then parts
    first_part = weight_parts(manifest)[0]["path"]
    per_client = sum(n for _, n, _ in paths)
    received = [0] * CLIENTS                              # bytes per client (each writes its own)
    errors: list[str] = []
    lock = threading.Lock()
    in_weights, finished = [0], [0]                       # clients past their first weight chunk / done
    wake = threading.Event()                              # every client is in the weights, or one failed
    stop = threading.Event()
    server, _ = start_in_thread(dist)
    host, port = "127.0.0.1", server.server_address[1]

    def fail(msg: str) -> None:
        errors.append(msg)
        wake.set()

    def client(i: int) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            for path, size, sha in paths:
                conn = http.client.HTTPConnection(host, port, timeout=60)
                conn.request("GET", "/" + quote(path))
                r = conn.getresponse()
                if r.status != 200:
                    fail(f"client {i}: {path}: HTTP {r.status}")
                    return
                h, got = hashlib.sha256(), 0
                while n := r.readinto(buf):
                    if stop.is_set():
                        return
                    h.update(view[:n])
                    got += n
                    received[i] += n
                    if path == first_part and got == n:  # the first chunk of the weights
                        with lock:
                            in_weights[0] += 1
                            if in_weights[0] == CLIENTS:
                                wake.set()
                conn.close()
                if got != size or h.hexdigest() != sha:
                    fail(f"client {i}: {path}: {got} bytes, sha256 {h.hexdigest()[:12]}; "
                         f"manifest says {size} bytes, {sha[:12]}")
                    return
            with lock:
                finished[0] += 1
        except Exception as e:  # noqa: BLE001 (reported by the test, not lost in a thread)
            fail(f"client {i}: {e!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        assert wake.wait(timeout=300), "not every client reached the weights in 300 s"
        assert not errors, errors[:5]
        with lock:  # an uneven server (e.g. a listen backlog of 5: connects wait 1 s to retry)
            assert finished[0] == 0, (f"{finished[0]} client(s) finished before every other reached "
                                      f"the weights: the server serves the room unevenly")

        # ---- the 31st visitor, while all 30 download the weights
        t1 = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/")
        r = conn.getresponse()
        page = r.read()
        first_page_s = time.perf_counter() - t1
        conn.close()
        with lock:
            busy = CLIENTS - finished[0]
        assert r.status == 200 and b"KV Cache Lab" in page
        assert busy == CLIENTS, f"only {busy} clients were still downloading when / was answered"
        assert first_page_s < FIRST_PAGE_BUDGET_S, f"/ took {first_page_s:.2f} s under a room's load"

        deadline = time.monotonic() + 600
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
        assert not any(t.is_alive() for t in threads), "clients still running after 600 s"
        assert not errors, errors[:5]
        assert finished[0] == CLIENTS and sum(received) == CLIENTS * per_client
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
    gb = sum(received) / 1e9
    print(f"\nroom: {CLIENTS} clients, {gb:.1f} GB in {wall:.1f} s ({gb / wall:.2f} GB/s; "
          f"{len(paths)} files, {per_client / 1e6:.0f} MB each); / answered in "
          f"{first_page_s * 1000:.0f} ms mid-download")


def test_cold_load_paths_reads_either_manifest_layout():
    files = {"a.js": {"bytes": 3, "sha256": "aa"}}
    parts = [{"path": "model/w.part0", "bytes": 5, "sha256": "bb"}]
    want = [("a.js", 3, "aa"), ("model/w.part0", 5, "bb")]
    assert cold_load_paths({"files": files, "model_file": {"bytes": 5, "parts": parts}}) == want
    assert cold_load_paths({"files": files, "weights": {"parts": parts}}) == want
    with pytest.raises(KeyError):
        cold_load_paths({"files": files})


# ---- where it listens, and the addresses it prints ------------------------------------------

def test_host_defaults_to_loopback_and_room_means_every_address(tmp_path):
    assert parser().parse_args(["serve"]).host == "127.0.0.1"
    assert parser().parse_args(["serve", "--room"]).host == "0.0.0.0"
    args = parser().parse_args(["serve", "--host", "10.0.0.5", "--port", "9000", "--no-isolation"])
    assert (args.host, args.port, args.no_isolation) == ("10.0.0.5", 9000, True)
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--room", "--host", "10.0.0.5"])
    server = make_server(0, tmp_path)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert server.request_queue_size >= CLIENTS
    finally:
        server.server_close()


def test_lan_addresses_are_outside_ipv4_addresses():
    addrs = lan_addresses()
    assert isinstance(addrs, list) and len(addrs) == len(set(addrs))
    for a in addrs:
        ip = ipaddress.IPv4Address(a)  # raises on anything else
        assert not ip.is_loopback and not ip.is_unspecified, a


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
3: wlan0    inet 192.168.1.23/24 brd 192.168.1.255 scope global dynamic wlan0\\       valid_lft 86000sec
5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever
"""


def test_lan_addresses_from_ip_drop_loopback(monkeypatch):
    monkeypatch.setattr(serve.shutil, "which", lambda name: "/sbin/ip")
    monkeypatch.setattr(serve.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=IP_ADDR))
    addrs = lan_addresses()
    assert "192.168.1.23" in addrs and "172.17.0.1" in addrs
    assert "127.0.0.1" not in addrs


def test_banner_lists_the_addresses_or_says_none_was_found(monkeypatch):
    assert len(banner("127.0.0.1", 8000)) == 1  # this machine only: no room note
    monkeypatch.setattr(serve, "lan_addresses", lambda: ["192.168.1.23", "10.0.0.5"])
    room = banner("0.0.0.0", 8000)
    assert "  http://192.168.1.23:8000/" in room and "  http://10.0.0.5:8000/" in room
    assert serve.ROOM_NOTE in room
    monkeypatch.setattr(serve, "lan_addresses", lambda: [])
    none = banner("0.0.0.0", 8000)
    assert any("no network address found" in line for line in none) and serve.ROOM_NOTE in none


# ---- pack -----------------------------------------------------------------------------------

def fake_dist(root, layout="weights"):
    """index.html, a script, a wasm, a zip, the graph and one weight part, with a correct manifest."""
    files = {
        "index.html": b"<!doctype html><title>KV Cache Lab</title>" * 20,
        "app.js": b"export const x = 1;\n" * 200,
        "kvstore.wasm": b"\0asm\1\0\0\0" + b"\0" * 4000,
        "kvlab.zip": os.urandom(3000),
        "model/graph.onnx": b"\x08\x07" + b"MatMul" * 500,
        "model/model.onnx.part0": os.urandom(5000),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    def entry(rel):
        return {"bytes": len(files[rel]), "sha256": hashlib.sha256(files[rel]).hexdigest()}

    parts = [{"path": "model/model.onnx.part0", **entry("model/model.onnx.part0")}]
    listed = ("app.js", "kvstore.wasm", "kvlab.zip", "model/graph.onnx")
    manifest = {"files": {rel: entry(rel) for rel in listed},
                layout: {"bytes": 5000, "parts": parts}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return files | {"manifest.json": (root / "manifest.json").read_bytes()}


@pytest.mark.parametrize("layout", ["weights", "model_file"])
def test_pack_writes_the_dist_as_one_deterministic_zip(tmp_path, layout):
    dist = tmp_path / "dist"
    files = fake_dist(dist, layout)
    first = pack(dist, tmp_path / "a.zip")
    for f in dist.rglob("*"):  # other mtimes must not change a byte
        os.utime(f, (1_000_000_000, 1_000_000_000))
    second = pack(dist, tmp_path / "b.zip")
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()

    with zipfile.ZipFile(first) as zf:
        assert sorted(zf.namelist()) == sorted(f"kvcache-lab/{rel}" for rel in files)
        for rel, data in files.items():
            assert zf.read(f"kvcache-lab/{rel}") == data
        kind = {i.filename.removeprefix("kvcache-lab/"): i.compress_type for i in zf.infolist()}
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # not the packing day
    assert kind["model/model.onnx.part0"] == kind["kvlab.zip"] == zipfile.ZIP_STORED
    assert kind["app.js"] == kind["kvstore.wasm"] == kind["model/graph.onnx"] == kind["index.html"] \
        == zipfile.ZIP_DEFLATED


def test_pack_refuses_a_dist_that_differs_from_its_manifest(tmp_path):
    dist = tmp_path / "dist"
    fake_dist(dist)
    out = tmp_path / "site.zip"
    js = bytearray((dist / "app.js").read_bytes())
    js[0] ^= 1  # same size, other bytes: only the sha256 can tell
    (dist / "app.js").write_bytes(js)
    with pytest.raises(SystemExit, match="app.js: its sha256 differs"):
        pack(dist, out)
    assert list(tmp_path.glob("site.zip*")) == []  # neither the archive nor its temporary

    (dist / "app.js").write_bytes(js[:-1])
    with pytest.raises(SystemExit, match="app.js: its size differs"):
        pack(dist, out)
    (dist / "app.js").unlink()
    with pytest.raises(SystemExit, match="lacks, e.g. app.js"):
        pack(dist, out)


def test_pack_refuses_an_unlisted_file_and_an_unbuilt_dist(tmp_path):
    dist = tmp_path / "dist"
    fake_dist(dist)
    (dist / "stray.js").write_text("left over\n")
    with pytest.raises(SystemExit, match="stray.js: manifest.json does not list it"):
        pack(dist, tmp_path / "site.zip")
    with pytest.raises(SystemExit, match="not built"):
        pack(tmp_path / "nowhere", tmp_path / "site.zip")
    (dist / "index.html").unlink()
    with pytest.raises(SystemExit, match="not built"):
        pack(dist, tmp_path / "site.zip")

"""Serve ``dist/`` with the headers the page needs, on this machine or to a room.

onnxruntime-web only runs threaded when the page is cross-origin isolated, which takes
``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy:
require-corp`` on every response; ``.wasm`` must be served as ``application/wasm`` for
streaming compilation. ``isolate=False`` leaves the two headers out (one thread), to
measure what isolation buys: ``python -m builder serve --no-isolation``.

By default the server listens on 127.0.0.1 only. ``--room`` (= ``--host 0.0.0.0``) serves a
classroom on one network: ~30 laptops, each fetching every file of a cold load (~300 MB),
at once. For that the listen backlog is large and files go out with ``sendfile`` (the
kernel copies them; no Python loop per 64 KB), and the addresses students should open are
printed. Browsers treat ``http://<LAN address>`` as insecure: no Cache API and no
cross-origin isolation there (``ROOM_NOTE``).
"""

from __future__ import annotations

import argparse
import errno
import functools
import http.server
import ipaddress
import mimetypes
import shutil
import socket
import subprocess
import sys
import threading

from .site import DIST

LOCAL = "127.0.0.1"
ALL = "0.0.0.0"

MIME = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".whl": "application/zip",
    ".zip": "application/zip",
}

ROOM_NOTE = ("note: on a plain-HTTP LAN address the browser withholds the Cache API and cross-origin "
             "isolation, so each laptop downloads the model on every load and runs one thread "
             "(the page handles that itself)")


# ---- what a cold load fetches (the manifest) -----------------------------------------------

def weight_parts(manifest: dict) -> list[dict]:
    """The model's parts, ``{path, bytes, sha256}`` each, in either manifest layout.

    ``manifest["weights"]["parts"]`` is the new layout, ``manifest["model_file"]["parts"]``
    the old one; both are read so the room test and ``pack`` survive the change.
    """
    for key in ("weights", "model_file"):
        if key in manifest:
            return list(manifest[key]["parts"])
    raise KeyError("manifest.json lists no weight parts (neither 'weights' nor 'model_file')")


def cold_load_paths(manifest: dict) -> list[tuple[str, int, str]]:
    """(path, bytes, sha256) of every file the manifest lists: its ``files`` (the new layout's
    graph among them), then the weight parts, each once. The HTML pages and manifest.json
    itself are written after the manifest, so it cannot list them."""
    listed = {path: (path, f["bytes"], f["sha256"]) for path, f in manifest["files"].items()}
    for p in weight_parts(manifest):
        listed.setdefault(p["path"], (p["path"], p["bytes"], p["sha256"]))
    return list(listed.values())


# ---- the server ---------------------------------------------------------------------------

class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}
    isolate = True

    def guess_type(self, path):
        # model parts (model.onnx.part3) have no extension of their own
        if ".onnx.part" in str(path):
            return "application/octet-stream"
        return super().guess_type(path)

    def end_headers(self) -> None:
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        # revalidate every time: a rebuilt dist/ is seen at once (the model is kept by the
        # page itself, in the Cache API, keyed by its sha256)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def copyfile(self, source, outputfile) -> None:
        # zero-copy: the kernel moves the file's pages to the socket and the GIL is free
        # meanwhile, so 30 downloads of 64 MB parts leave room for a 31st small request.
        # socket.sendfile falls back to send() where it cannot (Windows, directory listings).
        if outputfile is self.wfile:
            outputfile.flush()  # the headers go first
            self.connection.sendfile(source)
        else:
            super().copyfile(source, outputfile)

    def log_message(self, fmt, *args) -> None:  # keep the terminal for the URL and errors
        if len(args) > 1 and str(args[1]).startswith(("4", "5")):
            super().log_message(fmt, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # a room at boot: ~30 laptops × 6 connections each (browsers' per-host limit) arrive
    # together; the default backlog of 5 would refuse or delay most (the kernel caps it
    # at net.core.somaxconn)
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        # a student reloading mid-download resets the connection: not worth a traceback
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_server(port: int = 8000, directory=DIST, isolate: bool = True, host: str = LOCAL) -> Server:
    """A server on host:port (port 0 = any free port); raises SystemExit if it cannot bind."""
    for ext, kind in MIME.items():
        mimetypes.add_type(kind, ext)
    handler = functools.partial(type("H", (Handler,), {"isolate": isolate}), directory=str(directory))
    try:
        return Server((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"error: port {port} on {host} is already in use (a server on another "
                             f"--host address may hold it too); pick another with --port N "
                             f"(or stop what holds it)") from None
        if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            raise SystemExit(f"error: cannot listen on --host {host} ({e.strerror or e}); give one of "
                             f"this machine's IPv4 addresses, or --room for all of them") from None
        raise


def start_in_thread(directory=DIST, isolate: bool = True, port: int = 0,
                    host: str = LOCAL) -> tuple[Server, str]:
    """Serve in a daemon thread (tests, benchmarks); returns (server, base URL)."""
    server = make_server(port, directory, isolate, host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # a server on every address is reached here through loopback
    reach = LOCAL if host in (ALL, "") else host
    return server, f"http://{reach}:{server.server_address[1]}"


# ---- the addresses a room opens -----------------------------------------------------------

def _ipv4_outside(addr: str) -> bool:
    """True for an IPv4 address another machine could reach (not loopback, not 0.0.0.0)."""
    try:
        a = ipaddress.IPv4Address(addr)
    except ValueError:
        return False
    return not (a.is_loopback or a.is_unspecified)


def parse_ip_addr(text: str) -> list[str]:
    """The addresses in ``ip -4 -o addr`` output (``2: wlan0 inet 192.168.1.23/24 brd ...``)."""
    words = text.split()
    return [words[i + 1].split("/")[0] for i, w in enumerate(words[:-1]) if w == "inet"]


def lan_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this machine, the default route's first.

    Nothing is sent: ``connect()`` on a UDP socket only asks the kernel which interface
    would carry a packet to an outside address (192.0.2.1, TEST-NET-1 of RFC 5737). Linux's
    ``ip`` lists the other interfaces; elsewhere (macOS, Windows) the host name's own
    addresses do, which those systems resolve locally (an ``ip``-less Linux may ask its DNS).
    """
    found = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            found.append(s.getsockname()[0])
    except OSError:
        pass  # no route at all (a network without a gateway): the lists below may still have it
    ip = shutil.which("ip")
    if ip:
        try:
            out = subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True,
                                 text=True, timeout=5).stdout
            found += parse_ip_addr(out)
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        try:
            found += [ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
        except OSError:
            pass
    return [a for a in dict.fromkeys(found) if _ipv4_outside(a)]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def banner(host: str, port: int, isolate: bool = True) -> list[str]:
    """The lines ``serve`` prints: where to open the page, and for a room what it lacks there."""
    one_thread = "" if isolate else "  [no cross-origin isolation: one thread]"
    if _loopback(host):
        return [f"KV Cache Lab is served at http://{host}:{port}/  (Ctrl-C stops){one_thread}"]
    every = host in (ALL, "")
    addrs = lan_addresses() if every else [host]
    lines = [f"KV Cache Lab is served to the room on port {port}  (Ctrl-C stops){one_thread}"]
    if addrs:
        lines.append("students open:" if len(addrs) == 1 else "students open one of:")
        lines += [f"  http://{a}:{port}/" for a in addrs]
    else:
        lines.append(f"no network address found on this machine: join the room's network, look the "
                     f"address up (ip addr, ipconfig) and give students http://ADDRESS:{port}/")
    if every:
        lines.append(f"this machine itself: http://127.0.0.1:{port}/ (a secure context: cached, isolated)")
    lines.append(ROOM_NOTE)
    return lines


# ---- the command --------------------------------------------------------------------------

def add_arguments(ap: argparse.ArgumentParser) -> None:
    """--port, --host / --room, --no-isolation: shared by ``python -m builder serve`` and
    ``python -m builder.serve``."""
    ap.add_argument("--port", type=int, default=8000, help="serve: port (default 8000)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--host", default=LOCAL, metavar="ADDR",
                       help=f"serve: IPv4 address to listen on (default {LOCAL}: this machine only)")
    where.add_argument("--room", dest="host", action="store_const", const=ALL,
                       help=f"serve: listen on every address (= --host {ALL}) and print the ones students open")
    ap.add_argument("--no-isolation", action="store_true",
                    help="serve: leave COOP/COEP out (onnxruntime-web: one thread)")


def serve(port: int = 8000, isolate: bool = True, host: str = LOCAL) -> None:
    if not (DIST / "index.html").is_file():
        raise SystemExit("error: dist/ is not built; run: python -m builder site")
    server = make_server(port, isolate=isolate, host=host)
    print("\n".join(banner(host, server.server_address[1], isolate)), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m builder.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    a = ap.parse_args()
    serve(a.port, isolate=not a.no_isolation, host=a.host)

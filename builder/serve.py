"""Serve ``dist/`` on 127.0.0.1 with the headers the page needs.

onnxruntime-web only runs threaded when the page is cross-origin isolated, which takes
``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy:
require-corp`` on every response; ``.wasm`` must be served as ``application/wasm`` for
streaming compilation. ``isolate=False`` leaves the two headers out (one thread), to
measure what isolation buys: ``python -m builder.serve --no-isolation``.
"""

from __future__ import annotations

import argparse
import errno
import functools
import http.server
import mimetypes
import threading

from .site import DIST

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

    def log_message(self, fmt, *args) -> None:  # keep the terminal for the URL and errors
        if len(args) > 1 and str(args[1]).startswith(("4", "5")):
            super().log_message(fmt, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def make_server(port: int = 8000, directory=DIST, isolate: bool = True) -> Server:
    """A server on 127.0.0.1:port (0 = any free port); raises SystemExit if the port is taken."""
    for ext, kind in MIME.items():
        mimetypes.add_type(kind, ext)
    handler = functools.partial(type("H", (Handler,), {"isolate": isolate}), directory=str(directory))
    try:
        return Server(("127.0.0.1", port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"error: port {port} on 127.0.0.1 is already in use; "
                             f"pick another with --port N (or stop what holds it)") from None
        raise


def start_in_thread(directory=DIST, isolate: bool = True, port: int = 0) -> tuple[Server, str]:
    """Serve in a daemon thread (tests, benchmarks); returns (server, base URL)."""
    server = make_server(port, directory, isolate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def serve(port: int = 8000, isolate: bool = True) -> None:
    if not (DIST / "index.html").is_file():
        raise SystemExit("error: dist/ is not built; run: python -m builder site")
    server = make_server(port, isolate=isolate)
    note = "" if isolate else "  [no cross-origin isolation: one thread]"
    print(f"KV Cache Lab is served at http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C stops){note}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m builder.serve", description=__doc__)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--no-isolation", action="store_true", help="leave COOP/COEP out (onnxruntime-web: one thread)")
    a = ap.parse_args()
    serve(a.port, isolate=not a.no_isolation)

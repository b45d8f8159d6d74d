"""Serve ``dist/`` on 127.0.0.1 with the headers the page needs.

onnxruntime-web only runs threaded when the page is cross-origin isolated, which takes
``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy:
require-corp`` on every response; ``.wasm`` must be served as ``application/wasm`` for
streaming compilation.
"""

from __future__ import annotations

import functools
import http.server
import mimetypes

from .site import DIST

MIME = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".whl": "application/zip",
    ".zip": "application/zip",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args) -> None:  # keep the terminal for the URL and errors
        if args and str(args[1]).startswith(("4", "5")):
            super().log_message(fmt, *args)


def make_server(port: int = 8000, directory=DIST) -> http.server.ThreadingHTTPServer:
    for ext, kind in MIME.items():
        mimetypes.add_type(kind, ext)
    handler = functools.partial(Handler, directory=str(directory))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve(port: int = 8000) -> None:
    if not (DIST / "index.html").is_file():
        raise SystemExit("error: dist/ is not built; run: python -m builder site")
    server = make_server(port)
    print(f"KV Cache Lab is served at http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass

"""The browser host: onnxruntime-web for the model, ``WebAssembly`` for the KV store.

The only module of ``kvlab`` that touches Pyodide's ``js`` bridge. The page's JavaScript
(``static/host.js``) hands Python one object, ``js_host``, with:

    exports           the KV store instance's exports (kv_* functions and ``memory``)
    read(ptr, n)      → Uint8Array, a copy of the store memory [ptr, ptr + n)
    view(ptr, n)      → Uint8Array, a live view of it (for writing into)
    run(ids, pos, t)  → Promise: ONE model run; JS reads the step table at t, feeds
                        onnxruntime-web views of the store memory, writes the outputs back
    now()             performance.now()
    config, tokenizerJson, variant ("simd" | "scalar")

Why this shape: every crossing of the bridge costs microseconds (a cached function) to
hundreds of microseconds (a chain of attribute lookups), so references are taken once here
and only ints cross per call; the float tensors never enter Python at all.
"""

from __future__ import annotations

import json

from pyodide.ffi import to_js  # Pyodide only: this module is never imported natively

from ..store import KVStore, StepTable


class JsModule:
    """``kvlab.store.Module`` over a JS ``WebAssembly.Instance``: call / read / write."""

    def __init__(self, js_host) -> None:
        exports = js_host.exports
        names = [n for n in js_host.exportNames() if n != "memory"]
        # one attribute lookup per export, ever: later calls go straight to the function
        self._funcs = {n: getattr(exports, n) for n in names}
        self._read = js_host.read
        self._view = js_host.view

    def call(self, name: str, *args: int | float) -> int | float:
        try:
            f = self._funcs[name]
        except KeyError:
            raise AttributeError(f"the KV store exports no {name!r}") from None
        return f(*args)

    def read(self, ptr: int, nbytes: int) -> bytes:
        return self._read(ptr, nbytes).to_bytes()

    def write(self, ptr: int, data: bytes) -> None:
        if data:
            # a fresh view each time: the memory may have grown (detaching old views)
            self._view(ptr, len(data)).assign(data)


class BrowserHost:
    """The ``kvlab.host.base.Host`` of the page."""

    name = "browser"

    def __init__(self, js_host) -> None:
        self.config = json.loads(js_host.configJson)
        self.tokenizer_json = js_host.tokenizerJson
        self.variant = js_host.variant
        self.module = JsModule(js_host)
        self.store = KVStore(self.module)
        self._run = js_host.run
        self.now_ms = js_host.now  # performance.now, called directly: no wrapper

    def run(self, input_ids, position_ids, table: StepTable) -> None:
        raise RuntimeError("the browser host's model answers asynchronously: use Engine.generate_async")

    async def run_async(self, input_ids: list[int], position_ids: list[int], table: StepTable) -> None:
        """One JS call per model run: the lists become JS arrays, the table is a pointer."""
        await self._run(to_js(input_ids), to_js(position_ids), table.ptr)

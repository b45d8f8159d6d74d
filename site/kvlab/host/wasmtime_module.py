"""The KV store module through wasmtime: the native side of ``kvlab.store.Module``.

Loads a ``kvstore*.wasm`` (no imports) and exposes ``call`` / ``read`` / ``write``, plus
``buffer`` for zero-copy NumPy views. The memory can grow during any call (the store grows
it on demand), which may MOVE its base address: take views after the call that could grow
it, and never keep one across such a call.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import wasmtime

_ENGINE: wasmtime.Engine | None = None
_MODULES: dict[str, wasmtime.Module] = {}


def _module(path: Path) -> wasmtime.Module:
    """Compiled modules are cached per path: compiling is the slow part, instances are cheap."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine()
    key = str(Path(path).resolve())
    if key not in _MODULES:
        _MODULES[key] = wasmtime.Module.from_file(_ENGINE, key)
    return _MODULES[key]


class WasmtimeModule:
    """One fresh instance of a KV store module (its own memory and state)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        module = _module(self.path)
        self.store = wasmtime.Store(_ENGINE)
        self.instance = wasmtime.Instance(self.store, module, [])
        ex = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = ex["memory"]
        self._funcs = {e.name: ex[e.name] for e in module.exports if e.name != "memory"}

    # ---- the protocol of kvlab.store.Module

    def call(self, name: str, *args: int | float) -> int | float:
        try:
            f = self._funcs[name]
        except KeyError:
            raise AttributeError(f"the KV store exports no {name!r}") from None
        return f(self.store, *args)

    def read(self, ptr: int, nbytes: int) -> bytes:
        self._check(ptr, nbytes)
        return bytes(self.memory.read(self.store, ptr, ptr + nbytes))

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data))
        if data:
            self.memory.write(self.store, data if isinstance(data, bytearray) else bytearray(data), ptr)

    # ---- native extras

    def buffer(self, ptr: int, nbytes: int) -> memoryview:
        """A writable zero-copy view of [ptr, ptr + nbytes): ``np.frombuffer(m.buffer(p, n), np.float32)``.

        Valid only until the next call that may grow memory (re-fetch it after calls).
        """
        self._check(ptr, nbytes)
        base = ctypes.addressof(self.memory.data_ptr(self.store).contents)
        return memoryview((ctypes.c_ubyte * nbytes).from_address(base + ptr)).cast("B")

    def memory_bytes(self) -> int:
        return self.memory.data_len(self.store)

    def exports(self) -> list[str]:
        return sorted(self._funcs)

    def _check(self, ptr: int, nbytes: int) -> None:
        if ptr < 0 or nbytes < 0 or ptr + nbytes > self.memory.data_len(self.store):
            raise IndexError(f"[{ptr}, {ptr + nbytes}) is outside the store's memory")

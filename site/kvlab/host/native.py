"""The native host: the ONNX model in onnxruntime, the KV store's .wasm in wasmtime.

The same ``kvstore.wasm`` the page loads runs here, so every policy, kernel and byte
count is tested natively. The model reads its past straight out of the store's linear
memory and writes its outputs straight into it (onnxruntime I/O binding on raw
addresses): no copy passes through Python, and no NumPy array is built per layer.
"""

from __future__ import annotations

import ctypes
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifacts import ArtifactError, verify
from ..store import KVStore, StepTable
from .wasmtime_module import WasmtimeModule


class NativeHost:
    name = "native"

    def __init__(self, folder: str | Path, simd: bool = True, threads: int = 0) -> None:
        folder = Path(folder)
        verify(folder)
        self.config = json.loads((folder / "config.json").read_text())
        self.tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
        wasm = folder / ("kvstore.wasm" if simd else "kvstore-scalar.wasm")
        self.module = WasmtimeModule(wasm)
        self.store = KVStore(self.module)
        self.variant = "simd" if simd else "scalar"

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # warnings about unused initializers are noise here
        try:
            self.session = ort.InferenceSession(str(folder / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ArtifactError(f"model.onnx could not be loaded by onnxruntime: {e}") from None
        c = self.config
        self._heads = (c["n_kv_heads"], c["n_heads"], c["head_dim"])

    # ---- the Host interface --------------------------------------------------------------

    def run(self, input_ids: list[int], position_ids: list[int], table: StepTable) -> None:
        kvh, qh, d = self._heads
        s = len(input_ids)
        f32 = np.float32
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", np.array([input_ids], dtype=np.int64))
        io.bind_cpu_input("position_ids", np.array([position_ids], dtype=np.int64))
        # the memory may have moved (grown) since the last call: take its address now
        base = ctypes.addressof(self.module.memory.data_ptr(self.module.store).contents)
        for i, lay in enumerate(table.layers):
            p = lay.P
            io.bind_input(f"past_key_values.{i}.key", "cpu", 0, f32, [1, kvh, p, d], base + lay.past_k)
            io.bind_input(f"past_key_values.{i}.value", "cpu", 0, f32, [1, kvh, p, d], base + lay.past_v)
            io.bind_input(f"past_mask.{i}", "cpu", 0, f32, [1, kvh, p], base + lay.past_mask)
            io.bind_output(f"new.{i}.key", "cpu", 0, f32, [1, kvh, s, d], base + lay.new_k)
            io.bind_output(f"new.{i}.value", "cpu", 0, f32, [1, kvh, s, d], base + lay.new_v)
            io.bind_output(f"attn.{i}", "cpu", 0, f32, [1, qh, p + s], base + lay.attn)
            io.bind_output(f"entropy.{i}", "cpu", 0, f32, [1, qh], base + lay.entropy)
        io.bind_output("logits", "cpu", 0, f32, [1, self.config["vocab"]], base + table.logits)
        self.session.run_with_iobinding(io)

    def now_ms(self) -> float:
        return time.perf_counter() * 1000.0

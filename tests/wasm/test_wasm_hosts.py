"""Both hosts, one binary: the same calls give the same bytes and samples in wasmtime and
in a JS engine (Node's WebAssembly, standing in for the browser's).

Skipped when ``node`` is not installed. Inputs are made from integers so that both sides
build bit-identical float32 arrays without relying on Math.sin vs libm.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm
from kvlab.host.wasmtime_module import WasmtimeModule
from kvlab.store import KVStore

NODE = shutil.which("node")

SHAPE = (30, 3, 9, 64, 49152)
STEPS = (9, 1, 1, 70, 1)

JS = r"""
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
const [path, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);
const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const e = instance.exports;
const val = (i, salt) => ((i * 2654435761 + salt * 40503) % 1000003) / 1000003 * 8 - 4;
e.kv_init(30, 3, 9, 64, 49152);
e.kv_configure(-1, 3, 2, 32);   // K q4, V q8
e.kv_configure(7, 1, 3, 16);    // one layer f16 / q4
e.kv_seed(1234);
const samples = [];
let base = 0;
for (const S of steps) {
  const t = e.kv_step_begin(S);
  const w = new Int32Array(e.memory.buffer, t, 4 + 8 * 30);
  for (let l = 0; l < 30; l++) {
    for (const [slot, salt] of [[4, 2 * l], [5, 2 * l + 1]]) {
      const a = new Float32Array(e.memory.buffer, w[4 + 8 * l + slot], 3 * S * 64);
      for (let i = 0; i < a.length; i++) a[i] = val(base + i, salt);
    }
  }
  const logits = new Float32Array(e.memory.buffer, w[2], 49152);
  for (let i = 0; i < logits.length; i++) logits[i] = val(i + base, 999);
  e.kv_step_commit(S);
  samples.push(e.kv_sample(w[2], 49152, 0.7, 50, 0.9), e.kv_argmax(w[2], 49152));
  base += S * 1000;
}
const h = createHash("sha256");
for (let l = 0; l < 30; l++)
  for (const which of [0, 1, 2])
    h.update(new Uint8Array(e.memory.buffer, e.kv_layer_ptr(l, which),
                            4 * 3 * e.kv_capacity(l) * (which == 2 ? 1 : 64)));
console.log(JSON.stringify({ samples, staging: h.digest("hex"), bytes: e.kv_bytes(-1, 0) + e.kv_bytes(-1, 1) }));
"""


def val(i: np.ndarray, salt: int) -> np.ndarray:
    """The JS val() in float64 exactly (integers stay below 2^53), then float32."""
    i = i.astype(np.float64)
    return (np.fmod(i * 2654435761 + salt * 40503, 1000003) / 1000003 * 8 - 4).astype(np.float32)


def run_wasmtime(path) -> dict:
    m = WasmtimeModule(path)
    s = KVStore(m)
    s.init(*SHAPE)
    s.configure(-1, "q4", "q8", 32)
    s.configure(7, "f16", "q4", 16)
    s.seed(1234)
    samples, base = [], 0
    for S in STEPS:
        t = s.step_begin(S)
        for i, L in enumerate(t.layers):
            idx = base + np.arange(3 * S * 64)
            m.write(L.new_k, val(idx, 2 * i).tobytes())
            m.write(L.new_v, val(idx, 2 * i + 1).tobytes())
        m.write(t.logits, val(np.arange(49152) + base, 999).tobytes())
        s.step_commit(S)
        samples += [s.sample(t.logits, temperature=0.7, top_k=50, top_p=0.9), s.argmax(t.logits)]
        base += S * 1000
    h = hashlib.sha256()
    for layer in range(30):
        for which in (0, 1, 2):
            h.update(m.read(m.call("kv_layer_ptr", layer, which), 4 * 3 * s.capacity(layer) * (1 if which == 2 else 64)))
    return {"samples": samples, "staging": h.hexdigest(), "bytes": s.bytes(-1, 0) + s.bytes(-1, 1)}


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("name", [SIMD_NAME, SCALAR_NAME])
def test_wasmtime_and_a_js_engine_agree(tmp_path, name):
    path = build_wasm() / name
    script = tmp_path / "run.mjs"
    script.write_text(JS)
    r = subprocess.run([NODE, str(script), str(path), json.dumps(STEPS)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == run_wasmtime(path)


def test_simd_and_scalar_builds_agree_end_to_end():
    d = build_wasm()
    assert run_wasmtime(d / SIMD_NAME) == run_wasmtime(d / SCALAR_NAME)

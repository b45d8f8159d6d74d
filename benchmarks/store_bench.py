"""KV store throughput in wasmtime: SIMD vs scalar kernels, a memcpy baseline, step costs.

    PYTHONPATH=site:. python benchmarks/store_bench.py [--quick]

Prints two tables:
  1. GB/s of fp32 data quantized (input) / dequantized (output) per format, for the SIMD
     and scalar builds, next to kv_memcpy (memory.copy) in the same runtime; then KIVI's
     per-channel blocks (one call per block of G x 256 values: a few percent of call
     overhead included);
  2. the cost of one decode step (kv_step_begin(1) + kv_step_commit(1), through the
     Python KVStore, i.e. what the engine pays) with 128 / 512 / 2048 tokens cached, for
     SmolLM2-135M's shape (30 layers, 3 KV heads, head_dim 64): per format, and for the
     store's mechanisms on top of q4 (an aging window, per-channel keys, collapsed keys).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "site")]

from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm  # noqa: E402
from kvlab import formats  # noqa: E402
from kvlab.host.wasmtime_module import WasmtimeModule  # noqa: E402
from kvlab.store import KVStore  # noqa: E402

QUICK = "--quick" in sys.argv
# CPU time of this thread: wasmtime runs the module on it, and unlike wall time it does not
# count the slices other processes take on a busy 2-core machine (memory bandwidth they
# use still shows)
clock = time.thread_time
N = 1 << 20  # floats per kernel call (4 MiB of fp32)
REPEAT = 3 if QUICK else 10


def best_time(fn, repeat: int = REPEAT) -> float:
    """Best wall time of fn() over `repeat` runs (after one warm-up), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


# ---------------------------------------------------------------------------------------
# 1. Kernel throughput
# ---------------------------------------------------------------------------------------


def kernel_table(d: Path) -> None:
    x = (np.random.default_rng(0).standard_normal(N) * 3).astype(np.float32)
    rows = []
    mods = {}
    for name in (SIMD_NAME, SCALAR_NAME):
        m = WasmtimeModule(d / name)
        src, dst, out = m.call("kv_alloc", 4 * N), m.call("kv_alloc", 4 * N), m.call("kv_alloc", 4 * N)
        m.write(src, x.tobytes())
        mods[name] = (m, src, dst, out)
    gb = 4 * N / 1e9
    m, src, dst, _ = mods[SIMD_NAME]
    memcpy = gb / best_time(lambda: m.call("kv_memcpy", dst, src, 4 * N))
    print(f"kernels on {N:,} fp32 values ({4 * N >> 20} MiB), wasmtime, best of {REPEAT}")
    print(f"  kv_memcpy baseline: {memcpy:6.2f} GB/s\n")
    print(f"  {'format':<8}{'G':>4}  {'quantize GB/s':>22}  {'dequantize GB/s':>22}")
    print(f"  {'':<8}{'':>4}  {'simd':>10} {'scalar':>10} {'x':>2}  {'simd':>10} {'scalar':>10} {'x':>2}")
    for fmt in formats.NAMES:
        if fmt == formats.NONE:  # holds nothing: no throughput to speak of
            continue
        for G in (32,) if fmt in (formats.F32, formats.F16) else formats.GROUP_SIZES:
            q, dq = {}, {}
            for name, (m, src, dst, out) in mods.items():
                q[name] = gb / best_time(lambda m=m, a=(fmt, G, src, N, dst): m.call("kv_quantize", *a))
                dq[name] = gb / best_time(lambda m=m, a=(fmt, G, dst, N, out): m.call("kv_dequantize", *a))
            rows.append((fmt, G, q, dq))
            print(
                f"  {formats.NAMES[fmt]:<8}{G if formats.is_grouped(fmt) else '-':>4}  "
                f"{q[SIMD_NAME]:10.2f} {q[SCALAR_NAME]:10.2f} {q[SIMD_NAME] / q[SCALAR_NAME]:4.1f}x"
                f"  {dq[SIMD_NAME]:10.2f} {dq[SCALAR_NAME]:10.2f} {dq[SIMD_NAME] / dq[SCALAR_NAME]:4.1f}x"
            )
    D = formats.CHANNEL_DMAX
    print(f"\n  per-channel blocks (KIVI keys), head_dim {D}, {N:,} values in blocks of G entries")
    for fmt in formats.CHANNEL_BITS:
        for G in formats.GROUP_SIZES:
            blocks = N // (G * D)
            q, dq = {}, {}
            for name, (m, src, dst, out) in mods.items():
                def quant(m=m, src=src, dst=dst, G=G, blocks=blocks):
                    step = 4 * D + G * formats.channel_row_bytes(fmt, D)
                    for b in range(blocks):
                        m.call("kv_quantize_channel", fmt, G, src + 4 * b * G * D, D, dst + b * step)

                def dequant(m=m, dst=dst, out=out, G=G, blocks=blocks):
                    step = 4 * D + G * formats.channel_row_bytes(fmt, D)
                    for b in range(blocks):
                        m.call("kv_dequantize_channel", fmt, G, dst + b * step, D, out + 4 * b * G * D)
                q[name] = gb / best_time(quant)
                dq[name] = gb / best_time(dequant)
            print(
                f"  {formats.NAMES[fmt] + '/ch':<8}{G:>4}  "
                f"{q[SIMD_NAME]:10.2f} {q[SCALAR_NAME]:10.2f} {q[SIMD_NAME] / q[SCALAR_NAME]:4.1f}x"
                f"  {dq[SIMD_NAME]:10.2f} {dq[SCALAR_NAME]:10.2f} {dq[SIMD_NAME] / dq[SCALAR_NAME]:4.1f}x"
            )
    print()


# ---------------------------------------------------------------------------------------
# 2. Step cost
# ---------------------------------------------------------------------------------------


def k128(s: KVStore) -> None:
    s.age(-1, 0, 128, 0)


def kivi(s: KVStore) -> None:
    s.age(-1, 0, 0, 1)


def collapsed(s: KVStore) -> None:  # every KV head: the worst case, a RoPE turn per key each way
    for layer in range(s.n_layers):
        for h in range(s.n_kv_heads):
            s.collapse(layer, h, 100000.0, None)


MECHANISMS = {"q4/q4 +k128": k128, "q4/q4 KIVI": kivi, "q4/q4 collapsed": collapsed}


def filled_store(path: Path, kv: tuple[str, str], tokens: int, rng, setup=None) -> tuple[KVStore, WasmtimeModule]:
    """A SmolLM2-shaped store holding `tokens` random tokens (realistic values: quantizing
    zeros would flatter q4/q8)."""
    m = WasmtimeModule(path)
    s = KVStore(m)
    s.init(n_layers=30, n_kv_heads=3, n_q_heads=9, head_dim=64, vocab=49152)
    s.configure(-1, *kv, 32)
    if setup:
        setup(s)
    t = s.step_begin(tokens)
    for L in t.layers:
        m.write(L.new_k, (rng.standard_normal(3 * tokens * 64) * 2).astype(np.float32).tobytes())
        m.write(L.new_v, rng.standard_normal(3 * tokens * 64).astype(np.float32).tobytes())
    s.step_commit(tokens)
    return s, m


def step_table(d: Path) -> None:
    steps = 30 if QUICK else 100
    rounds = 3 if QUICK else 5
    print("one decode step: step_begin(1) + step_commit(1) through KVStore (what the engine pays),")
    print(f"best of {rounds} means over {steps} steps, CPU microseconds; then a 256-token prefill, per token")
    print(f"  {'K/V':<16} {'build':<7} {'128 tok':>9} {'512 tok':>9} {'2048 tok':>9}   {'prefill/token':>16}")
    rng = np.random.default_rng(1)
    rows = [(kv, "/".join(kv), None) for kv in (("f32", "f32"), ("f16", "f16"), ("q8", "q8"), ("q4", "q4"),
                                                 ("q4", "q8"), ("q3", "q3"), ("q2", "q2"), ("q4_0", "q4_0"),
                                                 ("turbo4", "turbo4"), ("turbo2", "turbo2"))]
    rows += [(("q4", "q4"), label, setup) for label, setup in MECHANISMS.items()]
    for kv, row_label, setup in rows:
        for name in (SIMD_NAME, SCALAR_NAME):
            cells = []
            for target in (128, 512, 2048):
                s, m = filled_store(d / name, kv, target, rng, setup)
                # reserve the capacity of the steps to come, so this is the steady state (a
                # capacity growth comes every ~25% more tokens and costs a re-layout copy)
                s.step_begin(rounds * steps + 1)
                best = float("inf")
                for _ in range(rounds):
                    t0 = clock()
                    for _ in range(steps):
                        s.step_begin(1)
                        s.step_commit(1)
                    best = min(best, (clock() - t0) / steps * 1e6)
                cells.append(best)
            # a 256-token prefill into the reset store, per token: the work inside wasm
            # (allocation, staging zeroing, quantize + dequantize 180 rows of 64 values per
            # token) with the two calls' overhead amortised
            best_batch = float("inf")
            for _ in range(rounds):
                s.reset()
                t0 = clock()
                s.step_begin(256)
                s.step_commit(256)
                best_batch = min(best_batch, (clock() - t0) / 256 * 1e6)
            label = "simd" if name == SIMD_NAME else "scalar"
            print(f"  {row_label:<16} {label:<7} " + " ".join(f"{c:9.1f}" for c in cells) + f"   {best_batch:16.2f}")
    m = WasmtimeModule(d / SIMD_NAME)
    t0 = clock()
    for _ in range(2000):
        m.call("kv_version")
    print(f"\n  (one empty wasmtime-py call: {(clock() - t0) / 2000 * 1e6:.1f} us)")


if __name__ == "__main__":
    d = build_wasm()
    kernel_table(d)
    step_table(d)

"""Decode speed of the native host at several context lengths, full cache vs q4/q4.

    python benchmarks/decode_bench.py [--contexts 128 512 2048] [--new 32] [--threads 0 1]
    python benchmarks/decode_bench.py --set formats --contexts 2048 --threads 1

The prompt is real text (CPython's reference documentation) cut to the context length;
each row is one ``Engine.generate`` and its mean decode ms/token (the prompt's time apart).
``--set formats`` runs every storage format and the quantization techniques instead of the
two defaults (the model always reads fp32 staging, so what a format changes in decode is
the store's work on the one new token). Figures are printed, never asserted: compare
ratios measured in one run (each row also says its ratio to the first, the full cache).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvlab.artifacts import default_dir, default_profile
from kvlab.engine import Engine, Request
from kvlab.host.native import NativeHost

POLICIES = {"full fp32": {}, "q4/q4": {"quant": {"k_bits": 4, "v_bits": 4}}}


def _fmt(k: str, v: str) -> dict:
    return {"quant": {"k_format": k, "v_format": v}}


FORMATS = {"full fp32": {}, **{f"{k}/{v}": _fmt(k, v) for k, v in (
    ("f16", "f16"), ("q8", "q8"), ("q4", "q4"), ("q4_0", "q4_0"), ("q3", "q3"), ("q2", "q2"),
    ("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"))},
    "q4/q4 rotated": {"quant": {"k_bits": 4, "v_bits": 4, "rotate": True}},
    "q4/q4 + k128": {"quant": {"k_bits": 4, "v_bits": 4, "recent_k": 128}},
    "KIVI q4/q4": {"quant": {"k_bits": 4, "v_bits": 4, "k_axis": "channel"}},
    "entropy_bits 4": {"entropy_bits": {"bits": 4}},
    "collapse top 20, mean only": {"collapse": {"heads": 20, "bits": 0}}}
SETS = {"default": POLICIES, "formats": FORMATS}


def prompt_of(engine: Engine, n_tokens: int) -> str:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    ids = engine.tokenizer.encode(text[: n_tokens * 8])[:n_tokens]
    return engine.tokenizer.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--new", type=int, default=32, help="tokens decoded per measurement")
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1], help="0 = onnxruntime's default")
    ap.add_argument("--set", default="default", choices=tuple(SETS), help="which policies")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = []
    for threads in args.threads:
        engine = Engine(NativeHost(args.artifacts or default_dir(), threads=threads),
                        profile=json.loads(Path(default_profile()).read_text()))
        engine.generate(Request(prompt="warm up", max_new_tokens=4, ignore_eos=True))
        for ctx in args.contexts:
            prompt = prompt_of(engine, ctx)
            # once at this length first, discarded: the first run of a new size pays
            # onnxruntime's allocations, which would flatter every row after it
            engine.generate(Request(prompt=prompt, max_new_tokens=4, ignore_eos=True))
            first = None
            for name, pol in SETS[args.set].items():
                res = engine.generate(Request(prompt=prompt, max_new_tokens=args.new + 1,
                                              ignore_eos=True, policy=pol))
                rows.append({
                    "threads": threads or "default", "context": len(res["prompt_ids"]),
                    "policy": name, "ms_per_token": res["ms_per_token"],
                    "prefill_ms": res["prefill_ms"], "cache_bytes": res["cache_bytes"],
                    "ratio_vs_fp32": round(res["fp32_bytes"] / res["cache_bytes"], 2),
                })
                r = rows[-1]
                first = first or r
                print(f"threads={r['threads']!s:>7}  context={r['context']:>5}  {name:<26}  "
                      f"decode {r['ms_per_token']:7.2f} ms/token ({r['ms_per_token'] / first['ms_per_token']:4.2f}x)  "
                      f"prefill {r['prefill_ms']:8.1f} ms ({r['prefill_ms'] / first['prefill_ms']:4.2f}x)  "
                      f"cache {r['cache_bytes'] / 2**20:7.2f} MiB (fp32 / held = {r['ratio_vs_fp32']}x)",
                      flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()

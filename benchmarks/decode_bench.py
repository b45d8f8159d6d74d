"""Decode speed of the native host at several context lengths, full cache vs q4/q4.

    python benchmarks/decode_bench.py [--contexts 128 512 2048] [--new 32] [--threads 0 1]

The prompt is real text (CPython's reference documentation) cut to the context length;
each row is one ``Engine.generate`` and its mean decode ms/token (the prompt's time apart).
Figures are printed, never asserted: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json

from kvlab.artifacts import default_dir
from kvlab.engine import Engine, Request
from kvlab.host.native import NativeHost

POLICIES = {"full fp32": {}, "q4/q4": {"quant": {"k_bits": 4, "v_bits": 4}}}


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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = []
    for threads in args.threads:
        engine = Engine(NativeHost(args.artifacts or default_dir(), threads=threads))
        engine.generate(Request(prompt="warm up", max_new_tokens=4, ignore_eos=True))
        for ctx in args.contexts:
            prompt = prompt_of(engine, ctx)
            for name, pol in POLICIES.items():
                res = engine.generate(Request(prompt=prompt, max_new_tokens=args.new + 1,
                                              ignore_eos=True, policy=pol))
                rows.append({
                    "threads": threads or "default", "context": len(res["prompt_ids"]),
                    "policy": name, "ms_per_token": res["ms_per_token"],
                    "prefill_ms": res["prefill_ms"], "cache_bytes": res["cache_bytes"],
                    "ratio_vs_fp32": round(res["fp32_bytes"] / res["cache_bytes"], 2),
                })
                r = rows[-1]
                print(f"threads={r['threads']!s:>7}  context={r['context']:>5}  {name:<9}  "
                      f"decode {r['ms_per_token']:7.2f} ms/token  prefill {r['prefill_ms']:8.1f} ms  "
                      f"cache {r['cache_bytes'] / 2**20:7.2f} MiB (fp32 / held = {r['ratio_vs_fp32']}x)",
                      flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Seed 004's mechanism claim, measured: how strong a mean-pooled summary key is beside the
exact keys it replaces.

    python benchmarks/summary_mechanism.py [--context 1024] [--n 3] [--chunk 64]

For n multi-needle prompts (seed 0) read with the full cache, every chunk of ``chunk``
tokens between the 4 sinks and the question, in every layer and KV head: the norm of the
chunk's mean post-RoPE key over the mean norm of its keys (what the summary's key is, vs
what it replaces). A query's logit on the summary is exactly the mean of its logits on the
chunk's keys (the dot product is linear), so its attention weight exp(mean) is at most the
chunk's mean weight (Jensen): one summary draws at most 1/chunk of the attention its chunk
drew, and less the more the chunk's keys disagree — the norm ratio measures that spread.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from kvlab import tasks
from kvlab.artifacts import default_dir
from kvlab.engine import Engine
from kvlab.evaluate import _Pass
from kvlab.host.native import NativeHost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    engine = Engine(NativeHost(args.artifacts or default_dir(), threads=args.threads))
    store, D = engine.store, engine.store.head_dim
    per_layer: dict[int, list[float]] = {}
    for item in tasks.make_items("multi-needle", engine.tokenizer, args.context, args.n, 0):
        p = _Pass(engine, {})
        engine.drive(p.feed(item.ids, "prompt"))
        for layer in range(store.n_layers):
            for h in range(store.n_kv_heads):
                K = np.frombuffer(store.rows(layer, h, 0), np.float32)[: store.live(layer, h) * D].reshape(-1, D)
                for lo in range(4, item.question_at - args.chunk + 1, args.chunk):
                    c = K[lo:lo + args.chunk].astype(np.float64)
                    ratio = np.linalg.norm(c.mean(0)) / np.linalg.norm(c, axis=1).mean()
                    per_layer.setdefault(layer, []).append(float(ratio))
    every = [r for rs in per_layer.values() for r in rs]
    print(f"summary key norm / mean exact key norm, {len(every)} chunks of {args.chunk} "
          f"({args.n} prompts × {store.n_layers} layers × {store.n_kv_heads} KV heads): "
          f"mean {statistics.mean(every):.3f}, min {min(every):.3f}, max {max(every):.3f}")
    print("per layer (mean): " + ", ".join(f"{layer}: {statistics.mean(rs):.2f}" for layer, rs in per_layer.items()))


if __name__ == "__main__":
    main()

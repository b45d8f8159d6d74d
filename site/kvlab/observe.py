"""The four observations of seed 001, measured on this model, next to the seed's numbers.

Seed 001 (an educational guide to KV-cache compression, measured on Llama 3.2 1B) builds
its four techniques on four observations: attention is mostly recent; key errors hurt
more than value errors; a few "heavy hitter" tokens get most of the attention; deep
layers attend more sharply than early ones. ``observations(profile)`` reads them off a
profile (``kvlab.profile``) and writes one sentence per observation from the numbers: the
builder runs it, so the sentences on the page always say what was measured.
"""

from __future__ import annotations

FORMAT = "kvlab-observations-1"

#: what seed 001 reports for Llama 3.2 1B Instruct (Q8_0 GGUF): published numbers, kept as
#: data so the page can set them beside ours
SEED_001 = {
    "model": "Llama 3.2 1B Instruct",
    "recent_share_last_128": 0.70,
    "layer_entropy_bits": {"layer 1": 6.29, "layer 11": 1.84},
    "kv_asymmetry": "key errors pass through softmax (amplified); value errors propagate linearly",
    "heavy_hitters": "attention follows a power law: a few tokens get high attention across all queries",
    "ppl_table": [
        {"config": "FP32 baseline", "ppl": 151.2, "vs_fp32": None, "compression": 1.0},
        {"config": "K=4b + V=FP16 + k128", "ppl": 153.2, "vs_fp32": 0.013, "compression": 2.9},
        {"config": "K=4b + V=Q4 + k128", "ppl": 155.7, "vs_fp32": 0.030, "compression": 6.4},
        {"config": "K=3b + V=Q4 + k128", "ppl": 166.0, "vs_fp32": 0.098, "compression": 7.1},
        {"config": "K=4b + V=Q2 + k128", "ppl": 306.1, "vs_fp32": 1.02, "compression": 8.0},
    ],
}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def observations(profile: dict) -> dict:
    """The observations object (``observations.json``) for a ``profile.json`` object."""
    m, s = profile["metrics"], profile["settings"]
    n_layers = len(m["layer_entropy"]["values"])
    ctx = s["context"] + s["queries"] / 2  # the mean context a query saw
    recent_layers = m["layer_recent_share"]["values"]
    recent = _mean(recent_layers)
    uniform = s["recent"] / ctx
    asym = profile["quant_asymmetry_kl"]
    ratio = asym["k_only"] / asym["v_only"] if asym["v_only"] > 0 else None
    top = {k: _mean(m[f"heavy_{k}"]["values"]) for k in ("top1", "top5", "top20")}
    top_ns = {k: _mean(m[f"heavy_{k}_no_sinks"]["values"]) for k in ("top1", "top5", "top20")}
    ent = m["layer_entropy"]["values"]
    lo = min(range(n_layers), key=lambda i: ent[i])
    bits = asym["bits"]
    obs = [
        {
            "id": "recency",
            "title": "Attention is mostly recent",
            "measured": {"share_last_128": recent, "uniform_share": uniform, "mean_context": ctx,
                         "per_layer": recent_layers},
            "seed": {"share_last_128": SEED_001["recent_share_last_128"]},
            "sentence": (f"{recent:.0%} of attention falls on the last {s['recent']} of about {ctx:.0f} tokens, "
                         f"where spreading it evenly would give {uniform:.0%} "
                         f"(seed 001: about {SEED_001['recent_share_last_128']:.0%} on Llama 3.2 1B)."),
        },
        {
            "id": "kv_asymmetry",
            "title": "Key errors hurt more than value errors",
            "measured": {"k_only_kl": asym["k_only"], "v_only_kl": asym["v_only"], "ratio": ratio,
                         "bits": bits, "group": asym["group"]},
            "seed": {"claim": SEED_001["kv_asymmetry"], "ppl_table": SEED_001["ppl_table"]},
            "sentence": (f"Quantizing only the keys to {bits} bits costs {asym['k_only']:.4f} nats of KL; only the "
                         f"values, {asym['v_only']:.4f}" + (f": keys are {ratio:.0f}x more sensitive." if ratio else ".")),
        },
        {
            "id": "heavy_hitters",
            "title": "A few tokens get most of the attention",
            "measured": {"top_1pct": top["top1"], "top_5pct": top["top5"], "top_20pct": top["top20"],
                         "without_sinks": {"top_1pct": top_ns["top1"], "top_5pct": top_ns["top5"],
                                           "top_20pct": top_ns["top20"]},
                         "per_layer_top_5pct": m["heavy_top5"]["values"]},
            "seed": {"claim": SEED_001["heavy_hitters"]},
            "sentence": (f"The top 1% of tokens hold {top['top1']:.0%} of the accumulated attention, the top 5% "
                         f"{top['top5']:.0%}, the top 20% {top['top20']:.0%} ({top_ns['top1']:.0%}, "
                         f"{top_ns['top5']:.0%}, {top_ns['top20']:.0%} without the first {s['sinks']} tokens)."),
        },
        {
            "id": "layer_entropy",
            "title": "Deep layers attend sharply",
            "measured": {"per_layer": ent, "first_layer": ent[0], "deepest_layer": ent[-1],
                         "sharpest_layer": lo, "sharpest_bits": ent[lo]},
            "seed": {"layer_entropy_bits": SEED_001["layer_entropy_bits"]},
            "sentence": (f"Layer 0 spreads attention over 2^{ent[0]:.2f} ≈ {2 ** ent[0]:.0f} tokens; layer {lo} over "
                         f"2^{ent[lo]:.2f} ≈ {2 ** ent[lo]:.0f}, the deepest layer over {2 ** ent[-1]:.0f} "
                         f"(seed 001: 6.29 bits in layer 1, 1.84 in layer 11)."),
        },
    ]
    return {
        "format": FORMAT,
        "model": profile["model"],
        "profile": {"format": profile["format"], "texts": profile["texts"], "settings": s,
                    "host": profile.get("host"), "seconds": profile.get("seconds")},
        "seed_source": f"seed 001 ({SEED_001['model']})",
        "observations": obs,
    }

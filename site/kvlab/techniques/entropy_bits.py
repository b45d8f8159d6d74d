"""Bits per KV head from its attention entropy: focused heads get more, diffuse ones fewer.

Seed 002's rule: b_h = b_avg + alpha · (H_avg − H₂(h)), alpha = 0.25, with H₂(h) the Rényi-2
entropy of the head's attention (−log2 Σ p², in bits; the profile's ``kv_head_entropy``,
the mean over the KV head's query group) and H_avg its mean over all KV heads; and its
Pareto remark: the lowest-entropy ~2 % of heads (attention sinks) carry most of the
quantization error, so they are not quantized (here: kept at 16 bits, ``skip``).

The store has widths 2, 3, 4, 8 (q2, q3, q4, q8 rows) and 16 (f16), not every real b_h, and
the point is a fair comparison: the cache must hold no more bytes than uniform b_avg
would. So the allocation is the one nearest to the rule within that budget: the skipped
(and, with ``retrieval``, the profile's best retrieval) heads take f16; every other head
starts at 2 bits and is raised one width at a time, always the raise that removes the most
squared distance (b − b_h)² per byte it costs (ties: the lower-entropy head, then the lower
(layer, head)), as long as it brings the head closer to its b_h and fits. K and V of a head
take the same width. ``alpha = 0`` keeps the skip rule alone (every other head aims at
b_avg; the budget's last raises go to the lowest-entropy heads). ``match_bytes: false``
drops the budget: each head takes the width nearest its b_h (ties: the wider), so the
skipped heads' bytes come on top (the seed's remark read literally: skip them, quantize the
rest as before).
"""

from __future__ import annotations

from .. import formats
from .base import Param, PolicyError, Technique
from .duo import retrieval_heads

WIDTHS = (2, 3, 4, 8)  # what a quantized head can take; skipped heads take 16


def allocate(entropy: list[list[float]], bits: int, alpha: float, skip: float, group: int, head_dim: int,
             keep16: set[tuple[int, int]] = frozenset(), match_bytes: bool = True) -> list[list[int]]:
    """Bits per (layer, KV head) for a profile's per-KV-head entropies (n_layers, kv_heads),
    with the total row bytes at most uniform ``bits``' (see the module docstring)."""
    heads = [(layer, k) for layer, row in enumerate(entropy) for k in range(len(row))]
    H = {x: float(entropy[x[0]][x[1]]) for x in heads}
    h_avg = sum(H.values()) / len(heads)

    def row(b: int) -> int:
        return formats.row_bytes(formats.from_bits(b), group, head_dim)

    by_entropy = sorted(heads, key=lambda x: (H[x], x))
    full = set(by_entropy[: round(skip * len(heads))]) | set(keep16)
    target = {x: bits + alpha * (h_avg - H[x]) for x in heads if x not in full}
    if not match_bytes:
        nearest = {x: min(WIDTHS, key=lambda b: (abs(b - t), -b)) for x, t in target.items()}
        alloc = {x: 16 for x in full} | nearest
        return [[alloc[(layer, k)] for k in range(len(row_))] for layer, row_ in enumerate(entropy)]
    alloc = {x: 16 for x in full} | {x: WIDTHS[0] for x in target}
    left = len(heads) * row(bits) - sum(row(b) for b in alloc.values())
    if left < 0:
        raise PolicyError(f"entropy_bits: {len(full)} heads at 16 bits already hold more than uniform {bits} bits "
                          f"would; lower skip or retrieval")
    while True:
        best = None
        for x, t in target.items():
            b = alloc[x]
            if b == WIDTHS[-1]:
                continue
            nb = WIDTHS[WIDTHS.index(b) + 1]
            gain, cost = (t - b) ** 2 - (t - nb) ** 2, row(nb) - row(b)
            if gain <= 0 or cost > left:
                continue
            key = (-gain / cost, H[x], x)
            if best is None or key < best[0]:
                best = (key, x, nb, cost)
        if best is None:
            break
        _, x, nb, cost = best
        alloc[x], left = nb, left - cost
    return [[alloc[(layer, k)] for k in range(len(row_))] for layer, row_ in enumerate(entropy)]


class EntropyBits(Technique):
    def __init__(self) -> None:
        super().__init__(
            name="entropy_bits",
            family="quantize",
            summary="Bits per KV head from its attention entropy, at the bytes of a uniform width.",
            source="seed 002 (per-head entropy-adaptive bits, the 2 % sink heads)",
            params=(
                Param("bits", "int", 4, "the average width b_avg (bytes as uniform b_avg)", choices=(2, 3, 4, 8)),
                Param("skip", "float", 0.02, "share of lowest-entropy KV heads kept at 16 bits", lo=0.0, hi=0.5),
                Param("alpha", "float", 0.25, "bits per bit of entropy below the average (the rule's 0.25)",
                      lo=0.0, hi=4.0),
                Param("retrieval", "int", 0, "the profile's best retrieval KV heads also kept at 16 bits",
                      lo=0, hi=4096),
                Param("match_bytes", "bool", True, "hold the bytes of uniform b_avg (off: each head its nearest width)"),
            ),
        )

    def check_policy(self, params, policy):
        q = policy.get("quant")
        if q and (q["k_bits"] != 32 or q["v_bits"] != 32 or q["k_format"] or q["v_format"]
                  or q["k_axis"] != "token"):
            raise PolicyError("entropy_bits chooses each KV head's formats itself: with it, quant may set only "
                              "group_size, rotate, recent_k and recent_v")

    def check_context(self, params, ctx):
        if not (ctx.profile and "kv_head_entropy" in ctx.profile.get("metrics", {})):
            raise PolicyError("entropy_bits needs the head profile (its per-head entropy): build it with "
                              "`python -m builder profile` or pass --head-profile FILE")
        n = ctx.model["n_layers"] * ctx.model["n_kv_heads"]
        if params["retrieval"] > n:
            raise PolicyError(f"entropy_bits.retrieval must be at most {n} (the model's KV heads), "
                              f"got {params['retrieval']}")
        if params["retrieval"] and "retrieval" not in ctx.profile["metrics"]:
            raise PolicyError("entropy_bits.retrieval needs the profile's retrieval scores")
        self.allocation(params, ctx)  # a budget the 16-bit heads alone exceed: said before the store is touched

    def allocation(self, params: dict, ctx) -> list[list[int]]:
        """Bits per (layer, KV head) for this model's profile, at the policy's group size."""
        keep = retrieval_heads(ctx, params["retrieval"]) if params["retrieval"] else set()
        group = ctx.policy.get("quant", {}).get("group_size", formats.GROUP_DEFAULT)
        return allocate(ctx.profile["metrics"]["kv_head_entropy"]["values"], params["bits"], params["alpha"],
                        params["skip"], group, ctx.model["head_dim"], keep, params["match_bytes"])

    def configure(self, store, params, ctx):
        for layer, row in enumerate(self.allocation(params, ctx)):
            for k, b in enumerate(row):
                f = formats.from_bits(b)
                store.configure_head(layer, k, f, f)

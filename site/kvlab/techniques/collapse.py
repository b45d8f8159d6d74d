"""Collapsed heads: the keys of the KV heads that barely depend on their input, stored as one
mean key plus a small residual.

Seed 000 (the KV collapse profiler) measures, per KV head, how much of the pre-RoPE key
energy one mean key mu carries over diverse texts (the profile's ``key_collapse``): near 1,
the head "routes" the same way whatever it reads. Such a head's keys can be held as mu and
a residual r_t = RoPE⁻¹(k_t) − mu at ``bits`` bits (``0``: mu alone); the store turns each
key back to its position with the graph's own RoPE angles when it stages it
(``kv_collapse``, wasm/collapse.c), so the model reads RoPE(mu + r'_t). The residual carries
``1 − collapse`` of the energy, so the same bits quantize it far more finely than the key.

Which heads: the ``heads`` most collapsed of the profile (``candidates.collapsed_keys``), or
a ``list`` of [layer, kv_head]. Where mu comes from (``mean``): ``"profile"`` — the mean
over every token of the profile's texts (``key_means``; held as 4·head_dim bytes per head
all the same, since the cache must have it to stage a key); ``"prompt"`` — the mean of the
head's keys in the prompt's first run (up to 512 tokens, ``kvlab.policy.PREFILL_CHUNK``,
fewer when a technique splits the prompt's runs), computed by the store when that run is
committed. Values are untouched (seed 000: values
never collapse). Composes with ``quant`` (its formats for every other head, its group size,
rotation and recent-key window for these too) and ``entropy_bits`` (applied after it), not
with per-channel keys (a per-channel block is not a residual).

Based on seed 000 (Lynch, "KV Collapse Profiler"); the low-variance keys it builds on are
Loki (Singhania et al. 2024) and EigenAttention (Saxena et al. 2024).
"""

from __future__ import annotations

from .. import formats
from .base import Param, PolicyError, Technique

BITS = (0, 2, 3, 4, 8, 16)  # residual widths: 0 = the mean alone (format none)


class Collapse(Technique):
    def __init__(self) -> None:
        super().__init__(
            name="collapse",
            family="quantize",
            summary="The most collapsed heads' keys as one mean pre-RoPE key plus a small residual.",
            source="seed 000 (KV collapse profiler: mean + residual for collapsed heads)",
            params=(
                Param("heads", "int", None, "the profile's N most collapsed KV heads", lo=1, hi=4096),
                Param("list", "heads", None, "these KV heads instead: [[layer, kv_head], …]"),
                Param("bits", "int", 8, "bits of the residual per value (0: the mean alone)", choices=BITS),
                Param("mean", "str", "profile", "where the mean key comes from: the profile's texts or the "
                      "prompt's first run", choices=("profile", "prompt")),
            ),
        )

    def validate(self, given):
        params = super().validate(given)
        if (params["heads"] is None) == (params["list"] is None):
            raise PolicyError("collapse takes exactly one of heads (the profile's N most collapsed) or list "
                              "([[layer, kv_head], …])")
        return params

    def example(self) -> dict:
        return {"heads": 1}

    def check_policy(self, params, policy):
        q = policy.get("quant")
        if q and q["k_axis"] == "channel":
            raise PolicyError("collapse stores a head's keys as residuals per token; quant.k_axis 'channel' "
                              "(KIVI) stores them per channel: use one of the two")

    def check_context(self, params, ctx):
        L, K = ctx.model["n_layers"], ctx.model["n_kv_heads"]
        prof = ctx.profile or {}
        if params["heads"] is not None:
            if "collapsed_keys" not in prof.get("candidates", {}):
                raise PolicyError("collapse.heads needs the head profile (its collapsed_keys): build it with "
                                  "`python -m builder profile`, pass --head-profile FILE, or give a list")
            if params["heads"] > L * K:
                raise PolicyError(f"collapse.heads must be at most {L * K} (the model's KV heads), "
                                  f"got {params['heads']}")
        for layer, head in params["list"] or []:
            if layer >= L or head >= K:
                raise PolicyError(f"collapse.list names KV head [{layer}, {head}], which does not exist: the "
                                  f"model has {L} layers of {K} KV heads")
        if params["mean"] == "profile":
            if "key_means" not in prof:
                raise PolicyError("collapse.mean 'profile' needs the head profile's key_means: build it with "
                                  "`python -m builder profile`, pass --head-profile FILE, or use mean 'prompt'")
            means = prof["key_means"]["values"]
            D = ctx.model["head_dim"]
            if len(means) != L or any(len(row) != K or any(len(mu) != D for mu in row) for row in means):
                raise PolicyError(f"collapse.mean 'profile': the profile's key_means are not {L} layers × {K} KV "
                                  f"heads × {D} values (a profile of another model?)")
        if ctx.model["head_dim"] % 2:
            raise PolicyError("collapse needs an even head_dim (RoPE turns pairs of channels)")

    def chosen(self, params: dict, ctx) -> list[tuple[int, int]]:
        """The (layer, KV head) pairs collapsed, most collapsed first for ``heads``."""
        if params["list"] is not None:
            return [(a, b) for a, b in params["list"]]
        ranked = ctx.profile["candidates"]["collapsed_keys"]
        return [(c["layer"], c["kv_head"]) for c in ranked[: params["heads"]]]

    def configure(self, store, params, ctx):
        k_fmt = formats.NONE if params["bits"] == 0 else formats.from_bits(params["bits"])
        means = ctx.profile["key_means"]["values"] if params["mean"] == "profile" else None
        for layer, head in self.chosen(params, ctx):
            store.configure_head(layer, head, k_fmt, store.head_format(layer, head, 1))
            store.collapse(layer, head, ctx.model["rope_theta"], means[layer][head] if means else None)

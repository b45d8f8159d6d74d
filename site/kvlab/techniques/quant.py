"""Uniform group-wise quantization of K and V, with K and V formats chosen apart.

Each token's 64-value key (and value) vector of each KV head is cut into groups of
``group_size`` values along head_dim; each group is stored as llama.cpp-style blocks:
8-bit = Q8_0 (fp16 scale + int8), 4/3/2-bit = Q4_1-style (fp16 scale and minimum +
codes), 16 = IEEE half, 32 = the full fp32 cache. ``k_format`` / ``v_format`` name a
format instead of a width, for the ones a width does not pick (``q4_0``: symmetric 4-bit,
llama.cpp's ``-ctk q4_0``; ``turbo2/3/4``: a random-sign Walsh-Hadamard rotation, then a
Lloyd-Max codebook per coordinate and a corrected norm, after TurboQuant, Zandieh et al.,
ICLR 2026). ``rotate`` puts every row through that rotation on its own before any format
(and back when staged), so its effect on outlier channels can be seen apart from the
codebook (the rotations of QuaRot and SpinQuant). The byte layouts are in ``kvlab.formats`` and docs/store.md.

Where the bits go in time and across channels, through the store's one aging mechanism
(``kv_age``): ``recent_k`` / ``recent_v`` keep each head's newest keys / values exact (fp32)
and quantize a token when it leaves that window (seed 001's progressive ``k128``: recent
keys carry most of the attention, so their errors cost most); ``k_axis: "channel"``
quantizes keys per channel over blocks of ``group_size`` tokens, each channel with its own
scale and minimum, the newest tokens waiting exact until a block is full (KIVI, Liu et al.,
ICML 2024: key outliers sit in fixed channels, so a per-channel scale does not let them
stretch every other channel's step). The waiting tokens are counted as cache bytes.

Based on the K/V asymmetry observation of the quant.cpp guide (seed 001: key errors are
amplified by softmax, value errors pass linearly) and llama.cpp's block formats (seed 002).
"""

from __future__ import annotations

from .. import formats
from .base import Param, PolicyError, Technique

BITS = (32, 16, 8, 4, 3, 2)
# every format the store has but `none` (it holds nothing: only `collapse` uses it, for keys
# that are their head's mean alone)
FORMAT_NAMES = tuple(n for f, n in formats.NAMES.items() if f != formats.NONE)


class Quant(Technique):
    def __init__(self) -> None:
        super().__init__(
            name="quant",
            family="quantize",
            summary="Group-wise integer quantization of keys and values, bits chosen apart.",
            source="seed 001 (K/V asymmetry), seed 002 (llama.cpp block formats), TurboQuant (seeds 000, 001)",
            params=(
                Param("k_bits", "int", 32, "bits per key value", choices=BITS),
                Param("v_bits", "int", 32, "bits per value-vector value", choices=BITS),
                Param("group_size", "int", 32, "values sharing one scale", choices=(16, 32, 64)),
                Param("k_format", "str", None, "the key format by name (instead of k_bits)", choices=FORMAT_NAMES),
                Param("v_format", "str", None, "the value format by name (instead of v_bits)", choices=FORMAT_NAMES),
                Param("rotate", "bool", False, "rotate every K and V row (random-sign Walsh-Hadamard) before its format"),
                Param("recent_k", "int", 0, "newest keys kept fp32, quantized when they leave the window", lo=0),
                Param("recent_v", "int", 0, "newest values kept fp32, quantized when they leave the window", lo=0),
                Param("k_axis", "str", "token", "keys quantized per token or per channel (KIVI)", choices=("token", "channel")),
            ),
        )

    def validate(self, given):
        """A format by name wins over the width; a width other than the default (32, what
        the page sends when it is not touched) that disagrees with it is an error."""
        params = super().validate(given)
        for side in "kv":
            name, bits = params[f"{side}_format"], params[f"{side}_bits"]
            if name is not None and bits != 32 and formats.BITS[formats.fmt(name)] != bits:
                raise PolicyError(f"quant.{side}_format {name!r} stores {formats.BITS[formats.fmt(name)]} bits, "
                                  f"but {side}_bits says {bits}; give one of the two")
        k_fmt, _ = self.formats_of(params)
        if params["k_axis"] == "channel" and k_fmt not in formats.CHANNEL_BITS:
            have = ", ".join(formats.NAMES[f] for f in formats.CHANNEL_BITS)
            raise PolicyError(f"quant.k_axis 'channel' needs 4, 3 or 2-bit keys ({have}); "
                              f"the keys are {formats.NAMES[k_fmt]}")
        return params

    def check_context(self, params, ctx):
        """A window longer than the model's context would never age anything: refuse it;
        per-channel blocks need a head_dim the store can hold in one block."""
        limit = ctx.model.get("context")
        for side in "kv":
            n = params[f"recent_{side}"]
            if limit is not None and n > limit:
                raise PolicyError(f"quant.recent_{side} = {n} is beyond the model's context of {limit} tokens")
        D = ctx.model.get("head_dim")
        if params["k_axis"] == "channel" and D is not None and (D % 16 or D > formats.CHANNEL_DMAX):
            raise PolicyError(f"quant.k_axis 'channel' needs a head_dim that is a multiple of 16 up to "
                              f"{formats.CHANNEL_DMAX}; this model's is {D}")

    @staticmethod
    def formats_of(params: dict) -> tuple[int, int]:
        """(key format, value format) the parameters ask for."""
        def one(side: str) -> int:
            name = params[f"{side}_format"]
            return formats.fmt(name) if name is not None else formats.from_bits(params[f"{side}_bits"])
        return one("k"), one("v")

    def configure(self, store, params: dict, ctx) -> None:
        store.configure(-1, *self.formats_of(params), params["group_size"])
        if params["rotate"]:
            store.rotate(-1, True, True)
        channel = params["k_axis"] == "channel"
        if params["recent_k"] or channel:
            store.age(-1, 0, params["recent_k"], int(channel))
        if params["recent_v"]:
            store.age(-1, 1, params["recent_v"], 0)

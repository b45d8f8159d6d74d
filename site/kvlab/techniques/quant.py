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
codebook (the rotations of QuaRot and SpinQuant). The byte layouts are in ``kvlab.formats`` and the README.

Based on the K/V asymmetry observation of the quant.cpp guide (seed 001: key errors are
amplified by softmax, value errors pass linearly) and llama.cpp's block formats (seed 002).
"""

from __future__ import annotations

from .. import formats
from .base import Param, PolicyError, Technique

BITS = (32, 16, 8, 4, 3, 2)
FORMAT_NAMES = tuple(formats.NAMES.values())


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
        return params

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

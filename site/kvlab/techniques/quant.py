"""Uniform group-wise quantization of K and V, with K and V bits chosen apart.

Each token's 64-value key (and value) vector of each KV head is cut into groups of
``group_size`` values along head_dim; each group is stored as llama.cpp-style blocks:
8-bit = Q8_0 (fp16 scale + int8), 4-bit = Q4_1 (fp16 scale and minimum + nibbles),
16 = IEEE half, 32 = the full fp32 cache. The byte layouts are in ``kvlab.formats`` and
the README.

Based on the K/V asymmetry observation of the quant.cpp guide (seed 001: key errors are
amplified by softmax, value errors pass linearly) and llama.cpp's block formats (seed 002).
"""

from __future__ import annotations

from .. import formats
from .base import Param, Technique

BITS = (32, 16, 8, 4)


class Quant(Technique):
    def __init__(self) -> None:
        super().__init__(
            name="quant",
            family="quantize",
            summary="Group-wise integer quantization of keys and values, bits chosen apart.",
            source="seed 001 (K/V asymmetry), seed 002 (llama.cpp block formats)",
            params=(
                Param("k_bits", "int", 32, "bits per key value", choices=BITS),
                Param("v_bits", "int", 32, "bits per value-vector value", choices=BITS),
                Param("group_size", "int", 32, "values sharing one scale", choices=(16, 32, 64)),
            ),
        )

    def configure(self, store, params: dict, ctx) -> None:
        store.configure(
            -1,
            formats.from_bits(params["k_bits"]),
            formats.from_bits(params["v_bits"]),
            params["group_size"],
        )

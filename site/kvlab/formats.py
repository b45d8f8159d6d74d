"""The KV store's formats, its rotation and error codes: the one Python mirror of ``wasm/kvstore.h``.

Pure Python (it runs under Pyodide). Byte counts here are formulas; the store's own
``kv_bytes`` must equal them (tests/wasm checks both against each other).

Byte layout of one (token, kv head) row of ``head_dim`` values, G = group size along
head_dim (see docs/store.md (section "Byte layout") for the table)::

    f32  head_dim x float32
    f16  head_dim x IEEE half (round to nearest even)
    q8   head_dim/G blocks of [fp16 d][G x int8]               2 + G bytes
    q4   head_dim/G blocks of [fp16 d][fp16 m][G/2 x u8]       4 + G/2 bytes
         (element j in the low nibble of byte j, element j + G/2 in the high nibble)
    q3   head_dim/G blocks of [fp16 d][fp16 m][G/4][G/8 x u8]  4 + 3G/8 bytes
         (bits 0-1 of code j + s*G/4 in bits 2s, 2s+1 of byte j; then bit 2 of code
         j + s*G/8 in bit s of byte j of the last G/8)
    q2   head_dim/G blocks of [fp16 d][fp16 m][G/4 x u8]       4 + G/4 bytes (as q3's first part)
    q4_0 head_dim/G blocks of [fp16 d][G/2 x u8]               2 + G/2 bytes, symmetric
         (d = extreme / -8; nibbles as q4)
    turboB head_dim/G blocks of [fp16 r][G*B/8 x u8]           2 + G*B/8 bytes, B = 2, 3, 4
         (random-sign Walsh-Hadamard rotation, Lloyd-Max codebook codes packed as q2, q3,
         q4_0; r the corrected norm)
    none nothing (0 bytes; staged as zeros): with kv_collapse, a key is its head's mean
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------
# Formats (kv_format in wasm/kvstore.h)
# ---------------------------------------------------------------------------------------

F32 = 0
F16 = 1
Q8 = 2
Q4 = 3
Q3 = 4
Q2 = 5
Q4_0 = 6
TURBO2 = 7
TURBO3 = 8
TURBO4 = 9
NONE = 10  # nothing stored (0 bytes, staged as zeros): a collapsed key's mean alone

NAMES = {F32: "f32", F16: "f16", Q8: "q8", Q4: "q4", Q3: "q3", Q2: "q2", Q4_0: "q4_0",
         TURBO2: "turbo2", TURBO3: "turbo3", TURBO4: "turbo4", NONE: "none"}
BY_NAME = {v: k for k, v in NAMES.items()}
BITS = {F32: 32, F16: 16, Q8: 8, Q4: 4, Q3: 3, Q2: 2, Q4_0: 4,  # payload bits per value (scales not included)
        TURBO2: 2, TURBO3: 3, TURBO4: 4, NONE: 0}
TURBO_SIGNS = 0xD567E2FD4BD0ADCB  # bit j set: coordinate j's sign flips before the rotation
# k_bits / v_bits name the asymmetric group-wise format of that width; q4_0 is asked by name
BY_BITS = {32: F32, 16: F16, 8: Q8, 4: Q4, 3: Q3, 2: Q2}
# llama.cpp's -ctk / -ctv type of the same layout, where it has one
LLAMA_CPP = {F32: "f32", F16: "f16", Q8: "q8_0", Q4: "q4_1", Q4_0: "q4_0"}

GROUP_SIZES = (16, 32, 64)
GROUP_DEFAULT = 32

# Per-group header bytes and payload bytes of the block formats
_HEADER = {Q8: 2, Q4: 4, Q3: 4, Q2: 4, Q4_0: 2,  # fp16 d (+ fp16 m for the asymmetric ones)
           TURBO2: 2, TURBO3: 2, TURBO4: 2}  # fp16 r


def fmt(x: int | str) -> int:
    """A format from its number, name ('q8') or bit width (8)."""
    if isinstance(x, str):
        if x not in BY_NAME:
            raise ValueError(f"unknown format {x!r}; known: {', '.join(BY_NAME)}")
        return BY_NAME[x]
    if x in NAMES:
        return x
    raise ValueError(f"unknown format {x!r}")


def from_bits(bits: int) -> int:
    """32 -> F32, 16 -> F16, 8 -> Q8, 4 -> Q4, 3 -> Q3, 2 -> Q2."""
    if bits not in BY_BITS:
        raise ValueError(f"no format stores {bits} bits; known: {sorted(BY_BITS)}")
    return BY_BITS[bits]


def valid(f: int, group: int, n: int) -> bool:
    """Whether the store can hold rows of n values in format f with this group size
    (kv_valid_format)."""
    return f in NAMES and group in GROUP_SIZES and (not is_grouped(f) or n % group == 0)


def is_grouped(f: int) -> bool:
    return f in _HEADER


def group_bytes(f: int, group: int) -> int:
    """Bytes of one block (one group of ``group`` values) of a block format."""
    if not is_grouped(f):
        raise ValueError(f"{NAMES.get(f, f)} has no groups")
    return _HEADER[f] + group * BITS[f] // 8


def row_bytes(f: int, group: int, n: int) -> int:
    """Bytes that ``n`` values take (one (token, head) row when n = head_dim)."""
    if f == F32:
        return 4 * n
    if f == F16:
        return 2 * n
    if f == NONE:
        return 0
    if n % group:
        raise ValueError(f"{n} values do not split into groups of {group}")
    return n // group * group_bytes(f, group)


#: per-channel blocks (KIVI, wasm/channel.c): formats that have them, and their bits
CHANNEL_BITS = {Q4: 4, Q3: 3, Q2: 2}
CHANNEL_DMAX = 256


def channel_row_bytes(f: int, head_dim: int) -> int:
    """Bytes of one entry's codes in a per-channel block (its block's params, 4 head_dim
    bytes per block of G entries, come on top)."""
    return head_dim * CHANNEL_BITS[f] // 8


def token_bytes(k_fmt: int, v_fmt: int, group: int, n_layers: int, n_kv_heads: int, head_dim: int) -> int:
    """Bytes of one token's K and V over all layers (uniform formats)."""
    return n_layers * n_kv_heads * (row_bytes(k_fmt, group, head_dim) + row_bytes(v_fmt, group, head_dim))


# ---------------------------------------------------------------------------------------
# The rotation (kv_rotate_row in wasm/turbo.c): quant's ``rotate`` and the turbo formats
# ---------------------------------------------------------------------------------------

ROTATE_MAX = 64  # KV_GROUP_MAX: the longest row the store rotates


def rotate_row(values: list[float]) -> list[float]:
    """y = H (s . x) / sqrt(n): the store's random-sign Walsh-Hadamard rotation of one row.

    ``s_j = -1`` where bit j of ``TURBO_SIGNS`` is set; ``H`` is the unnormalised
    Walsh-Hadamard transform done as the C does it, in butterfly stages h = 1, 2, 4, ...
    where the pair (j, j + h) becomes (a + b, a - b). H / sqrt(n) is orthonormal, so the
    row keeps its L2 norm while its energy spreads over every coordinate. Computed in
    double precision (the store works in float32: they agree to float32 rounding).
    ``n`` must be a power of two up to 64 (the store itself rotates rows of 4 to 64)."""
    n = len(values)
    if not (1 <= n <= ROTATE_MAX and n & (n - 1) == 0):
        raise ValueError(f"the rotation takes a power of two up to {ROTATE_MAX} values, got {n}")
    y = [-float(v) if (TURBO_SIGNS >> j) & 1 else float(v) for j, v in enumerate(values)]
    h = 1
    while h < n:
        for start in range(0, n, 2 * h):
            for j in range(start, start + h):
                a, b = y[j], y[j + h]
                y[j], y[j + h] = a + b, a - b
        h *= 2
    k = 1.0 / n ** 0.5
    return [v * k for v in y]


# ---------------------------------------------------------------------------------------
# Error codes (KV_OK, KV_ENOMEM, ... in wasm/kvstore.h)
# ---------------------------------------------------------------------------------------

OK = 0
ENOMEM = -1
EINVAL = -2
ESTATE = -3

ERRORS = {
    ENOMEM: "out of memory (the store's memory limit or the 2 GiB wasm maximum); nothing changed",
    EINVAL: "invalid argument",
    ESTATE: "bad state (not initialised, layer already holds tokens, or no open step)",
}


def message(code: int) -> str:
    return ERRORS.get(code, f"unknown error {code}")

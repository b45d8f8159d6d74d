"""NumPy reference of the KV store's kernels, in the store's exact byte layout.

Each function here is the specification the C kernels (scalar and SIMD, wasm/formats.c)
must match bit for bit on finite inputs with |x| <= 65504; the op order is the one pinned
in wasm/kvstore.h. NaN inputs are left out of the reference (the C versions agree with
each other on them, that is all).

Shapes: a "row" is a flat (n,) float32 array; quantized formats split it into (n / G, G)
groups, one block per group.
"""

from __future__ import annotations

import numpy as np

F32, F16, Q8, Q4, Q3, Q2, Q4_0, TURBO2, TURBO3, TURBO4, NONE = range(11)
F16_MAX = np.float32(65504.0)
MASK_EMPTY = np.float32(-1e9)

# ---------------------------------------------------------------------------------------
# fp16
# ---------------------------------------------------------------------------------------


def f16_bits(x: np.ndarray) -> np.ndarray:
    """(n,) f32 -> (n,) uint16: IEEE half, round to nearest even (numpy's astype)."""
    with np.errstate(over="ignore"):  # beyond 65504 -> inf, like the C
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def f16_value(bits: np.ndarray) -> np.ndarray:
    """(n,) uint16 -> (n,) f32, exact."""
    return np.asarray(bits, np.uint16).view(np.float16).astype(np.float32)


def f16_floor_bits(x: np.ndarray) -> np.ndarray:
    """(n,) f32 with |x| <= 65504 -> (n,) uint16: the largest half <= x."""
    x = np.asarray(x, np.float32)
    b = f16_bits(x).astype(np.int32)
    up = f16_value(b.astype(np.uint16)) > x
    neg = (b & 0x8000) != 0
    down = np.where(neg, b + 1, np.where(b == 0, 0x8001, b - 1))
    return np.where(up, down, b).astype(np.uint16)


def _inv(df: np.ndarray) -> np.ndarray:
    """1 / df in f32, 0 where df == 0."""
    out = np.zeros_like(df)
    np.divide(np.float32(1.0), df, out=out, where=df > 0)
    return out


# ---------------------------------------------------------------------------------------
# Q8: [fp16 d][G x int8] per group
# ---------------------------------------------------------------------------------------


def q8_params(g: np.ndarray):
    """(groups, G) -> d16 (groups,) uint16, df (groups,) f32, id (groups,) f32."""
    amax = np.abs(g).max(axis=1)
    d = np.minimum(amax / np.float32(127.0), F16_MAX)
    d16 = f16_bits(d)
    df = f16_value(d16)
    return d16, df, _inv(df)


def quantize_q8(x: np.ndarray, G: int) -> bytes:
    """(n,) f32 -> n/G blocks of 2 + G bytes."""
    g = np.asarray(x, np.float32).reshape(-1, G)
    d16, _, inv = q8_params(g)
    q = np.clip(np.rint(g * inv[:, None]), -127, 127).astype(np.int8)
    blocks = np.empty((g.shape[0], 2 + G), np.uint8)
    blocks[:, :2] = d16.astype("<u2").view(np.uint8).reshape(-1, 2)
    blocks[:, 2:] = q.view(np.uint8)
    return blocks.tobytes()


def dequantize_q8(data: bytes, G: int) -> np.ndarray:
    """n/G blocks -> (n,) f32: x' = q * d."""
    b = np.frombuffer(data, np.uint8).reshape(-1, 2 + G)
    df = f16_value(b[:, :2].copy().view("<u2")[:, 0])
    q = b[:, 2:].view(np.int8).astype(np.float32)
    return (q * df[:, None]).reshape(-1)


# ---------------------------------------------------------------------------------------
# Q4: [fp16 d][fp16 m][G/2 bytes: low nibble element j, high nibble element j + G/2]
# ---------------------------------------------------------------------------------------


def q4_params(g: np.ndarray, levels: int = 15):
    """(groups, G) -> d16, m16 (groups,) uint16; df, mf, id (groups,) f32 (Q3, Q2: levels 7, 3)."""
    mn = np.clip(g.min(axis=1) + np.float32(0.0), -F16_MAX, F16_MAX)  # + 0: -0 -> +0
    mx = g.max(axis=1)
    m16 = f16_floor_bits(mn)
    mf = f16_value(m16)
    d = np.clip((mx - mf) / np.float32(levels), np.float32(0.0), F16_MAX) + np.float32(0.0)
    d16 = f16_bits(d)
    df = f16_value(d16)
    return d16, m16, df, mf, _inv(df)


def quantize_q4(x: np.ndarray, G: int) -> bytes:
    """(n,) f32 -> n/G blocks of 4 + G/2 bytes."""
    g = np.asarray(x, np.float32).reshape(-1, G)
    d16, m16, _, mf, inv = q4_params(g)
    q = np.clip(np.rint((g - mf[:, None]) * inv[:, None]), 0, 15).astype(np.uint8)
    blocks = np.empty((g.shape[0], 4 + G // 2), np.uint8)
    blocks[:, 0:2] = d16.astype("<u2").view(np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = m16.astype("<u2").view(np.uint8).reshape(-1, 2)
    blocks[:, 4:] = q[:, : G // 2] | (q[:, G // 2 :] << 4)
    return blocks.tobytes()


def dequantize_q4(data: bytes, G: int) -> np.ndarray:
    """n/G blocks -> (n,) f32: x' = q * d + m (multiply, then add)."""
    b = np.frombuffer(data, np.uint8).reshape(-1, 4 + G // 2)
    hdr = b[:, :4].copy().view("<u2")
    df, mf = f16_value(hdr[:, 0]), f16_value(hdr[:, 1])
    q = np.concatenate([b[:, 4:] & 15, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (q * df[:, None] + mf[:, None]).reshape(-1)


# ---------------------------------------------------------------------------------------
# Bit planes (Q3, Q2, Q4_0): a plane of b bits holds codes j, j + P, j + 2P, ... of a group
# in bits 0, b, 2b, ... of its byte j (P = G * b / 8, the plane's length)
# ---------------------------------------------------------------------------------------


def pack_planes(q: np.ndarray, bits: int) -> np.ndarray:
    """(groups, G) uint8 fields < 2^bits -> (groups, G * bits / 8) uint8."""
    planes = 8 // bits
    parts = q.reshape(q.shape[0], planes, -1).astype(np.uint16)  # (groups, planes, P)
    out = np.zeros((q.shape[0], parts.shape[2]), np.uint16)
    for s in range(planes):
        out |= parts[:, s] << (s * bits)
    return out.astype(np.uint8)


def unpack_planes(b: np.ndarray, bits: int) -> np.ndarray:
    """(groups, P) uint8 -> (groups, P * 8 / bits) uint8 fields."""
    planes = 8 // bits
    return np.concatenate([(b >> (s * bits)) & ((1 << bits) - 1) for s in range(planes)], axis=1)


# ---------------------------------------------------------------------------------------
# Q3, Q2: [fp16 d][fp16 m][planes]: Q4's rule with 7 and 3 levels
# ---------------------------------------------------------------------------------------

LEVELS = {Q3: 7, Q2: 3}


def quantize_low(x: np.ndarray, G: int, fmt: int) -> bytes:
    """(n,) f32 -> n/G blocks: Q2 4 + G/4 bytes, Q3 4 + G/4 + G/8 (bits 0-1, then bit 2)."""
    g = np.asarray(x, np.float32).reshape(-1, G)
    d16, m16, _, mf, inv = q4_params(g, LEVELS[fmt])
    q = np.clip(np.rint((g - mf[:, None]) * inv[:, None]), 0, LEVELS[fmt]).astype(np.uint8)
    hdr = np.stack([d16, m16], axis=1).astype("<u2").view(np.uint8)
    parts = [hdr, pack_planes(q & 3, 2)] + ([pack_planes(q >> 2, 1)] if fmt == Q3 else [])
    return np.concatenate(parts, axis=1).tobytes()


def dequantize_low(data: bytes, G: int, fmt: int) -> np.ndarray:
    """n/G blocks -> (n,) f32: x' = q * d + m."""
    b = np.frombuffer(data, np.uint8).reshape(-1, 4 + G // 4 + (G // 8 if fmt == Q3 else 0))
    hdr = b[:, :4].copy().view("<u2")
    df, mf = f16_value(hdr[:, 0]), f16_value(hdr[:, 1])
    q = unpack_planes(b[:, 4 : 4 + G // 4], 2)
    if fmt == Q3:
        q = q | (unpack_planes(b[:, 4 + G // 4 :], 1) << 2)
    return (q.astype(np.float32) * df[:, None] + mf[:, None]).reshape(-1)


# ---------------------------------------------------------------------------------------
# Q4_0: [fp16 d][G/2 nibble bytes], symmetric: d = fp16(e / -8), e the group's extreme
# ---------------------------------------------------------------------------------------


def q40_params(g: np.ndarray):
    """(groups, G) -> d16 (groups,) uint16, df (groups,) f32, id (groups,) f32."""
    mn, mx = g.min(axis=1), g.max(axis=1)
    e = np.where(-mn > mx, mn, mx) + np.float32(0.0)
    d = np.clip(e / np.float32(-8.0), -F16_MAX, F16_MAX)
    d16 = f16_bits(d)
    df = f16_value(d16)
    inv = np.zeros_like(df)
    np.divide(np.float32(1.0), df, out=inv, where=df != 0)
    return d16, df, inv


def quantize_q4_0(x: np.ndarray, G: int) -> bytes:
    """(n,) f32 -> n/G blocks of 2 + G/2 bytes."""
    g = np.asarray(x, np.float32).reshape(-1, G)
    d16, _, inv = q40_params(g)
    q = (np.clip(np.rint(g * inv[:, None]), -8, 7) + 8).astype(np.uint8)
    hdr = d16.astype("<u2").view(np.uint8).reshape(-1, 2)
    return np.concatenate([hdr, pack_planes(q, 4)], axis=1).tobytes()


def dequantize_q4_0(data: bytes, G: int) -> np.ndarray:
    """n/G blocks -> (n,) f32: x' = (q - 8) * d."""
    b = np.frombuffer(data, np.uint8).reshape(-1, 2 + G // 2)
    df = f16_value(b[:, :2].copy().view("<u2")[:, 0])
    q = unpack_planes(b[:, 2:], 4).astype(np.int32) - 8
    return (q.astype(np.float32) * df[:, None]).reshape(-1)


# ---------------------------------------------------------------------------------------
# TURBO2/3/4: [fp16 r][codes packed as q2 / q3 / q4_0]: random-sign Walsh-Hadamard
# rotation, Lloyd-Max codebook for N(0, 1), corrected norm (wasm/kvstore.h, wasm/turbo.c)
# ---------------------------------------------------------------------------------------

TURBO_BITS = {TURBO2: 2, TURBO3: 3, TURBO4: 4}
TURBO_SIGNS = 0xD567E2FD4BD0ADCB
# the C's f32 literals (ascending); lloyd_max() recomputes them
CODEBOOKS = {
    2: np.float32([-1.510418, -0.452780, 0.452780, 1.510418]),
    3: np.float32([-2.151946, -1.343909, -0.756005, -0.245094, 0.245094, 0.756005, 1.343909, 2.151946]),
    4: np.float32([-2.732590, -2.069017, -1.618046, -1.256231, -0.942340, -0.656759, -0.388048, -0.128395,
                   0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590]),
}


def lloyd_max(levels: int, iters: int = 2000) -> np.ndarray:
    """Lloyd-Max centroids for N(0, 1) by Lloyd's iteration (float64): each boundary the
    midpoint of its centroids, each centroid its cell's conditional mean."""
    import math

    def pdf(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi) if math.isfinite(x) else 0.0

    def cdf(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2))) if math.isfinite(x) else (1.0 if x > 0 else 0.0)

    c = [-2 + 4 * (i + 0.5) / levels for i in range(levels)]
    for _ in range(iters):
        t = [-math.inf] + [(c[i] + c[i + 1]) / 2 for i in range(levels - 1)] + [math.inf]
        c = [(pdf(t[i]) - pdf(t[i + 1])) / (cdf(t[i + 1]) - cdf(t[i])) for i in range(levels)]
    return np.array(c)


def turbo_signs(G: int) -> np.ndarray:
    """(G,) uint32 sign masks: bit 31 set where KV_TURBO_SIGNS flips the coordinate."""
    return np.array([((TURBO_SIGNS >> j) & 1) << 31 for j in range(G)], np.uint32)


def fwht(y: np.ndarray) -> np.ndarray:
    """(groups, G) f32 -> the unnormalised Walsh-Hadamard transform of each row, stage by
    stage (h = 1, 2, 4, ...): the pair (j, j + h) becomes (a + b, a - b), in f32."""
    y = np.array(y, np.float32)
    groups, G = y.shape
    h = 1
    while h < G:
        v = y.reshape(groups, G // (2 * h), 2, h)
        a, b = v[:, :, 0, :].copy(), v[:, :, 1, :].copy()
        v[:, :, 0, :], v[:, :, 1, :] = a + b, a - b
        y = v.reshape(groups, G)
        h *= 2
    return y


def sumsq(v: np.ndarray) -> np.ndarray:
    """(groups, G) f32 -> (groups,) f32 sums of squares in the pinned order: four strided
    lanes accumulated in element order, then (l0 + l1) + (l2 + l3)."""
    sq = v * v
    acc = np.zeros((v.shape[0], 4), np.float32)
    for i in range(0, v.shape[1], 4):
        acc += sq[:, i : i + 4]
    return (acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])


def flip(v: np.ndarray) -> np.ndarray:
    """(groups, G) f32 with the fixed signs applied (an exact sign-bit flip)."""
    return (v.view(np.uint32) ^ turbo_signs(v.shape[1])).view(np.float32)


def turbo_codes(x: np.ndarray, G: int, bits: int):
    """(n,) f32 -> codes (groups, G) uint8 and r (groups,) f32 (before fp16)."""
    g = np.asarray(x, np.float32).reshape(-1, G)
    c = CODEBOOKS[bits]
    with np.errstate(over="ignore", invalid="ignore"):
        y = fwht(flip(g))
        n2 = sumsq(g)
        n2 = np.where(n2 <= np.float32(3.4028234e38), n2, np.float32(0.0))  # not finite: a zero group
        inv = np.zeros_like(n2)
        np.divide(np.float32(1.0), np.sqrt(n2), out=inv, where=n2 > 0)
        z = y * inv[:, None]
    bounds = (c[:-1] + c[1:]) * np.float32(0.5)  # f32 midpoints
    q = (bounds[None, None, :] < z[:, :, None]).sum(axis=2).astype(np.uint8)
    r = np.minimum(np.sqrt(n2 / (sumsq(c[q]) * np.float32(G))), F16_MAX)  # saturates, as d does
    return q, r


def quantize_turbo(x: np.ndarray, G: int, fmt: int) -> bytes:
    """(n,) f32 -> n/G blocks of 2 + G * bits / 8 bytes."""
    bits = TURBO_BITS[fmt]
    q, r = turbo_codes(x, G, bits)
    hdr = f16_bits(r).astype("<u2").view(np.uint8).reshape(-1, 2)
    if bits == 4:
        parts = [hdr, pack_planes(q, 4)]
    else:
        parts = [hdr, pack_planes(q & 3, 2)] + ([pack_planes(q >> 2, 1)] if bits == 3 else [])
    return np.concatenate(parts, axis=1).tobytes()


def dequantize_turbo(data: bytes, G: int, fmt: int) -> np.ndarray:
    """n/G blocks -> (n,) f32: x' = s . (H c_q) * r."""
    bits = TURBO_BITS[fmt]
    b = np.frombuffer(data, np.uint8).reshape(-1, 2 + G * bits // 8)
    r = f16_value(b[:, :2].copy().view("<u2")[:, 0])
    if bits == 4:
        q = unpack_planes(b[:, 2:], 4)
    else:
        q = unpack_planes(b[:, 2 : 2 + G // 4], 2)
        if bits == 3:
            q = q | (unpack_planes(b[:, 2 + G // 4 :], 1) << 2)
    with np.errstate(over="ignore", invalid="ignore"):
        y = fwht(CODEBOOKS[bits][q]) * r[:, None]
    return flip(y).reshape(-1)


def rotate(x: np.ndarray) -> np.ndarray:
    """(..., n) f32 -> H (s . x) / sqrt(n) per row (quant's ``rotate``), n a power of two."""
    x = np.asarray(x, np.float32)
    rows = x.reshape(-1, x.shape[-1])
    k = np.float32(1.0) / np.sqrt(np.float32(rows.shape[1]))
    return (fwht(flip(rows)) * k).reshape(x.shape)


def unrotate(y: np.ndarray) -> np.ndarray:
    """The inverse: s . (H y) / sqrt(n)."""
    y = np.asarray(y, np.float32)
    rows = y.reshape(-1, y.shape[-1])
    k = np.float32(1.0) / np.sqrt(np.float32(rows.shape[1]))
    return flip(fwht(rows) * k).reshape(y.shape)


# ---------------------------------------------------------------------------------------
# Any format
# ---------------------------------------------------------------------------------------


def row_bytes(fmt: int, G: int, n: int) -> int:
    per_group = {Q8: 2 + G, Q4: 4 + G // 2, Q3: 4 + G // 4 + G // 8, Q2: 4 + G // 4, Q4_0: 2 + G // 2,
                 TURBO2: 2 + G // 4, TURBO3: 2 + 3 * G // 8, TURBO4: 2 + G // 2}
    return {F32: 4 * n, F16: 2 * n, NONE: 0}[fmt] if fmt in (F32, F16, NONE) else n // G * per_group[fmt]


def quantize(fmt: int, G: int, x: np.ndarray) -> bytes:
    """(n,) f32 -> the format's bytes."""
    x = np.asarray(x, np.float32).reshape(-1)
    if fmt == NONE:
        return b""
    if fmt == F32:
        return x.tobytes()
    if fmt == F16:
        return f16_bits(x).astype("<u2").tobytes()
    if fmt in LEVELS:
        return quantize_low(x, G, fmt)
    if fmt in TURBO_BITS:
        return quantize_turbo(x, G, fmt)
    return {Q8: quantize_q8, Q4: quantize_q4, Q4_0: quantize_q4_0}[fmt](x, G)


def dequantize(fmt: int, G: int, data: bytes, n: int | None = None) -> np.ndarray:
    """The format's bytes -> (n,) f32 (n is needed only for NONE, which holds no bytes)."""
    if fmt == NONE:
        return np.zeros(n, np.float32)
    if fmt == F32:
        return np.frombuffer(data, np.float32).copy()
    if fmt == F16:
        return f16_value(np.frombuffer(data, "<u2"))
    if fmt in LEVELS:
        return dequantize_low(data, G, fmt)
    if fmt in TURBO_BITS:
        return dequantize_turbo(data, G, fmt)
    return {Q8: dequantize_q8, Q4: dequantize_q4, Q4_0: dequantize_q4_0}[fmt](data, G)


def roundtrip(fmt: int, G: int, x: np.ndarray, rotated: bool = False) -> np.ndarray:
    """(..., n) f32 -> what the cache holds for it, same shape (rows quantized along n;
    rotated: through ``rotate`` first and ``unrotate`` after, as kv_rotate makes it)."""
    x = np.asarray(x, np.float32)
    if rotated:
        return unrotate(roundtrip(fmt, G, rotate(x)))
    rows = x.reshape(-1, x.shape[-1])
    out = [dequantize(fmt, G, quantize(fmt, G, r), r.size) for r in rows]
    return (np.stack(out) if out else rows.copy()).reshape(x.shape)


# ---------------------------------------------------------------------------------------
# Per-channel blocks (KIVI, wasm/channel.c): G entries of one head, each channel's G
# values with their own fp16 d and m (Q4's rule); params (D, 2) fp16, then per entry its D
# codes packed as Q4 (nibbles) / Q3 / Q2 (planes)
# ---------------------------------------------------------------------------------------

CHANNEL_BITS = {Q4: 4, Q3: 3, Q2: 2}


def channel_row_bytes(fmt: int, D: int) -> int:
    return D * CHANNEL_BITS[fmt] // 8


def quantize_channel(fmt: int, x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(G, D) f32 -> (params: 4 D bytes, codes: (G, D b / 8) uint8)."""
    x = np.asarray(x, np.float32)
    bits = CHANNEL_BITS[fmt]
    levels = (1 << bits) - 1
    d16, m16, _, mf, inv = q4_params(np.ascontiguousarray(x.T), levels)  # one "group" per channel
    q = np.clip(np.rint((x - mf[None, :]) * inv[None, :]), 0, levels).astype(np.uint8)  # (G, D)
    if bits == 4:
        codes = pack_planes(q, 4)
    else:
        codes = np.concatenate([pack_planes(q & 3, 2)] + ([pack_planes(q >> 2, 1)] if bits == 3 else []), axis=1)
    params = np.stack([d16, m16], axis=1).astype("<u2").tobytes()
    return params, codes


def dequantize_channel(fmt: int, params: bytes, codes: np.ndarray) -> np.ndarray:
    """params (4 D bytes) and (n, D b / 8) code rows -> (n, D) f32: code * d + m."""
    bits = CHANNEL_BITS[fmt]
    pr = np.frombuffer(params, "<u2").reshape(-1, 2)
    df, mf = f16_value(pr[:, 0]), f16_value(pr[:, 1])
    D = len(df)
    codes = np.asarray(codes, np.uint8).reshape(-1, D * bits // 8)
    if bits == 4:
        q = unpack_planes(codes, 4)
    else:
        q = unpack_planes(codes[:, : D // 4], 2)
        if bits == 3:
            q = q | (unpack_planes(codes[:, D // 4 :], 1) << 2)
    return q.astype(np.float32) * df[None, :] + mf[None, :]


# ---------------------------------------------------------------------------------------
# Error budgets (per element, for finite |x| <= 65504)
# ---------------------------------------------------------------------------------------


def error_budget(fmt: int, G: int, x: np.ndarray) -> np.ndarray:
    """(n,) f32 -> (n,) the largest |x - x'| the format may make, from its definition.

    f32: 0. f16: half an fp16 ulp (2^-11 relative, 2^-25 absolute in the subnormals).
    q8: d/2 where d = amax/127 rounded to fp16, plus what clamping to +-127 loses when d
        is tiny enough to be an fp16 subnormal, plus f32 rounding (2^-20 amax).
    q4, q3, q2: d/2 plus what the fp16 rounding of d loses at the top of the range
        (L |d - d16|, L = 15, 7, 3 levels), plus f32 rounding; d = (max - m) / L with m = fp16
        floor of the minimum.
    q4_0: one step |d| (values of the extreme's other sign clamp at +7 of 8 steps) plus
        8 |d - d16| (the extreme itself when d rounds toward zero), plus f32 rounding.
    turbo: no per-element bound short of the group's norm (a codebook error is spread over
        the whole group by the inverse rotation): |x - x'| <= |x| + ||x'||, with ||x'|| =
        ||x|| up to fp16 rounding of r. The tests hold its mean error to the codebook's
        distortion instead.
    """
    x = np.asarray(x, np.float32).reshape(-1)
    if fmt == F32:
        return np.zeros_like(x)
    if fmt == F16:
        return np.maximum(np.abs(x) * np.float32(2.0**-11), np.float32(2.0**-25))
    g = x.reshape(-1, G).astype(np.float64)
    amax = np.abs(g).max(axis=1)
    if fmt in TURBO_BITS:
        norm = np.sqrt((g * g).sum(axis=1))
        return (np.abs(g) + (norm * (1 + 2.0**-9) + 2.0**-20)[:, None]).reshape(-1)
    if fmt == Q8:
        _, df, _ = q8_params(g.astype(np.float32))
        df = df.astype(np.float64)
        clamp = np.maximum(0.0, amax - 127 * df)
        b = 0.5 * df + clamp + 2.0**-20 * amax
    elif fmt == Q4_0:
        _, df, _ = q40_params(g.astype(np.float32))
        df = np.abs(df.astype(np.float64))
        b = df + 8 * np.abs(amax / 8 - df) + 2.0**-20 * amax
    else:
        levels = LEVELS.get(fmt, 15)
        _, _, df, mf, _ = q4_params(g.astype(np.float32), levels)
        df, mf = df.astype(np.float64), mf.astype(np.float64)
        d_exact = np.minimum((g.max(axis=1) - mf) / levels, 65504.0)
        b = 0.5 * df + levels * np.abs(d_exact - df) + 2.0**-20 * amax
    return np.repeat(b + 2.0**-24, G).astype(np.float64)

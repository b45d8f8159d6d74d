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

F32, F16, Q8, Q4 = 0, 1, 2, 3
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


def q4_params(g: np.ndarray):
    """(groups, G) -> d16, m16 (groups,) uint16; df, mf, id (groups,) f32."""
    mn = np.clip(g.min(axis=1) + np.float32(0.0), -F16_MAX, F16_MAX)  # + 0: -0 -> +0
    mx = g.max(axis=1)
    m16 = f16_floor_bits(mn)
    mf = f16_value(m16)
    d = np.clip((mx - mf) / np.float32(15.0), np.float32(0.0), F16_MAX) + np.float32(0.0)
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
# Any format
# ---------------------------------------------------------------------------------------


def row_bytes(fmt: int, G: int, n: int) -> int:
    return {F32: 4 * n, F16: 2 * n, Q8: n // G * (2 + G), Q4: n // G * (4 + G // 2)}[fmt]


def quantize(fmt: int, G: int, x: np.ndarray) -> bytes:
    """(n,) f32 -> the format's bytes."""
    x = np.asarray(x, np.float32).reshape(-1)
    if fmt == F32:
        return x.tobytes()
    if fmt == F16:
        return f16_bits(x).astype("<u2").tobytes()
    return {Q8: quantize_q8, Q4: quantize_q4}[fmt](x, G)


def dequantize(fmt: int, G: int, data: bytes) -> np.ndarray:
    """The format's bytes -> (n,) f32."""
    if fmt == F32:
        return np.frombuffer(data, np.float32).copy()
    if fmt == F16:
        return f16_value(np.frombuffer(data, "<u2"))
    return {Q8: dequantize_q8, Q4: dequantize_q4}[fmt](data, G)


def roundtrip(fmt: int, G: int, x: np.ndarray) -> np.ndarray:
    """(..., n) f32 -> what the cache holds for it, same shape (rows quantized along n)."""
    x = np.asarray(x, np.float32)
    rows = x.reshape(-1, x.shape[-1])
    out = [dequantize(fmt, G, quantize(fmt, G, r)) for r in rows]
    return (np.stack(out) if out else rows.copy()).reshape(x.shape)


# ---------------------------------------------------------------------------------------
# Error budgets (per element, for finite |x| <= 65504)
# ---------------------------------------------------------------------------------------


def error_budget(fmt: int, G: int, x: np.ndarray) -> np.ndarray:
    """(n,) f32 -> (n,) the largest |x - x'| the format may make, from its definition.

    f32: 0. f16: half an fp16 ulp (2^-11 relative, 2^-25 absolute in the subnormals).
    q8: d/2 where d = amax/127 rounded to fp16, plus what clamping to +-127 loses when d
        is tiny enough to be an fp16 subnormal, plus f32 rounding (2^-20 amax).
    q4: d/2 plus what the fp16 rounding of d loses at the top of the range (15 |d - d16|),
        plus f32 rounding; d = (max - m) / 15 with m = fp16 floor of the minimum.
    """
    x = np.asarray(x, np.float32).reshape(-1)
    if fmt == F32:
        return np.zeros_like(x)
    if fmt == F16:
        return np.maximum(np.abs(x) * np.float32(2.0**-11), np.float32(2.0**-25))
    g = x.reshape(-1, G).astype(np.float64)
    amax = np.abs(g).max(axis=1)
    if fmt == Q8:
        _, df, _ = q8_params(g.astype(np.float32))
        df = df.astype(np.float64)
        clamp = np.maximum(0.0, amax - 127 * df)
        b = 0.5 * df + clamp + 2.0**-20 * amax
    else:
        _, _, df, mf, _ = q4_params(g.astype(np.float32))
        df, mf = df.astype(np.float64), mf.astype(np.float64)
        d_exact = np.minimum((g.max(axis=1) - mf) / 15, 65504.0)
        b = 0.5 * df + 15 * np.abs(d_exact - df) + 2.0**-20 * amax
    return np.repeat(b + 2.0**-24, G).astype(np.float64)

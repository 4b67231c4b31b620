"""Readable NumPy reference of the quantizers: float32 rows -> ggml blocks.

Same rules as the C reference (rwkvx/_kernels/quantize/quantize_ref.c) and as
ggml's quantize_row_*_ref, so all three agree byte for byte:

* Q4_0 / Q5_0 (symmetric, q in [0, 16) / [0, 32)): take the signed value
  `max` of the first element of largest |x| in the block; d = max / -8 (-16);
  q = min(15 (31), trunc(x * (1/d) + 8.5 (16.5))); x ~ d * (q - 8 (16)).
* Q4_1 / Q5_1 (affine): d = (max - min) / 15 (31), m = min;
  q = min(15 (31), trunc((x - min) * (1/d) + 0.5)); x ~ d * q + m.
* Q8_0: d = max|x| / 127; q = roundf(x * (1/d)) (ties away from zero).
* 1/d is taken as 0 when d == 0; d and m are stored as fp16 (nearest even).

Every step is one float32 operation, rounded as C rounds it. The float -> int
conversion of a non-finite value (only reachable when 1/d overflows, for
blocks of magnitude below ~1e-37) gives 0, as it does on x86.
"""
from __future__ import annotations

import numpy as np

from ..errors import ArgumentError
from .ggml_types import BLOCK_DTYPES, QK, ggml_type

F32 = np.float32


def quantize_rows(x: np.ndarray, type_name: str, fused_multiply_add: bool = False) -> np.ndarray:
    """Pack rows of float32 weights into type_name's ggml layout.

    x: float32 [rows, n] (n a multiple of 32 for the block types), finite.
    type_name: FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0.
    fused_multiply_add: emulate a ggml build that fuses `x * (1/d) + offset`
        into one FMA (compilers do this on ARM, or on x86 with -mfma and FP
        contraction on). Off = ggml's portable x86 result. Only for explaining
        files produced that way; the product is formed exactly in float64.
    Returns uint8 [rows * row_bytes], the rows' blocks back to back.
    """
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 2:
        raise ArgumentError(f"x must be a float32 [rows, n] array, got {x.dtype} {x.shape}")
    wtype = ggml_type(type_name)
    if x.shape[1] % wtype.block_size:
        raise ArgumentError(f"rows of {type_name} need a multiple of {wtype.block_size} elements, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ArgumentError("cannot quantize non-finite values")
    # Overflow is part of the formats: d, m or an FP16 weight beyond 65504 becomes inf,
    # and max - min of a block spanning more than float32's range is inf.
    with np.errstate(over="ignore"):
        return _pack(x, type_name, fused_multiply_add)


def _pack(x, type_name, fused_multiply_add):
    if type_name == "FP32":
        return np.ascontiguousarray(x, dtype="<f4").reshape(-1).view(np.uint8).copy()
    if type_name == "FP16":
        return x.astype("<f2").reshape(-1).view(np.uint8)

    blocks = x.reshape(-1, QK)
    out = np.zeros(len(blocks), dtype=BLOCK_DTYPES[type_name])
    if type_name in ("Q4_0", "Q5_0"):
        half_range = 8 if type_name == "Q4_0" else 16
        d, q = _symmetric_codes(blocks, half_range, fused_multiply_add)
    elif type_name in ("Q4_1", "Q5_1"):
        q_max = 15 if type_name == "Q4_1" else 31
        d, m, q = _affine_codes(blocks, q_max, fused_multiply_add)
        out["m"] = m.astype("<f2")
    else:  # Q8_0
        d, q = _q8_0_codes(blocks)
    out["d"] = d.astype("<f2")
    if type_name == "Q8_0":
        out["qs"] = q.astype(np.int8)
    else:
        out["qs"] = _pack_nibbles(q)
    if type_name in ("Q5_0", "Q5_1"):
        out["qh"] = _pack_fifth_bits(q)
    return out.view(np.uint8).reshape(-1)


def _symmetric_codes(blocks, half_range, fused):
    """d [blocks] float32 and codes q [blocks, 32] in [0, 2*half_range)."""
    first_largest = np.argmax(np.abs(blocks), axis=1)  # argmax returns the first of equal maxima
    signed_max = blocks[np.arange(len(blocks)), first_largest]
    # ggml's search starts from max = +0 and keeps it for an all-zero block, even if x[0] is -0.
    signed_max = np.where(signed_max == 0, F32(0), signed_max)
    d = signed_max / F32(-half_range)
    scaled = _scale_and_offset(blocks, _reciprocal_or_zero(d), F32(half_range + 0.5), fused)
    q = np.minimum(2 * half_range - 1, _trunc_or_zero(scaled))
    return d, q


def _affine_codes(blocks, q_max, fused):
    """d, m [blocks] float32 and codes q [blocks, 32] in [0, q_max]."""
    low = _first_equal_to(blocks, blocks.min(axis=1))  # first one: the sign of a zero min is kept
    high = _first_equal_to(blocks, blocks.max(axis=1))
    d = (high - low) / F32(q_max)
    scaled = _scale_and_offset(blocks - low[:, None], _reciprocal_or_zero(d), F32(0.5), fused)
    q = np.minimum(q_max, _trunc_or_zero(scaled))
    return d, low, q


def _q8_0_codes(blocks):
    d = np.abs(blocks).max(axis=1) / F32(127)
    v = (blocks * _reciprocal_or_zero(d)[:, None]).astype(np.float64)
    # roundf: ties away from zero. Exact in float64: v has 24 significant bits and |v| < 2^8.
    rounded = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return d, _trunc_or_zero(rounded)


def _first_equal_to(blocks, values):
    """For each block, its first element equal to values[block] (so -0 and +0 keep their sign)."""
    index = np.argmax(blocks == values[:, None], axis=1)
    return blocks[np.arange(len(blocks)), index]


def _reciprocal_or_zero(d):
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(np.float32)


def _scale_and_offset(v, inv_d, offset, fused):
    """v * inv_d + offset in float32, rounded twice (separate ops) or once (fused)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if fused:
            exact = v.astype(np.float64) * inv_d.astype(np.float64)[:, None] + np.float64(offset)
            return exact.astype(np.float32)
        return (v * inv_d[:, None]).astype(np.float32) + offset


def _trunc_or_zero(v):
    """trunc(v) as int64; 0 where v is not finite or outside the int32 range (x86 conversion)."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        in_range = np.abs(v) < 2.0**31
    return np.where(in_range, np.trunc(np.where(in_range, v, 0)), 0).astype(np.int64)


def _pack_nibbles(q):
    """Element j < 16 in the low nibble of byte j, element j + 16 in its high nibble."""
    half = QK // 2
    return ((q[:, :half] & 0x0F) | ((q[:, half:] & 0x0F) << 4)).astype(np.uint8)


def _pack_fifth_bits(q):
    """Bit 4 of element j becomes bit j of a uint32."""
    bits = ((q >> 4) & 1).astype(np.uint32)
    return (bits << np.arange(QK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)

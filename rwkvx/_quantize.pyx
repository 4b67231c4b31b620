# cython: language_level=3
"""Reference quantizers (C, ggml-exact rounding) for float32 rows.

quantize_rows(src, type_name) packs each row of a float32 [rows, n] array into
the ggml layout of type_name (FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and
returns the bytes as a uint8 array [rows * row_bytes].
"""
import numpy as np

from libc.stdint cimport uint8_t

cdef extern from "blocks.h":
    size_t rwkvx_row_bytes(int type, size_t n)
    int rwkvx_type_block_size(int type)

cdef extern from "quantize/quantize.h":
    size_t rwkvx_quantize_rows_ref(int type, const float *src, size_t n_rows, size_t n_per_row,
                                   uint8_t *dst) nogil

# Type ids as in blocks.h / rwkv.cpp files.
_TYPE_IDS = {"FP32": 0, "FP16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 7, "Q5_1": 8, "Q8_0": 9}
SUPPORTED_TYPES = tuple(_TYPE_IDS)


def row_bytes(str type_name, size_t n):
    """Bytes of one packed row of n weights of type_name."""
    return rwkvx_row_bytes(_type_id(type_name), n)


def _type_id(str type_name):
    try:
        return _TYPE_IDS[type_name]
    except KeyError:
        raise ValueError(
            f"cannot quantize to {type_name!r}; supported: {', '.join(SUPPORTED_TYPES)}"
        ) from None


def quantize_rows(src, str type_name):
    """Pack float32 rows into type_name's layout.

    src: float32 array [rows, n] (C-contiguous or not; it is copied if needed),
    n a multiple of 32 for the block types, every value finite.
    Returns a uint8 array [rows * row_bytes(type_name, n)], rows back to back.
    Raises ValueError on a wrong dtype, rank, row length or non-finite value.
    """
    cdef int type_id = _type_id(type_name)
    if not isinstance(src, np.ndarray):
        raise ValueError(f"src must be a numpy float32 array, not {type(src).__name__}")
    if src.dtype != np.float32:
        raise ValueError(f"src must have dtype float32, not {src.dtype}")
    if src.ndim != 2:
        raise ValueError(f"src must be 2-D [rows, n], got shape {src.shape}")
    cdef size_t n_rows = src.shape[0], n_per_row = src.shape[1]
    cdef int block = rwkvx_type_block_size(type_id)
    if n_per_row % block != 0:
        raise ValueError(
            f"rows of {type_name} must have a multiple of {block} elements, got {n_per_row} (shape {src.shape})"
        )
    if not np.isfinite(src).all():
        bad = np.argwhere(~np.isfinite(src))[0]
        raise ValueError(
            f"cannot quantize non-finite value {src[bad[0], bad[1]]} at row {bad[0]}, column {bad[1]}"
        )
    cdef const float[:, ::1] x = np.ascontiguousarray(src)
    out = np.empty(n_rows * rwkvx_row_bytes(type_id, n_per_row), dtype=np.uint8)
    cdef uint8_t[::1] dst = out
    cdef size_t written = 0
    if n_rows == 0 or n_per_row == 0:
        return out
    with nogil:
        written = rwkvx_quantize_rows_ref(type_id, &x[0, 0], n_rows, n_per_row, &dst[0])
    if written != <size_t>out.shape[0]:
        raise ValueError(f"quantizer wrote {written} bytes, expected {out.shape[0]} ({type_name})")
    return out

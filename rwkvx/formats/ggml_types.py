"""ggml weight types: ids, block layouts as NumPy dtypes, and NumPy dequantization.

The C header rwkvx/_kernels/blocks.h defines the same layouts; tests check that
the two agree field by field. Dequantization here is the readable reference
the C kernels are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError

QK = 32  # weights per quantization block

BLOCK_DTYPES = {
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    "Q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
}


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int  # elements per block (1 for FP32/FP16)
    type_size: int  # bytes per block

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    def nbytes(self, n_elements: int) -> int:
        return n_elements // self.block_size * self.type_size


TYPES_BY_NAME = {
    "FP32": GGMLType(0, "FP32", 1, 4),
    "FP16": GGMLType(1, "FP16", 1, 2),
    "Q4_0": GGMLType(2, "Q4_0", QK, 18),
    "Q4_1": GGMLType(3, "Q4_1", QK, 20),
    "Q5_0": GGMLType(7, "Q5_0", QK, 22),
    "Q5_1": GGMLType(8, "Q5_1", QK, 24),
    "Q8_0": GGMLType(9, "Q8_0", QK, 34),
}
TYPES_BY_ID = {t.id: t for t in TYPES_BY_NAME.values()}
QUANTIZED_TYPES = tuple(name for name, t in TYPES_BY_NAME.items() if t.quantized)

# Ids rwkv.cpp once used and no longer loads, and ids it knows but never wrote.
REMOVED_TYPE_IDS = {4: "Q4_1_O", 5: "Q4_2", 6: "Q4_3"}
UNSUPPORTED_TYPE_IDS = {10: "Q8_1", 11: "Q2_K", 12: "Q3_K", 13: "Q4_K", 14: "Q5_K", 15: "Q6_K", 16: "Q8_K"}


def ggml_type(name_or_id: str | int) -> GGMLType:
    """Look up a type by name ("Q5_1") or file id (8)."""
    table = TYPES_BY_ID if isinstance(name_or_id, (int, np.integer)) else TYPES_BY_NAME
    try:
        return table[name_or_id]
    except KeyError:
        raise ArgumentError(
            f"unknown weight type {name_or_id!r}; known: {', '.join(TYPES_BY_NAME)}"
        ) from None


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """Bit j of each block's qh, as an array [..., 32] of 0/1."""
    return ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Element j < 16 is the low nibble of byte j, element j + 16 its high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32)


def dequantize(raw: np.ndarray, type_name: str, n_elements: int) -> np.ndarray:
    """Decode n_elements weights of the given type from raw bytes into float32.

    Each weight is computed as float32(d) * q (+ float32(m)) in float32, the same
    arithmetic the C kernels use, so a reference built on this sees bit-identical
    weights.
    """
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if type_name == "FP32":
        return raw[: n_elements * 4].view("<f4").astype(np.float32)
    if type_name == "FP16":
        return raw[: n_elements * 2].view("<f2").astype(np.float32)
    blocks = raw.view(BLOCK_DTYPES[type_name])[: n_elements // QK]
    d = blocks["d"].astype(np.float32)[:, None]
    q = _nibbles(blocks["qs"]) if type_name.startswith("Q4") or type_name.startswith("Q5") else None
    if type_name == "Q4_0":
        x = d * (q - 8).astype(np.float32)
    elif type_name == "Q4_1":
        x = d * q.astype(np.float32) + blocks["m"].astype(np.float32)[:, None]
    elif type_name == "Q5_0":
        q = q | (_fifth_bits(blocks["qh"]) << 4)
        x = d * (q - 16).astype(np.float32)
    elif type_name == "Q5_1":
        q = q | (_fifth_bits(blocks["qh"]) << 4)
        x = d * q.astype(np.float32) + blocks["m"].astype(np.float32)[:, None]
    elif type_name == "Q8_0":
        x = d * blocks["qs"].astype(np.float32)
    else:
        raise ArgumentError(f"unknown weight type {type_name!r}")
    return x.reshape(-1).astype(np.float32)

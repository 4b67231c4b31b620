"""Quantize an rwkv.cpp FP32/FP16 model file, the way rwkv.cpp's rwkv_quantize_model_file does.

Only 2-D FP32/FP16 tensors are quantized, except emb.weight, head.weight and the
v7 LoRA-like matrices (names containing att.v1, att.v2, att.g1, att.g2, att.a1,
att.a2, att.w1, att.w2, att.r_k): those and everything else (1-D and 3-D
tensors) are copied byte for byte, keeping their type. Rows are the innermost
dimension (ne0), so a tensor of ggml shape (ne0, ne1) is ne1 rows of ne0. The
output is file version 101 whose header type is the target type; with the same
FP32 input it is byte-identical to rwkv.cpp's output (ggml's reference rounding).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..errors import ArgumentError, ModelFormatError
from .ggml_types import QUANTIZED_TYPES
from .rwkvcpp import VERSION_1, RwkvCppFile, TensorInfo
from .writer import ProgressCallback, TensorRecord, write_rwkvcpp

try:  # the C reference quantizer; the NumPy one gives the same bytes, only slower
    from .._quantize import quantize_rows

    QUANTIZER = "C"
except ImportError:  # extension not built (pure-Python checkout)
    from .quantize_numpy import quantize_rows

    QUANTIZER = "NumPy"

# Kept in full precision: they are small and quantizing them costs much accuracy.
KEEP_NAMES = ("emb.weight", "head.weight")
KEEP_SUBSTRINGS = ("att.v1", "att.v2", "att.g1", "att.g2", "att.a1", "att.a2", "att.w1", "att.w2", "att.r_k")


def tensor_target_type(info: TensorInfo, type_name: str, head: str | None = None) -> str | None:
    """The type a tensor is quantized to, or None if it is copied unchanged."""
    if info.type.name not in ("FP32", "FP16") or len(info.ne) != 2:
        return None
    if info.name == "head.weight" and head is not None:
        return head
    if info.name in KEEP_NAMES or any(part in info.name for part in KEEP_SUBSTRINGS):
        return None
    return type_name


def quantize_file(
    src_bin: str | os.PathLike,
    dst_bin: str | os.PathLike,
    type_name: str,
    progress: ProgressCallback | None = None,
    head: str | None = None,
) -> None:
    """Write a quantized copy of an FP32/FP16 rwkv.cpp model.

    type_name: Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0.
    head: also quantize head.weight to this type (e.g. "Q8_0"); None keeps it
        as it is, as rwkv.cpp does.
    progress: called as progress(done, total, name) after each tensor.
    The destination is written atomically and must not be the source file.
    Raises ValueError for an unknown type name, ModelFormatError for a source
    that is not an FP32/FP16 model or holds non-finite weights.
    """
    for option, value in (("type_name", type_name), ("head", head)):
        if value is not None and value not in QUANTIZED_TYPES:
            raise ArgumentError(f"{option} must be one of {', '.join(QUANTIZED_TYPES)}, got {value!r}")
    src = RwkvCppFile(src_bin)
    try:
        if src.header.data_type.name not in ("FP32", "FP16"):
            raise ModelFormatError(
                f"{src.path}: can only quantize an FP32 or FP16 model, this one is "
                f"{src.header.data_type.name}"
            )
        write_rwkvcpp(
            dst_bin,
            _quantized_records(src, type_name, head),
            n_vocab=src.header.n_vocab,
            n_embd=src.header.n_embd,
            n_layer=src.header.n_layer,
            data_type=type_name,
            version=VERSION_1,
            n_tensors=len(src.tensors),
            progress=progress,
            protect=[src.path],
        )
    finally:
        src.close()


def _quantized_records(src: RwkvCppFile, type_name: str, head: str | None) -> Iterator[TensorRecord]:
    for info in list(src.tensors.values()):
        target = tensor_target_type(info, type_name, head)
        if target is None:
            yield TensorRecord(info.name, info.shape, info.type.name, src.raw(info.name))
            continue
        rows = np.asarray(src.array(info.name), dtype=np.float32).reshape(info.ne[1], info.ne[0])
        try:
            packed = quantize_rows(rows, target)
        except ValueError as e:
            raise ModelFormatError(f"{src.path}: cannot quantize tensor {info.name!r}: {e}") from None
        yield TensorRecord(info.name, info.shape, target, packed)

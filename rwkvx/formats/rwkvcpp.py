"""Reader for rwkv.cpp model files (.bin, file versions 100 and 101).

Layout (all integers uint32 little-endian, no padding anywhere):

    header:  magic 0x67676d66, version, n_vocab, n_embd, n_layer, data_type
    tensors until end of file:
        dim_count (1..3), key_length, data_type, ne[dim_count], key bytes, data

`ne` is ggml order (innermost first); the NumPy shape of a tensor is `ne`
reversed, so a matrix mapping n_in -> n_out has shape (n_out, n_in).
The file is memory-mapped and tensors are views into it: nothing is copied.
Every length and offset is checked against the file size before use.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import ModelFormatError
from .ggml_types import (
    REMOVED_TYPE_IDS,
    TYPES_BY_ID,
    UNSUPPORTED_TYPE_IDS,
    GGMLType,
    dequantize,
)

MAGIC = 0x67676D66
VERSION_0, VERSION_1 = 100, 101
HEADER = struct.Struct("<6I")
MAX_KEY_LENGTH = 4096
MAX_PREDICTED_RECORDS = 1 << 14  # records prefetched ahead of the table's reading (a real model has < 4000)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: GGMLType
    ne: tuple[int, ...]  # ggml order, innermost first
    offset: int  # of the data, in bytes from the start of the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy shape: ne reversed."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


@dataclass(frozen=True)
class Header:
    version: int
    n_vocab: int
    n_embd: int
    n_layer: int
    data_type: GGMLType


def _type_from_id(type_id: int, path: str, where: str) -> GGMLType:
    if type_id in TYPES_BY_ID:
        return TYPES_BY_ID[type_id]
    if type_id in REMOVED_TYPE_IDS:
        raise ModelFormatError(
            f"{path}: {where} has data type {REMOVED_TYPE_IDS[type_id]} (id {type_id}), a quantization "
            f"format rwkv.cpp removed in 2023; re-quantize the model from its FP32 or FP16 file"
        )
    if type_id in UNSUPPORTED_TYPE_IDS:
        raise ModelFormatError(
            f"{path}: {where} has data type {UNSUPPORTED_TYPE_IDS[type_id]} (id {type_id}), which rwkvx "
            f"does not support; supported: {', '.join(t.name for t in TYPES_BY_ID.values())}"
        )
    raise ModelFormatError(f"{path}: {where} has unknown data type id {type_id}")


class RwkvCppFile:
    """An opened rwkv.cpp model file: header, tensor table, and zero-copy tensor views."""

    convention = "rwkv.cpp"  # made for rwkv.cpp: run with its numeric conventions by default

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER.size:
                    raise ModelFormatError(
                        f"{self.path}: file is {size} bytes, shorter than the {HEADER.size}-byte header"
                    )
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ModelFormatError(f"{self.path}: cannot open model file: {e.strerror or e}") from e
        self.size = size
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.header = self._read_header()
        self.tensors = self._read_tensor_table()

    def _read_header(self) -> Header:
        magic, version, n_vocab, n_embd, n_layer, type_id = HEADER.unpack_from(self._mmap, 0)
        if magic != MAGIC:
            raise ModelFormatError(
                f"{self.path}: not an rwkv.cpp model file (magic 0x{magic:08x}, expected 0x{MAGIC:08x})"
            )
        if version not in (VERSION_0, VERSION_1):
            raise ModelFormatError(
                f"{self.path}: unsupported file version {version} (supported: {VERSION_0}, {VERSION_1})"
            )
        data_type = _type_from_id(type_id, self.path, "the header")
        if data_type.quantized and version != VERSION_1:
            raise ModelFormatError(
                f"{self.path}: quantized ({data_type.name}) file of version {version} uses the pre-2023-05 "
                f"block layout; re-quantize it from the FP32/FP16 file"
            )
        for name, value in (("n_vocab", n_vocab), ("n_embd", n_embd), ("n_layer", n_layer)):
            if value == 0:
                raise ModelFormatError(f"{self.path}: header has {name} = 0")
        return Header(version, n_vocab, n_embd, n_layer, data_type)

    def _read_tensor_table(self) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        layer_1: list[int] | None = []  # record offsets of layer 1 until layer 2 begins, then None
        pos = HEADER.size
        while pos < self.size:
            record = pos
            if pos + 12 > self.size:
                raise ModelFormatError(
                    f"{self.path}: truncated tensor header at offset {record} (file ends at {self.size})"
                )
            dim_count, key_length, type_id = struct.unpack_from("<3I", self._mmap, pos)
            pos += 12
            if not 1 <= dim_count <= 3:
                raise ModelFormatError(
                    f"{self.path}: tensor record at offset {record} has {dim_count} dimensions (expected 1..3)"
                )
            if not 0 < key_length <= MAX_KEY_LENGTH:
                raise ModelFormatError(
                    f"{self.path}: tensor record at offset {record} has a name of {key_length} bytes"
                )
            if pos + 4 * dim_count + key_length > self.size:
                raise ModelFormatError(
                    f"{self.path}: truncated tensor header at offset {record} (file ends at {self.size})"
                )
            ne = struct.unpack_from(f"<{dim_count}I", self._mmap, pos)
            pos += 4 * dim_count
            try:
                name = bytes(self._mmap[pos : pos + key_length]).decode("utf-8")
            except UnicodeDecodeError:
                raise ModelFormatError(
                    f"{self.path}: tensor name at offset {pos} is not valid UTF-8"
                ) from None
            pos += key_length
            where = f"tensor {name!r} (record at offset {record})"
            ttype = _type_from_id(type_id, self.path, where)
            if any(n == 0 for n in ne):
                raise ModelFormatError(f"{self.path}: {where} has an empty dimension: ne={list(ne)}")
            if ne[0] % ttype.block_size:
                raise ModelFormatError(
                    f"{self.path}: {where} of type {ttype.name} has rows of {ne[0]} elements, "
                    f"not a multiple of the block size {ttype.block_size}"
                )
            n_elements = math.prod(ne)  # Python ints: three uint32 dimensions overflow int64
            nbytes = ttype.nbytes(n_elements)
            if pos + nbytes > self.size:
                raise ModelFormatError(
                    f"{self.path}: {where} needs {nbytes} bytes of data at offset {pos}, "
                    f"but the file ends at {self.size} (truncated file?)"
                )
            if name in tensors:
                raise ModelFormatError(f"{self.path}: {where} appears twice")
            tensors[name] = TensorInfo(name, ttype, tuple(ne), pos, nbytes)
            pos += nbytes
            # Each record's place is known only once the one before it is read: a page fault each, each
            # waiting on the disk when the file is not cached. Once layer 1 is read, the places of the
            # later layers' records are guessed from it and asked for all at once, so the disk reads them
            # side by side (a 1.9 GB file's 675 records: the whole load 0.2-0.3 s rather than 0.9-1.5 s).
            if layer_1 is not None and name.startswith("blocks.1."):
                layer_1.append(record)
            elif layer_1 and name.startswith("blocks.2."):
                self._prefetch_pages(predicted_record_offsets(layer_1, record, self.header.n_layer, self.size))
                layer_1 = None
        return tensors

    def _prefetch_pages(self, offsets: list[int]) -> None:
        """Start reading the page at each of these file offsets, and the next one when the record's first
        page's worth of bytes crosses into it."""
        for offset in offsets:
            self._will_need(offset, offset + mmap.PAGESIZE)

    def _will_need(self, begin: int, end: int) -> None:
        """Ask the OS to start reading the pages holding bytes [begin, end) of the file, without waiting."""
        first = begin // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(end, self.size)
        if end > first:
            self._advise(getattr(mmap, "MADV_WILLNEED", None), first, end - first)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, as a read-only uint8 view into the mapped file."""
        info = self.tensors[name]
        return self._bytes[info.offset : info.offset + info.nbytes]

    def array(self, name: str) -> np.ndarray:
        """The tensor as a float32 array of its NumPy shape (dequantized; a copy unless FP32)."""
        info = self.tensors[name]
        raw = self.raw(name)
        if info.type.name == "FP32" and info.offset % 4 == 0:
            return raw.view("<f4").reshape(info.shape)
        return dequantize(raw, info.type.name, info.n_elements).reshape(info.shape)

    def _advise(self, advice: int | None, begin: int = 0, length: int = 0) -> None:
        """madvise on bytes [begin, begin + length) of the mapping (length 0: to its end) where the
        platform has it; only ever a hint, so it is skipped where missing or refused (some file systems
        refuse some advice)."""
        if advice is not None and hasattr(self._mmap, "madvise"):
            try:
                self._mmap.madvise(advice, begin, length)
            except OSError:
                pass

    def prefetch(self, name: str) -> None:
        """Ask the OS to start reading the tensor's pages now, without waiting for them: requests for
        many tensors at once go to the disk together instead of one page fault at a time."""
        info = self.tensors[name]
        if info.nbytes:
            self._will_need(info.offset, info.offset + info.nbytes)

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None:
        """Hand the pages holding only bytes [begin, end) of this tensor back to the OS (a caller that
        copied them elsewhere). They stay in the page cache: a later read maps them again, unchanged."""
        info = self.tensors[name]
        end = info.nbytes if end is None else min(end, info.nbytes)
        page = mmap.PAGESIZE
        begin = -(-(info.offset + begin) // page) * page  # whole pages inside the range only
        end = (info.offset + end) // page * page
        if end > begin:
            self._advise(getattr(mmap, "MADV_DONTNEED", None), begin, end - begin)

    def close(self) -> None:
        """Drop this object's views; the mapping closes once no array refers to it."""
        self._bytes = None
        self.tensors = {}


def predicted_record_offsets(layer_1: list[int], layer_2: int, n_layer: int, file_size: int) -> list[int]:
    """Where the records of layers 2 .. n_layer - 1 begin, if every layer repeats layer 1's records (the
    same tensors in the same order and sizes, as every RWKV version has them): layer_1 holds the offsets
    of layer 1's records, layer_2 that of layer 2's first. Names are those of layer 1 with the layer's
    number in place of "1", so each record of layer k is len(str(k)) - 1 bytes longer. Only a guess for
    prefetching: a file laid out otherwise is still read record by record. At most
    MAX_PREDICTED_RECORDS offsets, all before file_size: a corrupt header's n_layer costs nothing."""
    first, stride = layer_1[0], layer_2 - layer_1[0]
    offsets, start = [], layer_2
    for k in range(2, n_layer):
        longer = len(str(k)) - 1
        for j, record in enumerate(layer_1):
            offset = start + (record - first) + j * longer
            if offset >= file_size or len(offsets) == MAX_PREDICTED_RECORDS:
                return offsets
            offsets.append(offset)
        start += stride + len(layer_1) * longer
    return offsets


def open_bin(path: str | os.PathLike) -> RwkvCppFile:
    return RwkvCppFile(path)

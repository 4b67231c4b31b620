"""Read and write .safetensors files (no dependency: the format is an 8-byte length, JSON, raw bytes).

Layout: uint64 LE n, then n bytes of UTF-8 JSON {name: {"dtype", "shape", "data_offsets": [begin, end]},
optional "__metadata__": {str: str}}, then the data; offsets are relative to the end of the JSON,
little-endian, C order. We parse it ourselves rather than use the `safetensors` package because it is
tiny, so rwkvx needs nothing extra, and a memory map gives zero-copy views with our own bounds checks
and error messages.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import ArgumentError, ModelFormatError

# safetensors dtype -> NumPy dtype of the stored bytes (BF16 read as uint16 and widened on access)
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
MAX_HEADER_BYTES = 100 * 2**20  # the reference implementation's limit
ALIGNMENT = 8  # data offsets are padded (with spaces in the JSON) so every tensor starts 8-byte aligned


class SafetensorsFile:
    """An opened .safetensors file: `names` in data order, `array(name)` -> NumPy array of its shape.

    Arrays are float32 (F32 and BF16, widened exactly), float16 or float64.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise ModelFormatError(f"{self.path}: {size} bytes, too short for a safetensors file")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ModelFormatError(f"{self.path}: cannot open: {e.strerror or e}") from e
        (n,) = struct.unpack_from("<Q", self._mmap, 0)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelFormatError(f"{self.path}: header of {n} bytes does not fit the {size}-byte file")
        try:
            header = json.loads(bytes(self._mmap[8 : 8 + n]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{self.path}: header is not valid JSON: {e}") from None
        except RecursionError:  # json parses nested arrays and objects recursively
            raise ModelFormatError(f"{self.path}: header nests too deeply to be a tensor table") from None
        if not isinstance(header, dict):
            raise ModelFormatError(f"{self.path}: header is not a JSON object")
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._entries = {}
        for name, entry in header.items():
            self._entries[name] = self._checked_entry(name, entry, size - self._data_start)
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)

    def _checked_entry(self, name, entry, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
        where = f"{self.path}: tensor {name!r}"
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{where}: malformed header entry {entry!r:.100}") from None
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ModelFormatError(f"{where}: dtype {dtype!r} is not supported ({', '.join(DTYPES)})")
        if not all(_is_count(d) for d in shape) or not _is_count(begin) or not _is_count(end):
            raise ModelFormatError(f"{where}: malformed shape {shape} or offsets {begin}, {end}")
        expected = math.prod(shape) * DTYPES[dtype].itemsize  # a Python int: no wrap-around
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise ModelFormatError(
                f"{where}: data [{begin}, {end}) does not hold {dtype} {list(shape)} ({expected} bytes) "
                f"inside the {data_size} bytes of data"
            )
        if not fits_numpy(shape, DTYPES[dtype].itemsize):
            raise ModelFormatError(f"{where}: shape {shape} is too large for a NumPy array")
        return dtype, shape, begin, end

    @property
    def names(self) -> list[str]:
        return sorted(self._entries, key=lambda name: self._entries[name][2])

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def source_dtype(self, name: str) -> str:
        return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}[self._entries[name][0]]

    def array(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[name]
        raw = self._bytes[self._data_start + begin : self._data_start + end]
        if (self._data_start + begin) % DTYPES[dtype].itemsize:
            raw = raw.copy()  # unaligned: NumPy can view it, but a copy keeps later math fast
        values = raw.view(DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values

    def close(self) -> None:
        self._bytes = None
        self._entries = {}


def _is_count(value) -> bool:
    """A JSON number usable as a size or offset: a non-negative integer (JSON true/false load as bools,
    which Python counts as ints)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def fits_numpy(shape: tuple[int, ...], itemsize: int) -> bool:
    """Whether NumPy can make an array of this shape. A shape with a 0 holds no data, yet NumPy still
    refuses it when its other axes multiply past the address space, so the data size alone cannot tell."""
    return math.prod(n for n in shape if n) * itemsize <= np.iinfo(np.intp).max


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    f = SafetensorsFile(path)
    return {name: f.array(name) for name in f.names}


def write_safetensors(path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]],
                      get_array: Callable[[str], np.ndarray], dtype: str = "F32") -> None:
    """Write tensors `shapes` (name -> shape, in file order), all stored as `dtype` (F32, F16, BF16, F64).

    get_array(name) is called once per tensor while its bytes are written, so a caller can generate
    huge models one tensor at a time. Values are cast to dtype (BF16: rounded to nearest even).
    """
    if dtype not in DTYPES:
        raise ArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": [int(n) for n in shape], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape in shapes.items():
            array = np.asarray(get_array(name))
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name!r}: got shape {array.shape}, declared {tuple(shape)}")
            f.write(storage_bytes(array, dtype))


def storage_bytes(array: np.ndarray, dtype: str) -> bytes:
    """The little-endian bytes of `array` cast to dtype (F32, F16, BF16, F64), C order."""
    if dtype == "BF16":
        return to_bfloat16_bits(array).tobytes()
    return np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even, as torch does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)

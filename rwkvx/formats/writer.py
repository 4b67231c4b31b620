"""Writer for rwkv.cpp model files (.bin, file version 101 by default).

The layout is the one rwkvcpp.py reads: a 24-byte header (magic, version,
n_vocab, n_embd, n_layer, data_type; uint32 little-endian), then per tensor
dim_count, key_length, data_type, ne[dim_count] (ggml order = NumPy shape
reversed), the UTF-8 name and the raw data, with no padding anywhere.

Writes are atomic: the file is built under a temporary name in the
destination directory, flushed to disk, then renamed over the destination.
If anything fails (a bad record, an exception from the record source, a full
disk, Ctrl-C), the temporary file is removed and the destination is untouched.
"""
from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from ..errors import ArgumentError, ModelFormatError
from .ggml_types import ggml_type
from .rwkvcpp import HEADER, MAGIC, MAX_KEY_LENGTH, VERSION_0, VERSION_1

# progress(done, total, name): called after each tensor is written; done counts
# from 1 to total; total is None when the number of tensors is not known.
ProgressCallback = Callable[[int, "int | None", str], None]


class TensorRecord(NamedTuple):
    """One tensor to write. A plain (name, shape, type_name, data) tuple works too."""

    name: str
    shape: tuple[int, ...]  # NumPy shape (outermost first); the file stores it reversed
    type_name: str  # "FP32", "FP16", "Q5_1", ...
    data: bytes | bytearray | memoryview | np.ndarray  # exactly the tensor's packed bytes


def write_rwkvcpp(
    path: str | os.PathLike,
    tensors: Iterable[TensorRecord | tuple],
    *,
    n_vocab: int,
    n_embd: int,
    n_layer: int,
    data_type: str,
    version: int = VERSION_1,
    n_tensors: int | None = None,
    progress: ProgressCallback | None = None,
    protect: Iterable[str | os.PathLike] = (),
) -> None:
    """Write an rwkv.cpp .bin file atomically.

    tensors: records in file order; may be a lazy iterator (each is written as
        it arrives, so a quantizer can stream). data is the raw bytes, e.g. an
        FP32 array's buffer or a quantizer's uint8 output.
    data_type: the header's type name, "the type of most parameters".
    n_tensors: total for progress; defaults to len(tensors) when it has one.
    protect: paths that must not be overwritten (e.g. the file being read):
        if path is the same file as one of them, ModelFormatError is raised
        before anything is written.
    Raises ModelFormatError for a record that would make an invalid file,
    ValueError for a bad header argument; OSError from the file system.
    """
    destination = os.fspath(path)
    for source in protect:
        if os.path.exists(destination) and os.path.samefile(source, destination):
            raise ModelFormatError(
                f"refusing to write {destination!r}: it is the same file as the input {os.fspath(source)!r}"
            )
    header = _header_bytes(n_vocab, n_embd, n_layer, data_type, version)
    if n_tensors is None and hasattr(tensors, "__len__"):
        n_tensors = len(tensors)

    directory = os.path.dirname(os.path.abspath(destination))
    fd, temporary = tempfile.mkstemp(prefix="." + os.path.basename(destination) + ".", suffix=".partial",
                                     dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            names = set()
            for done, record in enumerate(tensors, start=1):
                name = _write_tensor(f, _as_record(record), names)
                if progress is not None:
                    progress(done, n_tensors, name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, destination)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _header_bytes(n_vocab: int, n_embd: int, n_layer: int, data_type: str, version: int) -> bytes:
    if version not in (VERSION_0, VERSION_1):
        raise ArgumentError(f"file version must be {VERSION_0} or {VERSION_1}, got {version}")
    header_type = ggml_type(data_type)
    if header_type.quantized and version != VERSION_1:
        raise ArgumentError(f"a {data_type} file must be version {VERSION_1} (the layout of version {version} differs)")
    for field, value in (("n_vocab", n_vocab), ("n_embd", n_embd), ("n_layer", n_layer)):
        if not 0 < int(value) < 2**32:
            raise ArgumentError(f"{field} must be a positive 32-bit integer, got {value}")
    return HEADER.pack(MAGIC, version, n_vocab, n_embd, n_layer, header_type.id)


def _as_record(record) -> TensorRecord:
    try:
        return TensorRecord(*record)
    except TypeError:
        raise ModelFormatError(
            f"a tensor record must be (name, shape, type_name, data), got {type(record).__name__}"
        ) from None


def _write_tensor(f, record: TensorRecord, names: set[str]) -> str:
    """Validate one record and append it to f; returns its name."""
    name, shape, type_name, data = record
    where = f"tensor {name!r}"
    key = name.encode("utf-8") if isinstance(name, str) else b""
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ModelFormatError(f"{where}: a name must be 1..{MAX_KEY_LENGTH} bytes of UTF-8")
    if name in names:
        raise ModelFormatError(f"{where} is written twice")
    names.add(name)
    shape = tuple(int(n) for n in shape)
    if not 1 <= len(shape) <= 3 or any(not 0 < n < 2**32 for n in shape):
        raise ModelFormatError(f"{where}: shape {shape} must have 1..3 positive dimensions")
    ne = shape[::-1]  # ggml order, innermost first
    tensor_type = ggml_type(type_name)
    if ne[0] % tensor_type.block_size:
        raise ModelFormatError(
            f"{where}: rows of {ne[0]} elements are not a multiple of the {type_name} block size "
            f"{tensor_type.block_size}"
        )
    payload = _as_bytes(data)
    expected = tensor_type.nbytes(int(np.prod(ne, dtype=np.int64)))
    if payload.nbytes != expected:
        raise ModelFormatError(
            f"{where}: {payload.nbytes} bytes of data, but {type_name} {shape} takes {expected}"
        )
    f.write(struct.pack(f"<{3 + len(ne)}I", len(ne), len(key), tensor_type.id, *ne))
    f.write(key)
    f.write(payload)
    return name


def _as_bytes(data) -> memoryview:
    """A flat byte view of bytes-like data or of a NumPy array (in its memory order, C-contiguous)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    return memoryview(data).cast("B")


def _umask() -> int:
    # The only portable way to read the umask is to set it and put it back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Read PyTorch .pth state dicts without torch and without running code from the file.

A .pth file (torch.save, zip format, torch >= 1.6) is a zip archive holding
`<prefix>/data.pkl` (a pickle of the state dict) and one file per storage,
`<prefix>/data/<key>`, with the raw tensor bytes in little-endian order.

Unpickling normally imports and calls whatever the pickle names, which is how a
malicious checkpoint runs code. Here the unpickler resolves only a fixed allow
list of names (torch's tensor-rebuild functions, its storage types and
OrderedDict), and each resolves to a function of this module, never to torch
itself. Anything else (os.system, builtins.eval, ...) raises ModelFormatError
before it could be called, so torch is not needed and nothing from the file runs.

Tensors come back as NumPy arrays that view the memory-mapped file where the
layout allows (FP32, FP16 and FP64 storages in stored zip entries); bfloat16 is
widened to float32 (exactly).
"""
from __future__ import annotations

import math
import mmap
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError, ModelFormatError
from .safetensors import fits_numpy

try:
    import lzma
except ImportError:  # a Python built without liblzma: zipfile then cannot read LZMA entries at all
    lzma = None

# torch storage type name -> (NumPy dtype of the stored bytes, element size). bfloat16 is read as uint16.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"),
}
# torch.save of torch >= 2.x may name the dtype instead of a typed storage class.
DTYPE_NAMES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
               "float64": "DoubleStorage"}
ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # the 30 fixed bytes before a zip entry's name
ZIP_LOCAL_MAGIC = b"PK\x03\x04"
# What zipfile raises on a damaged archive, besides BadZipFile: struct.error, EOFError and OSError for
# records that are cut short or point outside the file, NotImplementedError for a compression method or
# zip version it cannot read, UnicodeDecodeError for a name marked UTF-8 that is not, and the
# decompressors' own errors for corrupt compressed data (bz2 raises OSError).
ZIP_ERRORS = (zipfile.BadZipFile, struct.error, EOFError, OSError, NotImplementedError, UnicodeDecodeError,
              zlib.error) + ((lzma.LZMAError,) if lzma else ())


@dataclass(frozen=True)
class _StorageType:
    """Stands in for torch.FloatStorage & co. inside the unpickler."""

    name: str


@dataclass(frozen=True)
class _StorageRef:
    """A persistent id ('storage', type, key, location, numel), resolved to bytes later."""

    storage_type: _StorageType
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """What _rebuild_tensor_v2 describes: a strided view of a storage."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Safe stand-in for torch._utils._rebuild_tensor_v2 / _rebuild_tensor: records the view only."""
    if not isinstance(storage, _StorageRef):
        raise ModelFormatError("a tensor in the checkpoint does not refer to a storage")
    try:
        return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size),
                          tuple(int(n) for n in stride))
    except (TypeError, ValueError):
        raise ModelFormatError("a tensor in the checkpoint has a malformed shape or stride") from None


def _rebuild_parameter(data, *_ignored):
    """Safe stand-in for torch._utils._rebuild_parameter (nn.Parameter in a state dict): the tensor itself."""
    return data


def _ordered_dict(*args):
    return OrderedDict(*args)


# (module, name) -> what the unpickler hands back instead. Nothing else can be named by the pickle.
_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    **{("torch", name): _StorageType(storage) for name, storage in DTYPE_NAMES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ModelFormatError(
                f"{self._path}: refusing to load: the pickle asks for {module}.{name}, which a plain "
                f"state dict of tensors never needs (a checkpoint that runs code?)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModelFormatError(f"{self._path}: unsupported persistent id in the pickle: {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) \
                or numel < 0:
            raise ModelFormatError(f"{self._path}: malformed storage reference in the pickle: {pid!r:.80}")
        return _StorageRef(storage_type, key, numel)


class PthFile:
    """An opened .pth checkpoint: `names` in state-dict order, `array(name)` -> NumPy array.

    Arrays are float32 (from FP32 or BF16 storages), float16 or float64, in the tensor's shape.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise ModelFormatError(f"{self.path}: cannot open checkpoint: {e.strerror or e}") from e
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        if not zipfile.is_zipfile(self._file):
            self._file.seek(0)
            if self._file.read(2) == b"\x80\x02":
                raise ModelFormatError(
                    f"{self.path}: a pre-1.6 (non-zip) torch checkpoint; re-save it with a recent torch "
                    f"(torch.save(torch.load(path, weights_only=True), new_path))"
                )
            raise ModelFormatError(f"{self.path}: not a PyTorch checkpoint (not a zip archive)")
        try:
            self._zip = zipfile.ZipFile(self._file)
        except ZIP_ERRORS as e:
            raise ModelFormatError(f"{self.path}: corrupt zip archive: {e}") from None
        pickles = [n for n in self._zip.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ModelFormatError(f"{self.path}: expected one data.pkl in the archive, found {len(pickles)}")
        self._prefix = pickles[0][: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in self._zip.namelist() and self._read_entry(byteorder).strip() != b"little":
            raise ModelFormatError(f"{self.path}: big-endian checkpoints are not supported")
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with self._zip.open(pickles[0]) as f:
                state = _RestrictedUnpickler(f, self.path).load()
        except ModelFormatError:
            raise
        except Exception as e:  # a truncated or garbled pickle: report it, never crash
            raise ModelFormatError(f"{self.path}: cannot read the pickled state dict: {e}") from None
        if not isinstance(state, dict):
            raise ModelFormatError(f"{self.path}: the checkpoint holds a {type(state).__name__}, not a state dict")
        for name, value in state.items():
            if not isinstance(name, str) or not isinstance(value, _TensorRef):
                raise ModelFormatError(
                    f"{self.path}: entry {name!r} is not a tensor (a state dict of tensors is expected)"
                )
            # checked now, against the storage size the pickle declares, so that shape(name) never reports
            # a shape its storage cannot hold; array() checks again against the bytes it actually reads
            _check_layout(value, value.storage.numel, f"{self.path}: tensor {name!r}")
        self._tensors: dict[str, _TensorRef] = dict(state)
        self._storages: dict[str, np.ndarray] = {}

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].size

    def source_dtype(self, name: str) -> str:
        """'float32', 'float16', 'bfloat16' or 'float64': how the tensor is stored in the file."""
        storage = self._tensors[name].storage.storage_type.name
        return {v: k for k, v in DTYPE_NAMES.items()}[storage]

    def array(self, name: str) -> np.ndarray:
        """The tensor as a NumPy array of its shape (a read-only view of the file where possible)."""
        ref = self._tensors[name]
        storage = self._storage(ref.storage)
        view = _strided_view(storage, ref, f"{self.path}: tensor {name!r}")
        if ref.storage.storage_type.name == "BFloat16Storage":
            # bfloat16 is the upper half of a float32: widening is exact.
            return (view.astype(np.uint32) << 16).view(np.float32)
        return view

    def _storage(self, ref: _StorageRef) -> np.ndarray:
        if ref.key not in self._storages:
            dtype = STORAGE_DTYPES[ref.storage_type.name]
            entry = f"{self._prefix}data/{ref.key}"
            data = self._entry_bytes(entry)
            if data.size < ref.numel * dtype.itemsize:
                raise ModelFormatError(
                    f"{self.path}: storage {entry!r} has {data.size} bytes, the pickle says "
                    f"{ref.numel} x {dtype.itemsize}"
                )
            self._storages[ref.key] = data[: ref.numel * dtype.itemsize].view(dtype)
        return self._storages[ref.key]

    def _entry_bytes(self, entry: str) -> np.ndarray:
        """An entry's bytes: a view of the mapped file if stored uncompressed (torch's way), else a copy."""
        try:
            info = self._zip.getinfo(entry)
        except KeyError:
            raise ModelFormatError(f"{self.path}: the archive has no {entry!r}") from None
        if info.compress_type == zipfile.ZIP_STORED:
            if not 0 <= info.header_offset <= len(self._mmap) - ZIP_LOCAL_HEADER.size:
                raise ModelFormatError(
                    f"{self.path}: zip entry {entry!r} has its local header at byte {info.header_offset}, "
                    f"outside the {len(self._mmap)}-byte file"
                )
            fields = ZIP_LOCAL_HEADER.unpack_from(self._mmap, info.header_offset)
            if fields[0] != ZIP_LOCAL_MAGIC:
                raise ModelFormatError(f"{self.path}: corrupt zip entry {entry!r}")
            start = info.header_offset + ZIP_LOCAL_HEADER.size + fields[9] + fields[10]
            if start + info.file_size > len(self._mmap):
                raise ModelFormatError(f"{self.path}: zip entry {entry!r} runs past the end of the file")
            return np.frombuffer(self._mmap, dtype=np.uint8, count=info.file_size, offset=start)
        return np.frombuffer(self._read_entry(entry), dtype=np.uint8)

    def _read_entry(self, entry: str) -> bytes:
        """An entry's bytes, decompressed and checked against its CRC by zipfile."""
        try:
            return self._zip.read(entry)
        except ZIP_ERRORS as e:
            raise ModelFormatError(f"{self.path}: cannot read {entry!r}: {e}") from None

    def close(self) -> None:
        self._storages = {}
        self._tensors = {}
        self._zip.close()
        self._file.close()


def _strided_view(storage: np.ndarray, ref: _TensorRef, where: str) -> np.ndarray:
    """storage[offset:] seen with the tensor's size and stride (in elements), after checking it stays inside.

    Checked against the storage as read: two tensors may name one storage with different sizes, and
    the first one read is the one kept.
    """
    _check_layout(ref, storage.size, where)
    size, stride, offset = ref.size, ref.stride, ref.offset
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride],
                                           writeable=False)
    return view


def _check_layout(ref: _TensorRef, storage_numel: int, where: str) -> None:
    """Refuse a size / stride / offset that is malformed, reaches past a storage of storage_numel
    elements, or repeats elements of the storage."""
    size, stride, offset = ref.size, ref.stride, ref.offset
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise ModelFormatError(f"{where}: malformed size {size} / stride {stride} / offset {offset}")
    if 0 in size:  # no elements to place; NumPy must still accept the shape
        if not fits_numpy(size, STORAGE_DTYPES[ref.storage.storage_type.name].itemsize):
            raise ModelFormatError(f"{where}: size {size} is too large for a NumPy array")
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_numel:
        raise ModelFormatError(f"{where}: reaches element {last} of a storage of {storage_numel}")
    # A weight's elements are distinct storage elements. One with stride 0 on a longer axis (torch's
    # expand()), or with more elements than its storage holds past the offset, repeats some: it would
    # materialize as more memory than the file holds (a 600 KB file declared a 64 GiB emb.weight).
    if any(s == 0 and n > 1 for n, s in zip(size, stride)) or math.prod(size) > storage_numel - offset:
        raise ModelFormatError(
            f"{where}: size {size} with stride {stride} repeats elements of its storage (like a tensor "
            f"made by torch's expand()); a checkpoint's weights never do"
        )


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a .pth state dict, in file order (see PthFile for dtypes)."""
    f = PthFile(path)
    return {name: f.array(name) for name in f.names}


# ---- writing ----------------------------------------------------------------------------------------
# A minimal torch.save-compatible writer, so tests and benchmarks can make .pth files without torch.
# The pickle is emitted opcode by opcode (protocol 2), naming the same globals torch.save does.

STORAGE_NAMES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage"}
ZIP_ALIGNMENT = 64  # torch aligns every storage to 64 bytes in the archive (memory-mapped loading)
_PADDING_EXTRA_ID = 0x5046  # an otherwise unused zip extra-field id, for alignment padding


def _pickle_int(n: int) -> bytes:
    if 0 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    body = int(n).to_bytes((int(n).bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(body)]) + body  # LONG1


def _pickle_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _pickle_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _pickle_ints_tuple(values) -> bytes:
    return b"(" + b"".join(_pickle_int(int(v)) for v in values) + b"t"


def _state_dict_pickle(entries: list[tuple[str, tuple[int, ...], str, str]]) -> bytes:
    """Pickle of an OrderedDict name -> tensor; entries are (name, shape, storage class, storage key)."""
    ordered_dict = _pickle_global("collections", "OrderedDict") + b")R"
    out = [b"\x80\x02", ordered_dict, b"("]
    for name, shape, storage, key in entries:
        numel = int(np.prod(shape, dtype=np.int64))
        strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
        storage_id = (b"(" + _pickle_str("storage") + _pickle_global("torch", storage) + _pickle_str(key)
                      + _pickle_str("cpu") + _pickle_int(numel) + b"tQ")  # persistent id tuple, BINPERSID
        args = (b"(" + storage_id + _pickle_int(0) + _pickle_ints_tuple(shape) + _pickle_ints_tuple(strides)
                + b"\x89" + ordered_dict + b"t")  # offset, size, stride, requires_grad=False, hooks
        out.append(_pickle_str(name) + _pickle_global("torch._utils", "_rebuild_tensor_v2") + args + b"R")
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def write_pth(path: str | os.PathLike, shapes, get_array, dtype: str = "float32") -> None:
    """Write a state dict loadable by torch.load(weights_only=True): tensors `shapes` (name -> shape, in
    order), every one stored as dtype ("float32", "float16", "bfloat16").

    get_array(name) is called once per tensor while it is written (generate big models lazily).
    """
    from .safetensors import storage_bytes  # the same float32 -> F16/BF16 rounding

    if dtype not in STORAGE_NAMES:
        raise ArgumentError(f"dtype must be one of {', '.join(STORAGE_NAMES)}, got {dtype!r}")
    st_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    prefix = "archive/"
    entries = [(name, tuple(int(n) for n in shape), STORAGE_NAMES[dtype], str(i))
               for i, (name, shape) in enumerate(shapes.items())]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(prefix + "data.pkl", _state_dict_pickle(entries))
        zf.writestr(prefix + "byteorder", "little")
        for name, shape, _, key in entries:
            array = np.asarray(get_array(name))
            if array.shape != shape:
                raise ValueError(f"tensor {name!r}: got shape {array.shape}, declared {shape}")
            _write_aligned(zf, prefix + "data/" + key, storage_bytes(array, st_dtype))
        zf.writestr(prefix + "version", "3\n")


def _write_aligned(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    zip64_extra = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0
    start = zf.fp.tell() + ZIP_LOCAL_HEADER.size + len(name.encode()) + 4 + zip64_extra
    pad = -start % ZIP_ALIGNMENT
    info.extra = struct.pack("<HH", _PADDING_EXTRA_ID, pad) + b"\0" * pad
    zf.writestr(info, data)

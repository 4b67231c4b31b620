"""PyTorch/safetensors RWKV checkpoints -> rwkv.cpp tensors, and an in-memory model source.

Official checkpoints name tensors as the training code does (e.g. `blocks.3.att.time_decay`,
v7's six `att.x_r` ... `att.x_g`); rwkv.cpp's converter (SPEC.md §5) rewrites some of them once
so inference needs no per-token work. We apply the same rewrites, tensor by tensor, in float32:

* every `.time_*` tensor is squeezed;
* v4: time_decay -> -exp(time_decay);
* v5.1: time_decay -> exp(-exp(d)) and time_first -> exp(u), shaped (H, 1, 1);
* v5.2: time_decay -> exp(-exp(d)), time_faaaa kept, both shaped (H, S, 1);
* v6: time_decay kept raw, shaped (H, S, 1); time_faaaa (H, S, 1); time_maa_w1, time_decay_w1/w2
  transposed; time_maa_w2 transposed on its last two axes;
* v7: att.x_r, x_w, x_k, x_v, x_a, x_g concatenated into att.x_rwkvag (6, 1, C); the LoRA
  matrices w1, w2, a1, a2, v1, v2, g1, g2 transposed.

Tensors the architecture does not read (e.g. v7's unused layer-0 att.v0/v1/v2) are dropped:
rwkv.cpp gives extra tensors no buffer. The result is what rwkv.cpp's converter writes, in
state-dict order, then optionally stored as FP16 (with the converter's FP32 exceptions) or
quantized with the rules of quantize.py.
"""
from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator

import numpy as np

from ..architecture import ModelShape, expected_tensors, infer_shape
from ..errors import ArgumentError, MissingTensorError, ModelFormatError
from .ggml_types import QUANTIZED_TYPES, dequantize, ggml_type
from .pytorch import PthFile
from .quantize import quantize_rows, tensor_target_type
from .rwkvcpp import VERSION_1, Header, RwkvCppFile, TensorInfo
from .safetensors import SafetensorsFile
from .writer import ProgressCallback, TensorRecord

DTYPES = ("FP32", "FP16") + QUANTIZED_TYPES
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
# rwkv.cpp's converter keeps these FP32 in an FP16 file (besides every 1-D tensor): they are small and
# feed exponentials or per-channel mixes, where FP16 rounding costs accuracy.
FP16_KEEP_SUBSTRINGS = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")
V7_MIX_ORDER = ("r", "w", "k", "v", "a", "g")  # the order of att.x_rwkvag's six rows
V7_TRANSPOSED = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
V6_TRANSPOSED = ("att.time_maa_w1", "att.time_decay_w1", "att.time_decay_w2")
_LAYER_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


def checkpoint_arch(names) -> str:
    """The architecture of a checkpoint with official key names (the same presence rules as rwkv.cpp)."""
    names = set(names)
    if "blocks.0.att.k_k" in names or "blocks.0.att.r_k" in names:
        return "v7"
    if "blocks.0.att.time_maa_x" in names:
        return "v6"
    if "blocks.0.att.ln_x.weight" in names:
        return "v5.2" if "blocks.0.att.gate.weight" in names else "v5.1"
    return "v4"


def open_checkpoint(path: str | os.PathLike) -> PthFile | SafetensorsFile:
    """A reader (names, shape(name), array(name), close()) for a .pth or .safetensors file."""
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        return SafetensorsFile(path)
    return PthFile(path)


class CheckpointConverter:
    """Turns an open checkpoint into rwkv.cpp tensors: (name, float32 array of rwkv.cpp's NumPy shape)."""

    def __init__(self, reader):
        self.reader = reader
        self.path = reader.path
        names = reader.names
        if "emb.weight" not in names:
            raise MissingTensorError(f"{self.path}: tensor 'emb.weight' is missing (not an RWKV checkpoint?)")
        self.arch = checkpoint_arch(names)
        emb = reader.shape("emb.weight")
        if len(emb) != 2:
            raise ModelFormatError(f"{self.path}: emb.weight has shape {emb}, expected (n_vocab, n_embd)")
        self.n_vocab, self.n_embd = emb
        self.n_layer = 0
        while f"blocks.{self.n_layer}.ln1.weight" in names:
            self.n_layer += 1
        if self.n_layer == 0:
            raise MissingTensorError(f"{self.path}: tensor 'blocks.0.ln1.weight' is missing (no layers)")
        self.needed = set(_expected_names(self.arch, self.n_layer))
        missing = sorted(self.needed - set(self._rwkvcpp_names(names)))
        if missing:
            raise MissingTensorError(
                f"{self.path}: an RWKV {self.arch} checkpoint needs {missing[0]!r}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "") + ", which it lacks"
            )
        self.n_head = self._n_head()  # reads a tensor's shape by name: only once every needed one is there

    def _n_head(self) -> int:
        """The head count the file states (infer_shape checks it against every shape after conversion)."""
        if self.arch == "v4":
            return 1
        if self.arch == "v5.1":
            return math.prod(self.reader.shape("blocks.0.att.time_decay"))  # one decay per head
        name = "blocks.0.att.r_k" if self.arch == "v7" else "blocks.0.att.time_faaaa"
        shape = self.reader.shape(name)  # (n_head, head_size)
        if not shape:
            raise ModelFormatError(f"{self.path}: {name} has shape {shape}, expected (n_head, head_size)")
        return shape[0]

    @staticmethod
    def _rwkvcpp_names(names) -> list[str]:
        out = []
        for name in names:
            m = _LAYER_NAME.fullmatch(name)
            if m and m.group(2) in tuple(f"att.x_{c}" for c in V7_MIX_ORDER):
                name = f"blocks.{m.group(1)}.att.x_rwkvag"
            if name not in out:
                out.append(name)
        return out

    def header(self, dtype: str) -> Header:
        return Header(VERSION_1, self.n_vocab, self.n_embd, self.n_layer, ggml_type(dtype))

    @property
    def n_tensors(self) -> int:
        return len(self.needed)

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(rwkv.cpp name, float32 array) in state-dict order; checks every shape after the last one."""
        shapes = {}
        for name in self.reader.names:
            m = _LAYER_NAME.fullmatch(name)
            local = m.group(2) if m else name
            if self.arch == "v7" and local.startswith("att.x_") and local[len("att.x_"):] in V7_MIX_ORDER:
                if local != "att.x_r":
                    continue  # already emitted with att.x_r
                name = f"blocks.{m.group(1)}.att.x_rwkvag"
                array = self._v7_mix(m.group(1))
            else:
                if name not in self.needed:
                    continue
                array = self._transform(name, local, np.asarray(self.reader.array(name), dtype=np.float32))
            shapes[name] = array.shape
            yield name, array
        infer_shape(shapes, self.path)  # every tensor has the shape its architecture needs

    def _v7_mix(self, layer: str) -> np.ndarray:
        rows = []
        for c in V7_MIX_ORDER:
            name = f"blocks.{layer}.att.x_{c}"
            if name not in self.reader.names:
                raise MissingTensorError(f"{self.path}: tensor {name!r} is missing")
            row = np.asarray(self.reader.array(name), dtype=np.float32)
            if row.size != self.n_embd:
                raise ModelFormatError(f"{self.path}: {name} has shape {row.shape}, expected (1, 1, {self.n_embd})")
            rows.append(row.reshape(1, 1, self.n_embd))
        return np.concatenate(rows, axis=0)

    def _transform(self, name: str, local: str, x: np.ndarray) -> np.ndarray:
        """One tensor's rwkv.cpp form (float32; decay exponentials computed in float64, rounded once)."""
        arch, H = self.arch, self.n_head
        if ".time_" in name:
            x = np.squeeze(x)
        try:
            if arch == "v4" and local == "att.time_decay":
                x = -np.exp(x.astype(np.float64))
            elif arch == "v5.1" and local in ("att.time_decay", "att.time_first"):
                x = np.exp(-np.exp(x.astype(np.float64))) if local == "att.time_decay" else np.exp(x.astype(np.float64))
                x = x.reshape(-1, 1, 1)
            elif arch == "v5.2" and local in ("att.time_decay", "att.time_faaaa"):
                if local == "att.time_decay":
                    x = np.exp(-np.exp(x.astype(np.float64)))
                x = x.reshape(H, -1, 1)
            elif arch == "v6" and local in ("att.time_decay", "att.time_faaaa"):
                x = x.reshape(H, -1, 1)
            elif arch == "v6" and local in V6_TRANSPOSED:
                x = x.T
            elif arch == "v6" and local == "att.time_maa_w2":
                x = x.transpose(0, 2, 1)
            elif arch == "v7" and local.startswith("att.") and local[4:] in V7_TRANSPOSED:
                x = x.T
        except ValueError as e:  # a reshape that does not fit: the checkpoint's shapes are wrong
            raise ModelFormatError(f"{self.path}: tensor {name!r} of shape {x.shape} does not fit: {e}") from None
        return np.ascontiguousarray(x, dtype=np.float32)

    def records(self, dtype: str = "FP32", head: str | None = None) -> Iterator[TensorRecord]:
        """TensorRecords for the writer / InMemorySource, stored as dtype (see module docstring)."""
        dtype = checked_dtype(dtype)
        for name, array in self.tensors():
            yield stored_record(name, array, dtype, head, self.path)


def checked_dtype(dtype: str | None) -> str:
    dtype = "FP32" if dtype is None else dtype
    if dtype not in DTYPES:
        raise ArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def stored_record(name: str, array: np.ndarray, dtype: str, head: str | None, path: str) -> TensorRecord:
    """The record of one float32 rwkv.cpp tensor stored as dtype.

    FP16: like rwkv.cpp's converter (tensors of 2+ dims, except FP16_KEEP_SUBSTRINGS).
    Quantized: like rwkv.cpp's quantizer applied to the FP32 file (quantize.tensor_target_type).
    """
    fp32 = TensorRecord(name, array.shape, "FP32", array)
    if dtype == "FP16":
        if array.ndim > 1 and not any(part in name for part in FP16_KEEP_SUBSTRINGS):
            return TensorRecord(name, array.shape, "FP16", array.astype("<f2"))
        return fp32
    if dtype == "FP32":
        return fp32
    ne = array.shape[::-1]
    info = TensorInfo(name, ggml_type("FP32"), ne, 0, array.nbytes)
    target = tensor_target_type(info, dtype, head)
    if target is None:
        return fp32
    try:
        packed = quantize_rows(array.reshape(-1, ne[0]), target)
    except ValueError as e:
        raise ModelFormatError(f"{path}: cannot quantize tensor {name!r} to {target}: {e}") from None
    return TensorRecord(name, array.shape, target, packed)


class InMemorySource:
    """Model weights held in memory, with RwkvCppFile's interface (path, header, tensors, raw, array).

    TensorInfo.offset is the tensor's position in the .bin file these records would make.
    convention: "official" for a checkpoint, "rwkv.cpp" for a .bin re-stored in memory
    (see rwkvx.architecture.default_group_norm_eps).
    """

    def __init__(self, path: str, header: Header, records, convention: str = "official"):
        self.path = path
        self.convention = convention
        self.header = header
        self.tensors: dict[str, TensorInfo] = {}
        self._data: dict[str, np.ndarray] = {}
        offset = 24
        for name, shape, type_name, data in records:
            ttype = ggml_type(type_name)
            raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            ne = tuple(int(n) for n in shape[::-1])
            offset += 12 + 4 * len(ne) + len(name.encode("utf-8"))
            self.tensors[name] = TensorInfo(name, ttype, ne, offset, raw.nbytes)
            self._data[name] = raw
            offset += raw.nbytes

    def raw(self, name: str) -> np.ndarray:
        """The tensor's packed bytes in its type's layout (uint8, contiguous)."""
        return self._data[name]

    def array(self, name: str) -> np.ndarray:
        """The tensor as float32 of its NumPy shape (dequantized if needed)."""
        info = self.tensors[name]
        raw = self._data[name]
        if info.type.name == "FP32":
            return raw.view("<f4").reshape(info.shape)
        return dequantize(raw, info.type.name, info.n_elements).reshape(info.shape)

    def close(self) -> None:
        self._data = {}
        self.tensors = {}


def load_checkpoint(path: str | os.PathLike, dtype: str | None = None, head: str | None = None,
                    progress: ProgressCallback | None = None) -> InMemorySource:
    """Read a .pth/.safetensors RWKV checkpoint into memory as rwkv.cpp tensors, stored as dtype.

    dtype: None or "FP32" (default), "FP16", or Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 (quantized on load).
    head: with a quantized dtype, also quantize head.weight to this type (rwkv.cpp keeps it as is).
    Raises ModelFormatError (MissingTensorError) for a file that is not a loadable RWKV checkpoint.
    """
    dtype = checked_dtype(dtype)
    reader = open_checkpoint(path)
    try:
        converter = CheckpointConverter(reader)
        records = []
        for done, record in enumerate(converter.records(dtype, head), start=1):
            # FP32 tensors that need no rewrite stay views of the mapped file (it outlives close()).
            records.append(record)
            if progress is not None:
                progress(done, converter.n_tensors, record.name)
        return InMemorySource(reader.path, converter.header(dtype), records)
    finally:
        reader.close()


def open_model_source(path: str | os.PathLike, dtype: str | None = None):
    """The source Model runs, by suffix: .pth/.pt/.safetensors -> InMemorySource, else an rwkv.cpp .bin.

    dtype for a .bin: None keeps the file as it is (memory-mapped); "FP32"/"FP16"/quantized re-stores an
    FP32/FP16 file in memory (quantizing as rwkvx quantize would); asking for another type of a
    quantized file raises ModelFormatError (re-quantizing loses accuracy twice).
    """
    _check_regular_file(path)
    if os.fspath(path).lower().endswith(CHECKPOINT_SUFFIXES):
        return load_checkpoint(path, dtype=dtype)
    source = RwkvCppFile(path)
    if dtype is None or dtype == source.header.data_type.name:
        return source
    dtype = checked_dtype(dtype)
    if source.header.data_type.name not in ("FP32", "FP16"):
        raise ModelFormatError(
            f"{source.path}: cannot convert a {source.header.data_type.name} model to {dtype}; "
            f"start from its FP32 or FP16 file"
        )
    records = [stored_record(name, np.ascontiguousarray(source.array(name), dtype=np.float32), dtype, None,
                             source.path) for name in source.tensors]
    h = source.header
    return InMemorySource(source.path, Header(VERSION_1, h.n_vocab, h.n_embd, h.n_layer, ggml_type(dtype)), records,
                          convention=source.convention)


def _check_regular_file(path) -> None:
    """A model is a regular file: opening a FIFO would wait for a writer forever, and a device or a
    directory cannot be mapped. A path that does not exist is left to the reader's own message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise ModelFormatError(f"{os.fspath(path)}: not a regular file (a model is read from a file)")


def _expected_names(arch: str, n_layer: int) -> list[str]:
    """The rwkv.cpp tensor names an architecture reads (sizes do not matter for names)."""
    lora = {"time_maa_w1": 1, "time_decay_w1": 1, "w1": 1, "a1": 1, "g1": 1, "v1": 1}
    return list(expected_tensors(ModelShape(arch, 1, 1, n_layer, 1, 1, 1, tuple(lora.items()))))

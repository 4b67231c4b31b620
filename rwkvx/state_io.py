"""Saving and loading a State, tied to the model it belongs to.

File format (version 1). All integers little-endian, no padding between fields:

    offset  size  field
         0     8  magic b"RWKVXST\\x00"
         8     4  uint32 format version (1)
        12    16  architecture name, ASCII, NUL-padded ("v4", "v5.1", "v5.2", "v6", "v7")
        28     4  uint32 n_vocab
        32     4  uint32 n_embd
        36     4  uint32 n_layer
        40     4  uint32 n_ffn
        44     4  uint32 n_head
        48     4  uint32 head_size
        52     8  uint64 state_len: number of float32 values that follow the header
        60    32  weights fingerprint (SHA-256, see model_fingerprint)
        92     4  uint32 CRC-32 of the state data bytes
        96     -  state data: state_len float32, rwkv.cpp's state layout (rwkvx/reference/state.py)

load_state() refuses (StateError) a file whose magic, version, size or checksum is
wrong, or whose architecture, shapes or fingerprint differ from the model's; it reads
the header first, so a wrong file is refused without being read whole. Both functions
also raise StateError, with the OS's reason, when the file cannot be read or written.
"""
from __future__ import annotations

import hashlib
import os
import struct
import weakref
import zlib

import numpy as np

from .architecture import ModelShape
from .errors import StateError
from .state import State

MAGIC = b"RWKVXST\x00"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sI16s6IQ32sI")
assert HEADER.size == 96

# Bytes of each tensor hashed into the fingerprint: FINGERPRINT_SAMPLES windows of
# FINGERPRINT_WINDOW bytes spread evenly over the tensor (all of it when smaller).
# Enough to tell apart a fine-tune or a re-quantization, while reading ~1 KiB per tensor.
FINGERPRINT_SAMPLES = 16
FINGERPRINT_WINDOW = 64

_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_fingerprint(model) -> bytes:
    """SHA-256 over the model's shape, its tensor table and a sample of each tensor's bytes (32 bytes).

    Hashed, in file order: the architecture and shape, then per tensor its name, type, ne and
    byte size, then FINGERPRINT_SAMPLES evenly spaced FINGERPRINT_WINDOW-byte windows of its data.
    Computed once per Model object.
    """
    cached = _fingerprints.get(model)
    if cached is not None:
        return cached
    source = getattr(model, "source", None)
    if source is None or not hasattr(source, "tensors") or not hasattr(source, "raw"):
        raise StateError(f"cannot fingerprint {model!r}: it has no tensor source with a tensor table")
    h = hashlib.sha256()
    h.update(_shape_record(model.shape))
    for info in sorted(source.tensors.values(), key=lambda t: t.offset):
        h.update(f"{info.name}\0{info.type.name}\0{list(info.ne)}\0{info.nbytes}\n".encode())
        h.update(_sample(source.raw(info.name)))
    digest = h.digest()
    _fingerprints[model] = digest
    return digest


def _shape_record(shape) -> bytes:
    return (f"{shape.arch} {shape.n_vocab} {shape.n_embd} {shape.n_layer} {shape.n_ffn} {shape.n_head} "
            f"{shape.head_size} {list(shape.lora_dims)}\n").encode()


def _sample(raw: np.ndarray) -> bytes:
    """FINGERPRINT_SAMPLES windows spread evenly over a uint8 array (the whole array if it is small)."""
    n = raw.size
    if n <= FINGERPRINT_SAMPLES * FINGERPRINT_WINDOW:
        return raw.tobytes()
    starts = np.linspace(0, n - FINGERPRINT_WINDOW, FINGERPRINT_SAMPLES).astype(np.int64)
    return b"".join(raw[s:s + FINGERPRINT_WINDOW].tobytes() for s in starts)


def _checked_path(path) -> str:
    """path (str, bytes or os.PathLike) as a str, else StateError."""
    try:
        path = os.fsdecode(path)
    except TypeError:
        raise StateError(f"a state file path must be a str or os.PathLike, got {type(path).__name__}") from None
    if "\0" in path:
        raise StateError(f"state file path {path!r} contains a NUL character")
    return path


def _model_shape(model, what: str) -> ModelShape:
    """The shape of `model`, or StateError if it is not a model (None, a path, ...)."""
    shape = getattr(model, "shape", None)
    if not isinstance(shape, ModelShape):
        raise StateError(f"{what} needs the rwkvx Model the state belongs to, got {type(model).__name__}")
    return shape


def save_state(state: State, model, path: str | os.PathLike) -> None:
    """Write `state` (which must fit `model`) to `path` in the format above."""
    if not isinstance(state, State):
        raise StateError(f"save_state needs an rwkvx.State, got {type(state).__name__}")
    s = _model_shape(model, "save_state")
    path = _checked_path(path)
    state.check_fits(s)
    data = np.ascontiguousarray(state.data, dtype="<f4").tobytes()
    header = HEADER.pack(MAGIC, FORMAT_VERSION, s.arch.encode("ascii"), s.n_vocab, s.n_embd, s.n_layer, s.n_ffn,
                         s.n_head, s.head_size, s.state_len, model_fingerprint(model), zlib.crc32(data))
    tmp = f"{path}.tmp{os.getpid()}"
    # Write beside the target and rename, so an interrupted save never leaves a half-written state.
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # never created, or already gone
        raise StateError(f"{path}: cannot write state file: {e.strerror or e}") from e


def load_state(path: str | os.PathLike, model) -> State:
    """Read a state saved by save_state; raises StateError unless it belongs to `model`."""
    path = _checked_path(path)
    _model_shape(model, "load_state")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(HEADER.size)
            expected = _check_header(path, header, size, model)
            payload = f.read(expected)
    except OSError as e:
        raise StateError(f"{path}: cannot read state file: {e.strerror or e}") from e
    if len(payload) != expected:  # the file shrank while being read
        raise StateError(f"{path}: file has {HEADER.size + len(payload)} bytes, expected {HEADER.size + expected}; "
                         "truncated or corrupt")
    crc = HEADER.unpack_from(header)[-1]
    if zlib.crc32(payload) != crc:
        raise StateError(f"{path}: state data checksum mismatch (file corrupt)")
    data = np.frombuffer(payload, dtype="<f4").astype(np.float32)  # a writable native copy
    return State(data, model.shape, owner=model)


def _check_header(path: str, header: bytes, size: int, model) -> int:
    """Raise StateError unless `header` (the file's first bytes) is a state of `model` and the file's size
    (`size`, from the OS) fits it. Returns the number of state data bytes that follow the header."""
    if len(header) < HEADER.size or not header.startswith(MAGIC):
        raise StateError(f"{path}: not an rwkvx state file (expected magic {MAGIC!r} and a {HEADER.size}-byte "
                         f"header; file has {size} bytes)")
    (_, version, arch, n_vocab, n_embd, n_layer, n_ffn, n_head, head_size, state_len, fingerprint,
     _) = HEADER.unpack_from(header)
    if version != FORMAT_VERSION:
        raise StateError(f"{path}: state file format version {version}; this rwkvx reads version {FORMAT_VERSION}")
    saved = {"arch": arch.rstrip(b"\0").decode("ascii", "replace"), "n_vocab": n_vocab, "n_embd": n_embd,
             "n_layer": n_layer, "n_ffn": n_ffn, "n_head": n_head, "head_size": head_size}
    s = model.shape
    wrong = [f"{k} {v} (model has {getattr(s, k)})" for k, v in saved.items() if v != getattr(s, k)]
    if wrong:
        raise StateError(f"{path}: state belongs to another model: " + ", ".join(wrong))
    if fingerprint != model_fingerprint(model):
        raise StateError(f"{path}: state was saved from a model with the same shape but different weights "
                         f"(fingerprint {fingerprint.hex()[:16]}..., this model "
                         f"{model_fingerprint(model).hex()[:16]}...); load it with the model it came from")
    if state_len != s.state_len or size != HEADER.size + 4 * s.state_len:
        raise StateError(f"{path}: file has {size} bytes, expected {HEADER.size + 4 * s.state_len} "
                         f"({s.state_len} float32 after the header); truncated or corrupt")
    return 4 * s.state_len

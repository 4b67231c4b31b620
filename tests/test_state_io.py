"""State files: save -> load -> continue is bit-identical; files from other models or corrupt files are refused."""
from __future__ import annotations

import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import rwkvx
from rwkvx.errors import StateError
from rwkvx.formats.rwkvcpp import RwkvCppFile
from rwkvx.state_io import load_state, model_fingerprint, save_state

TINY = Path(__file__).parent / "data" / "tiny"
MODELS = ["4v0-660K-FP32", "5v1-730K-FP32", "5v2-730K-FP32", "6v0-1m-FP32", "7v0-834K-FP32", "7v0-834K-Q5_1"]
PROMPT = list(b"In the beginning was the word, ")
CONTINUATION = list(b"and the word was with")


def load(name):
    return rwkvx.load(TINY / f"tiny-rwkv-{name}.bin", threads=1)


@pytest.fixture(scope="module")
def v7():
    return load("7v0-834K-FP32")


@pytest.fixture
def saved(v7, tmp_path):
    _, state = v7.forward(PROMPT, logits=None)
    path = tmp_path / "state.bin"
    save_state(state, v7, path)
    return state, path


@pytest.mark.parametrize("name", MODELS)
def test_save_load_continue_is_bit_identical(name, tmp_path):
    model = load(name)
    _, state = model.forward(PROMPT, logits=None)
    path = tmp_path / "s.bin"
    save_state(state, model, path)
    loaded = load_state(path, model)
    assert loaded.data.dtype == np.float32 and loaded.data.flags.writeable
    assert np.array_equal(loaded.data, state.data)
    expected, _ = model.forward(CONTINUATION, state, logits="all")
    got, _ = model.forward(CONTINUATION, loaded, logits="all")
    assert np.array_equal(got, expected)


def test_file_layout_is_as_documented(v7, saved):
    """Read the header at the offsets the rwkvx/state_io.py docstring gives."""
    state, path = saved
    blob = path.read_bytes()
    s = v7.shape
    assert blob[0:8] == b"RWKVXST\x00"
    assert struct.unpack_from("<I", blob, 8)[0] == 1
    assert blob[12:28].rstrip(b"\0") == b"v7"
    assert struct.unpack_from("<6I", blob, 28) == (s.n_vocab, s.n_embd, s.n_layer, s.n_ffn, s.n_head, s.head_size)
    assert struct.unpack_from("<Q", blob, 52)[0] == s.state_len
    assert blob[60:92] == model_fingerprint(v7)
    assert struct.unpack_from("<I", blob, 92)[0] == zlib.crc32(blob[96:])
    assert blob[96:] == state.data.astype("<f4").tobytes()


def test_other_architecture_is_refused(saved):
    _, path = saved
    with pytest.raises(StateError, match="another model.*arch v7 .model has v4"):
        load_state(path, load("4v0-660K-FP32"))


def test_same_shape_other_weights_is_refused(saved):
    _, path = saved
    other = load("7v0-834K-Q5_1")
    assert other.shape == rwkvx.load(TINY / "tiny-rwkv-7v0-834K-FP32.bin").shape
    with pytest.raises(StateError, match="different weights"):
        load_state(path, other)


def test_fine_tuned_copy_is_refused_identical_copy_is_accepted(saved, tmp_path):
    state, path = saved
    source = TINY / "tiny-rwkv-7v0-834K-FP32.bin"
    same = tmp_path / "same.bin"
    shutil.copyfile(source, same)
    assert np.array_equal(load_state(path, rwkvx.load(same)).data, state.data)

    # Change one weight at the start of one matrix (a sampled window): the fingerprint must change.
    tuned = tmp_path / "tuned.bin"
    shutil.copyfile(source, tuned)
    info = RwkvCppFile(source).tensors["blocks.5.ffn.key.weight"]
    with open(tuned, "r+b") as f:
        f.seek(info.offset)
        value = struct.unpack("<f", f.read(4))[0]
        f.seek(info.offset)
        f.write(struct.pack("<f", value + 0.5))
    with pytest.raises(StateError, match="different weights"):
        load_state(path, rwkvx.load(tuned))


def corrupt(path: Path, tmp_path: Path, edit) -> Path:
    blob = bytearray(path.read_bytes())
    blob = edit(blob)
    out = tmp_path / "corrupt.bin"
    out.write_bytes(bytes(blob))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda b: b[:50], "not an rwkvx state file"),
    (lambda b: b"X" + b[1:], "not an rwkvx state file"),
    (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "format version 99"),
    (lambda b: b[:-4], "truncated or corrupt"),
    (lambda b: b + b"\0\0\0\0", "truncated or corrupt"),
    (lambda b: b[:200] + bytes([b[200] ^ 0x40]) + b[201:], "checksum"),
    (lambda b: b[:32] + struct.pack("<I", 65) + b[36:], "n_embd 65 .model has 64"),
])
def test_corrupt_files_are_refused(v7, saved, tmp_path, edit, message):
    _, path = saved
    with pytest.raises(StateError, match=message):
        load_state(corrupt(path, tmp_path, edit), v7)


def test_saving_a_state_of_another_model_is_refused(v7, tmp_path):
    _, state = load("4v0-660K-FP32").forward(PROMPT, logits=None)
    with pytest.raises(StateError):
        save_state(state, v7, tmp_path / "s.bin")
    with pytest.raises(StateError):
        save_state(state.data, v7, tmp_path / "s.bin")


def test_missing_file_is_a_state_error(v7, tmp_path):
    with pytest.raises(StateError, match="nope.bin: cannot read state file: No such file"):
        load_state(tmp_path / "nope.bin", v7)


# ---- robustness: file system errors, bad arguments, read-only buffers ---------------------------------


def test_file_system_errors_and_bad_arguments_are_state_errors(v7, saved, tmp_path):
    _, path = saved
    with pytest.raises(StateError, match=r"nope\.bin: cannot read state file: No such file or directory"):
        rwkvx.State.load(tmp_path / "nope.bin", v7)
    with pytest.raises(StateError, match=re.escape(f"{tmp_path}: cannot read state file: Is a directory")):
        rwkvx.State.load(tmp_path, v7)
    with pytest.raises(StateError, match="needs the rwkvx Model .* got NoneType"):
        rwkvx.State.load(path, None)
    with pytest.raises(StateError, match="path must be a str or os.PathLike, got NoneType"):
        rwkvx.State.load(None, v7)
    target = tmp_path / "no" / "such" / "dir" / "s.bin"
    with pytest.raises(StateError, match=r"s\.bin: cannot write state file: No such file or directory") as e:
        v7.new_state().save(target)
    assert isinstance(e.value.__cause__, FileNotFoundError)
    with pytest.raises(StateError, match="needs the rwkvx Model .* got str"):
        save_state(v7.new_state(), "v7", tmp_path / "s.bin")
    with pytest.raises(StateError, match="path must be a str or os.PathLike, got int"):
        v7.new_state().save(3)


def test_a_failed_save_leaves_no_partial_file(v7, tmp_path):
    (tmp_path / "taken").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(StateError, match="cannot write state file"):
        v7.new_state().save(tmp_path / "taken")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_loading_a_big_or_endless_file_reads_only_its_header(v7):
    """A wrong file is refused from its first 96 bytes, not read whole (/dev/zero never ends)."""
    with pytest.raises(StateError, match="not an rwkvx state file"):
        load_state(v7.path, v7)
    if Path("/dev/zero").exists():
        with pytest.raises(StateError, match="not an rwkvx state file"):
            load_state("/dev/zero", v7)


def test_read_only_state_buffers_are_refused(v7, tmp_path):
    """The model writes a state in place: a read-only buffer is a StateError, not Cython's ValueError."""
    frozen = v7.new_state().data.copy()
    frozen.setflags(write=False)
    with pytest.raises(StateError, match="read-only.*writable array.*copy"):
        rwkvx.State(frozen, v7.shape)
    mapped = tmp_path / "state.raw"
    v7.new_state().data.tofile(mapped)
    with pytest.raises(StateError, match="read-only"):
        rwkvx.State(np.memmap(mapped, dtype=np.float32, mode="r"), v7.shape)
    # Made read-only after construction: refused when used, before the kernels see it.
    s = v7.new_state()
    s.data.setflags(write=False)
    for call in (lambda: v7.forward([1], s, inplace=True), lambda: v7.forward_batch([1], [s], inplace=True),
                 lambda: v7.forward([1], s)):
        with pytest.raises(StateError, match="read-only"):
            call()
    assert s.copy().data.flags.writeable  # the way out the message gives
    v7.forward([1], s.copy(), inplace=True)
    # A buffer swapped for one of the wrong size is refused too, not passed on to the kernels.
    s = v7.new_state()
    object.__setattr__(s, "_data", np.zeros(3, np.float32))
    with pytest.raises(StateError, match=rf"shape \({v7.shape.state_len},\)"):
        v7.forward([1], s, inplace=True)


def test_layer_index_errors_are_state_errors(v7):
    s = v7.new_state()
    assert s.layer(v7.shape.n_layer - 1).att_xx.shape == (v7.shape.n_embd,)
    assert s.layer(np.int64(0)).att_xx.shape == (v7.shape.n_embd,)
    for bad in (v7.shape.n_layer, -1, 99):
        with pytest.raises(StateError, match=rf"layer {bad} out of range \[0, {v7.shape.n_layer}\)"):
            s.layer(bad)
    for bad in (1.5, "1", None):
        with pytest.raises(StateError, match="layer index must be an int"):
            s.layer(bad)

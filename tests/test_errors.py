"""Bad input gets a clear rwkvx exception naming what is wrong; never a crash or a silent wrong answer."""
import os
import struct

import numpy as np
import pytest

import rwkvx
from rwkvx.errors import MissingTensorError, ModelFormatError, RWKVError, StateError, TokenError
from rwkvx.formats.rwkvcpp import RwkvCppFile

from conftest import TINY

SOURCE = TINY / "tiny-rwkv-5v2-730K-Q5_1.bin"  # quantized, so a type id change is meaningful


@pytest.fixture(scope="module")
def original():
    return SOURCE.read_bytes()


@pytest.fixture(scope="module")
def layout():
    """(offset of the record, offset of its data) of every tensor of the source file."""
    f = RwkvCppFile(SOURCE)
    return {name: info for name, info in f.tensors.items()}


def write(tmp_path, data, name="model.bin"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def record_offset(info):
    """Offset of a tensor's record header: data offset minus key and dims and 12 header bytes."""
    return info.offset - len(info.name.encode()) - 4 * len(info.ne) - 12


@pytest.mark.parametrize("cut", [0, 3, 23, 24, 30, 1000, 100_000, -1, -7])
def test_truncated_file(tmp_path, original, cut):
    size = cut if cut >= 0 else len(original) + cut
    path = write(tmp_path, original[:size])
    with pytest.raises(ModelFormatError) as e:
        rwkvx.load(path)
    assert str(path) in str(e.value)


def test_truncated_inside_a_tensor_names_it(tmp_path, original, layout):
    info = layout["blocks.3.att.key.weight"]
    path = write(tmp_path, original[: info.offset + 5])
    with pytest.raises(ModelFormatError, match=r"blocks\.3\.att\.key\.weight.*truncated"):
        rwkvx.load(path)


def test_wrong_magic(tmp_path, original):
    data = bytearray(original)
    data[0] ^= 0xFF
    with pytest.raises(ModelFormatError, match="magic"):
        rwkvx.load(write(tmp_path, data))


def test_not_a_model_at_all(tmp_path):
    with pytest.raises(ModelFormatError, match="magic"):
        rwkvx.load(write(tmp_path, b"PK\x03\x04" + bytes(100)))


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot open"):
        rwkvx.load(tmp_path / "nope.bin")


@pytest.mark.parametrize("version", [99, 102, 0xFFFFFFFF])
def test_unsupported_version(tmp_path, original, version):
    data = bytearray(original)
    struct.pack_into("<I", data, 4, version)
    with pytest.raises(ModelFormatError, match=f"version {version}"):
        rwkvx.load(write(tmp_path, data))


def test_quantized_file_of_version_100_is_refused(tmp_path, original):
    data = bytearray(original)
    struct.pack_into("<I", data, 4, 100)
    with pytest.raises(ModelFormatError, match="re-quantize"):
        rwkvx.load(write(tmp_path, data))


@pytest.mark.parametrize("type_id,message", [(5, "Q4_2"), (13, "Q4_K"), (77, "unknown data type")])
def test_wrong_tensor_type_id(tmp_path, original, layout, type_id, message):
    info = layout["blocks.0.att.key.weight"]
    data = bytearray(original)
    struct.pack_into("<I", data, record_offset(info) + 8, type_id)
    with pytest.raises(ModelFormatError, match=message) as e:
        rwkvx.load(write(tmp_path, data))
    assert "blocks.0.att.key.weight" in str(e.value)


def test_type_change_that_stays_in_bounds_is_caught_by_size(tmp_path, original, layout):
    """Q5_1 -> Q8_0 makes the tensor claim more bytes: the tensor table stops matching the file."""
    info = layout["blocks.0.att.key.weight"]
    data = bytearray(original)
    struct.pack_into("<I", data, record_offset(info) + 8, 9)
    with pytest.raises(ModelFormatError):
        rwkvx.load(write(tmp_path, data))


def test_lying_shape_in_tensor_table(tmp_path, original, layout):
    """A tensor that claims a bigger shape runs past its data into the next record, which then fails."""
    info = layout["ln_out.weight"]  # FP32 vector (64,)
    data = bytearray(original)
    struct.pack_into("<I", data, record_offset(info) + 12, 63)  # 63 floats: the file no longer parses
    with pytest.raises(ModelFormatError):
        rwkvx.load(write(tmp_path, data))


def test_header_that_disagrees_with_the_tensors(tmp_path, original):
    data = bytearray(original)
    struct.pack_into("<I", data, 12, 128)  # n_embd 64 -> 128
    with pytest.raises(ModelFormatError, match="n_embd"):
        rwkvx.load(write(tmp_path, data))


def test_block_size_violation(tmp_path, original, layout):
    info = layout["blocks.0.att.key.weight"]  # Q5_1 rows of 64
    data = bytearray(original)
    struct.pack_into("<I", data, record_offset(info) + 12, 48)  # 48 is not a multiple of 32
    with pytest.raises(ModelFormatError, match="block size"):
        rwkvx.load(write(tmp_path, data))


def test_missing_tensor(tmp_path, original, layout):
    """Renaming a tensor (same length) makes it missing for the architecture."""
    info = layout["blocks.2.ffn.value.weight"]
    data = bytearray(original)
    start = info.offset - len(info.name)
    data[start:start + len(info.name)] = b"blocks.2.ffn.vaxue.weight"
    with pytest.raises(MissingTensorError, match=r"blocks\.2\.ffn\.value\.weight"):
        rwkvx.load(write(tmp_path, data))


def test_tensor_with_the_wrong_shape_for_the_architecture(tmp_path, layout):
    """A consistent file whose gate matrix is 64x32 instead of 64x64 (rebuilt record by record)."""
    f = RwkvCppFile(SOURCE)
    out = bytearray(struct.pack("<6I", 0x67676D66, 101, 256, 64, 12, 8))
    for name, info in f.tensors.items():
        raw = bytes(f.raw(name))
        ne = list(info.ne)
        if name == "blocks.4.att.gate.weight":
            ne = [ne[0], ne[1] // 2]
            raw = raw[: len(raw) // 2]
        key = name.encode()
        out += struct.pack(f"<3I{len(ne)}I", len(ne), len(key), info.type.id, *ne) + key + raw
    with pytest.raises(ModelFormatError, match=r"blocks\.4\.att\.gate\.weight.*shape"):
        rwkvx.load(write(tmp_path, out))


def rebuilt(source, reshape):
    """source's records rewritten, each tensor's ne given by reshape(name, ne), its bytes unchanged."""
    f = RwkvCppFile(source)
    h = f.header
    out = bytearray(struct.pack("<6I", 0x67676D66, h.version, h.n_vocab, h.n_embd, h.n_layer, h.data_type.id))
    for tensor, info in f.tensors.items():
        ne = reshape(tensor, list(info.ne))
        key = tensor.encode()
        out += struct.pack(f"<3I{len(ne)}I", len(ne), len(key), info.type.id, *ne) + key + bytes(f.raw(tensor))
    return out


@pytest.mark.parametrize("source, name", [
    (SOURCE, "head.weight"), (SOURCE, "blocks.0.att.key.weight"), (SOURCE, "blocks.3.ffn.value.weight"),
    (TINY / "tiny-rwkv-7v0-834K-FP32.bin", "blocks.0.att.w1"),
])
@pytest.mark.parametrize("where", ["innermost", "outermost"])
def test_matrix_with_an_extra_singleton_axis(tmp_path, source, name, where):
    """The same bytes with one more axis of length 1: innermost (ggml ne = (1, n_in, n_rows)) it would make
    every row one weight long, so the matrix must have its shape exactly (vectors may differ in singleton
    axes: files disagree on those)."""
    def extra_axis(tensor, ne):
        if tensor != name:
            return ne
        return [1] + ne if where == "innermost" else ne + [1]

    out = rebuilt(source, extra_axis)
    with pytest.raises(ModelFormatError, match=name.replace(".", "[.]")):
        rwkvx.load(write(tmp_path, out))


@pytest.mark.parametrize("source, name, new_ne", [
    (SOURCE, "emb.weight", lambda ne: ne + [1]),  # 3 axes where 2 are read as (n_vocab, n_embd)
    (TINY / "tiny-rwkv-7v0-834K-FP32.bin", "blocks.0.att.r_k", lambda ne: [ne[0] * ne[1]]),  # (n_head, S)
])
def test_a_tensor_whose_dimensions_are_read_must_have_their_number(tmp_path, source, name, new_ne):
    data = rebuilt(source, lambda tensor, ne: new_ne(ne) if tensor == name else ne)
    with pytest.raises(ModelFormatError, match=rf"{name.replace('.', '[.]')}.*expected 2 axes"):
        rwkvx.load(write(tmp_path, data))


def test_dimensions_whose_product_overflows_int64(tmp_path, original, layout):
    """2**32-1 squared and more: Python ints, so the size is huge rather than negative, and refused."""
    info = layout["emb.weight"]
    data = bytearray(original)
    struct.pack_into("<II", data, record_offset(info) + 12, 2**32 - 1, 2**32 - 1)
    with pytest.raises(ModelFormatError, match="emb.weight.*needs"):
        rwkvx.load(write(tmp_path, data))


def test_duplicate_tensor(tmp_path, original, layout):
    info = layout["ln_out.bias"]
    start = record_offset(info)
    record = original[start: info.offset + info.nbytes]
    with pytest.raises(ModelFormatError, match="twice"):
        rwkvx.load(write(tmp_path, original + record))


@pytest.mark.parametrize("cut", range(24, 4000, 97))
def test_many_truncations_never_crash(tmp_path, original, cut):
    with pytest.raises(ModelFormatError):
        rwkvx.load(write(tmp_path, original[:cut]))


@pytest.fixture(scope="module")
def model():
    return rwkvx.load(TINY / "tiny-rwkv-7v0-834K-Q5_1.bin")


@pytest.mark.parametrize("tokens", [256, -1, [1, 2, 300], [2**40], [0, -5]])
def test_token_out_of_range(model, tokens):
    with pytest.raises(TokenError, match="out of range"):
        model.forward(tokens)


@pytest.mark.parametrize("tokens", [[], [1.5], "abc", [[1, 2]]])
def test_tokens_of_the_wrong_kind(model, tokens):
    with pytest.raises(TokenError):
        model.forward(tokens)


def test_bad_token_leaves_state_untouched(model):
    _, state = model.forward([1, 2, 3])
    before = state.data.copy()
    with pytest.raises(TokenError):
        model.forward([4, 999], state, inplace=True)
    np.testing.assert_array_equal(state.data, before)


def test_state_from_another_model(model):
    other = rwkvx.load(TINY / "tiny-rwkv-5v2-730K-FP32.bin")
    with pytest.raises(StateError, match="another model"):
        model.forward([1], other.new_state())


def test_state_that_is_not_a_state(model):
    with pytest.raises(StateError):
        model.forward([1], np.zeros(50688, dtype=np.float32))


def test_bad_logits_mode(model):
    with pytest.raises(ValueError, match="logits"):
        model.forward([1], logits="first")


@pytest.mark.parametrize("call, match", [
    (lambda m: m.forward([1], logits="ALL"), "logits must be one of"),
    (lambda m: m.forward_batch([1], [None], logits="all"), "logits must be True or False"),
    (lambda m: rwkvx.load(m.path, threads=0), "threads"),
    (lambda m: rwkvx.load(m.path, pack="yes"), "pack"),
    (lambda m: rwkvx.load(m.path, offload=5), "offload must be an rwkvx.Offload"),
    (lambda m: rwkvx.load(m.path, group_norm_eps=2.0), "group_norm_eps"),
    (lambda m: rwkvx.perplexity(m, [1, 2], chunk=0), "chunk"),
    (lambda m: rwkvx.load(m.path, dtype="q5_1"), "dtype must be one of"),
])
def test_bad_arguments_raise_an_rwkvx_error_that_is_a_value_error(model, call, match):
    with pytest.raises(rwkvx.ArgumentError, match=match) as raised:
        call(model)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, RWKVError)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["model.bin", "model.safetensors"])
def test_a_fifo_is_refused_instead_of_waiting_for_a_writer(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(ModelFormatError, match="not a regular file"):
        rwkvx.load(fifo)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="not a regular file"):
        rwkvx.load(tmp_path)


def test_forward_batch_without_a_sequence_of_states(model):
    with pytest.raises(TokenError, match="sequence of states"):
        model.forward_batch([1, 2], None)


def test_all_errors_share_a_base_class():
    for name in ("ArgumentError", "ModelFormatError", "MissingTensorError", "TokenError", "StateError", "SamplingError",
                 "BackendError", "VocabError", "MissingDependencyError", "GPUUnavailableError"):
        assert issubclass(getattr(rwkvx, name), RWKVError), name

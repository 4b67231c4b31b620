"""Corrupt .safetensors / .pth checkpoints get a ModelFormatError naming the file and what is wrong.

Each test writes a small valid checkpoint, breaks it in one way (most of them found by fuzzing the
loaders: a malformed header field, a damaged zip archive, a tensor layout that repeats its storage's
elements), and checks the message. None may escape as a bare Python exception or exhaust memory.
"""
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest

import rwkvx
from rwkvx.errors import MissingTensorError, ModelFormatError
from rwkvx.formats import pytorch
from rwkvx.formats.checkpoint import load_checkpoint
from rwkvx.formats.pytorch import PthFile, write_pth
from rwkvx.formats.safetensors import read_safetensors, write_safetensors
from rwkvx.testing import RandomCheckpoint

SIZES = dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16)


def small(arch):
    return RandomCheckpoint.of(arch, **SIZES)


# ---------------------------------------------------------------- .safetensors headers


def safetensors_with_header(tmp_path, edit):
    """A valid v4 .safetensors whose JSON header is passed through edit(header) and written back."""
    data = open(small("v4").write_safetensors(tmp_path / "valid.safetensors"), "rb").read()
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    return path


def test_safetensors_header_nested_too_deeply(tmp_path):
    path = tmp_path / "nested.safetensors"
    text = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(ModelFormatError, match="header nests too deeply"):
        read_safetensors(path)


def test_safetensors_dtype_that_is_not_a_string(tmp_path):
    path = safetensors_with_header(tmp_path, lambda h: h["emb.weight"].update(dtype=["F32"]))
    with pytest.raises(ModelFormatError, match=r"'emb.weight': dtype \['F32'\] is not supported"):
        read_safetensors(path)


def test_safetensors_dimension_beyond_64_bits(tmp_path):
    path = safetensors_with_header(tmp_path, lambda h: h["emb.weight"].update(shape=[2**64]))
    with pytest.raises(ModelFormatError, match=r"'emb.weight': data .* does not hold F32 \[18446744073709551616\]"):
        read_safetensors(path)


def test_safetensors_shape_whose_int64_product_wraps_to_zero(tmp_path):
    def empty_data_huge_shape(header):
        begin = header["blocks.0.ln1.weight"]["data_offsets"][0]
        header["blocks.0.ln1.weight"].update(shape=[2**32, 2**32], data_offsets=[begin, begin])

    path = safetensors_with_header(tmp_path, empty_data_huge_shape)
    with pytest.raises(ModelFormatError, match=r"'blocks.0.ln1.weight': data .* does not hold F32 "
                                               r"\[4294967296, 4294967296\] \(73786976294838206464 bytes\)"):
        read_safetensors(path)


def test_safetensors_boolean_dimension(tmp_path):
    path = safetensors_with_header(tmp_path, lambda h: h["blocks.0.ln1.weight"].update(shape=[True, 64]))
    with pytest.raises(ModelFormatError, match=r"'blocks.0.ln1.weight': malformed shape \(True, 64\)"):
        read_safetensors(path)


def test_safetensors_empty_tensor_numpy_cannot_shape(tmp_path):
    def empty_tensor_too_big_for_numpy(header):
        begin = header["blocks.0.ln1.weight"]["data_offsets"][0]
        header["blocks.0.ln1.weight"].update(shape=[0, 2**62], data_offsets=[begin, begin])

    path = safetensors_with_header(tmp_path, empty_tensor_too_big_for_numpy)
    with pytest.raises(ModelFormatError, match=r"'blocks.0.ln1.weight': shape \(0, 4611686018427387904\) "
                                               r"is too large for a NumPy array"):
        read_safetensors(path)


# ---------------------------------------------------------------- the tensor that states the head count

HEAD_COUNT_TENSOR = {"v5.1": "blocks.0.att.time_decay", "v5.2": "blocks.0.att.time_faaaa",
                     "v6": "blocks.0.att.time_faaaa", "v7": "blocks.0.att.r_k"}


def write_checkpoint(path, shapes, get_array):
    if str(path).endswith(".safetensors"):
        write_safetensors(path, shapes, get_array)
    else:
        write_pth(path, shapes, get_array)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("arch", list(HEAD_COUNT_TENSOR))
def test_missing_head_count_tensor_is_named(tmp_path, arch, suffix):
    ckpt = small(arch)
    absent = HEAD_COUNT_TENSOR[arch]
    shapes = {name: shape for name, shape in ckpt.shapes.items() if name != absent}
    path = write_checkpoint(tmp_path / f"missing{suffix}", shapes, ckpt.array)
    with pytest.raises(MissingTensorError, match=f"RWKV {arch} checkpoint needs '{absent}'"):
        load_checkpoint(path)


@pytest.mark.parametrize("arch", ["v5.2", "v6", "v7"])
def test_head_count_tensor_that_is_a_scalar(tmp_path, arch):
    ckpt = small(arch)
    name = HEAD_COUNT_TENSOR[arch]
    shapes = {**ckpt.shapes, name: ()}
    path = write_checkpoint(tmp_path / "scalar.safetensors", shapes,
                            lambda n: ckpt.array(n) if n != name else ckpt.array(n)[0, 0])
    with pytest.raises(ModelFormatError, match=rf"{name} has shape \(\), expected \(n_head, head_size\)"):
        load_checkpoint(path)


# ---------------------------------------------------------------- damaged .pth zip archives

CENTRAL_MAGIC = b"PK\x01\x02"
# offsets of fields in a zip central-directory record
VERSION_NEEDED, FLAGS, METHOD, LOCAL_HEADER_OFFSET, NAME = 6, 8, 10, 42, 46
UTF8_NAME_FLAG = 0x800


def central_record(blob, name):
    """Offset of the central-directory record of entry `name`."""
    at = blob.find(CENTRAL_MAGIC)
    while at != -1:
        (name_len,) = struct.unpack_from("<H", blob, at + 28)
        if blob[at + NAME : at + NAME + name_len] == name.encode():
            return at
        at = blob.find(CENTRAL_MAGIC, at + 1)
    raise KeyError(name)


def pth_with_field(tmp_path, entry, field, fmt, value):
    """A valid v5.2 .pth whose central-directory record of `entry` has `field` set to value."""
    blob = bytearray(open(small("v5.2").write_pth(tmp_path / "valid.pth"), "rb").read())
    struct.pack_into(fmt, blob, central_record(blob, entry) + field, value)
    path = tmp_path / "corrupt.pth"
    path.write_bytes(blob)
    return path


def test_pth_local_header_past_the_end(tmp_path):
    size = os.path.getsize(small("v5.2").write_pth(tmp_path / "valid.pth"))
    path = pth_with_field(tmp_path, "archive/data/3", LOCAL_HEADER_OFFSET, "<I", size - 10)
    with pytest.raises(ModelFormatError, match=r"corrupt.pth: zip entry 'archive/data/3' has its local header "
                                               r"at byte \d+, outside the \d+-byte file"):
        load_checkpoint(path)


def test_pth_unknown_compression_method(tmp_path):
    path = pth_with_field(tmp_path, "archive/data/3", METHOD, "<H", 99)
    with pytest.raises(ModelFormatError, match="cannot read 'archive/data/3': That compression method is not "
                                               "supported"):
        load_checkpoint(path)


@pytest.mark.parametrize("entry, method, error", [
    ("archive/data/3", zipfile.ZIP_DEFLATED, "Error -3 while decompressing data"),  # zlib.error
    ("archive/data/0", zipfile.ZIP_LZMA, "Invalid or unsupported options"),  # lzma.LZMAError
])
def test_pth_stored_entry_marked_compressed(tmp_path, entry, method, error):
    path = pth_with_field(tmp_path, entry, METHOD, "<H", method)
    with pytest.raises(ModelFormatError, match=f"cannot read '{entry}': {error}"):
        load_checkpoint(path)


def test_pth_zip_version_too_new(tmp_path):
    path = pth_with_field(tmp_path, "archive/data/3", VERSION_NEEDED, "<H", 219)
    with pytest.raises(ModelFormatError, match="corrupt zip archive: zip file version 21.9"):
        load_checkpoint(path)


def test_pth_entry_name_marked_utf8_that_is_not(tmp_path):
    blob = bytearray(open(small("v5.2").write_pth(tmp_path / "valid.pth"), "rb").read())
    at = central_record(blob, "archive/data/3")
    (flags,) = struct.unpack_from("<H", blob, at + FLAGS)
    struct.pack_into("<H", blob, at + FLAGS, flags | UTF8_NAME_FLAG)
    blob[at + NAME + len("archive/")] = 0xFF  # never a byte of UTF-8
    path = tmp_path / "corrupt.pth"
    path.write_bytes(blob)
    with pytest.raises(ModelFormatError, match="corrupt zip archive: 'utf-8' codec can't decode byte 0xff"):
        load_checkpoint(path)


def test_pth_byteorder_with_a_broken_local_header(tmp_path):
    blob = bytearray(open(small("v5.2").write_pth(tmp_path / "valid.pth"), "rb").read())
    (local,) = struct.unpack_from("<I", blob, central_record(blob, "archive/byteorder") + LOCAL_HEADER_OFFSET)
    blob[local : local + 2] = b"XX"
    path = tmp_path / "corrupt.pth"
    path.write_bytes(blob)
    with pytest.raises(ModelFormatError, match="cannot read 'archive/byteorder': Bad magic number"):
        load_checkpoint(path)


# ---------------------------------------------------------------- tensor layouts that repeat elements


def pth_with_layout(tmp_path, size, stride):
    """A valid v4 .pth whose emb.weight (256, 64) is declared with another size and stride."""
    path = small("v4").write_pth(tmp_path / "valid.pth")
    original = pytorch._pickle_ints_tuple((256, 64)) + pytorch._pickle_ints_tuple((64, 1))
    changed = pytorch._pickle_ints_tuple(size) + pytorch._pickle_ints_tuple(stride)
    out = tmp_path / "layout.pth"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "archive/data.pkl":
                assert data.index(original) < data.index(b"head.weight")  # the first (256, 64) is emb.weight
                data = data.replace(original, changed, 1)
            zout.writestr(info, data)
    return out


@pytest.mark.parametrize("size, stride", [((2**28, 64), (0, 1)),  # 64 GiB over a 64 KiB storage
                                          ((256, 64), (0, 1)),  # every row the first one
                                          ((16321, 64), (1, 1))])  # rows overlapping, 64x the storage
def test_pth_tensor_repeating_its_storage_is_refused_on_open(tmp_path, size, stride):
    path = pth_with_layout(tmp_path, size, stride)
    # refused while the archive is opened: nothing has been materialized yet
    with pytest.raises(ModelFormatError, match=rf"tensor 'emb.weight': size \({size[0]}, 64\) with stride "
                                               rf"\({stride[0]}, 1\) repeats elements of its storage"):
        PthFile(path)


def test_pth_stride0_tensor_allocates_nothing(tmp_path):
    path = pth_with_layout(tmp_path, (2**28, 64), (0, 1))
    limit = 4 << 30  # the 64 GiB the tensor declares cannot be had
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
        from rwkvx.formats.checkpoint import load_checkpoint
        try:
            load_checkpoint({str(path)!r})
        except BaseException as e:
            print(type(e).__name__, e)
    """)
    root = os.path.dirname(os.path.dirname(rwkvx.__file__))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ModelFormatError") and "repeats elements" in run.stdout, run.stdout

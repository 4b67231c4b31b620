"""rwkv.cpp .bin writer: format round trip, atomic writes, refusal to overwrite the source."""
import os
import struct

import numpy as np
import pytest

from rwkvx.errors import ModelFormatError
from rwkvx.formats import writer
from rwkvx.formats.rwkvcpp import RwkvCppFile
from rwkvx.formats.writer import TensorRecord, write_rwkvcpp

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny")
HEADER = dict(n_vocab=256, n_embd=64, n_layer=2, data_type="Q5_1")


def synthetic_records(rng):
    """Records of every rank and of FP32, FP16 and quantized types (random bytes are valid Q5_1 data)."""
    return [
        TensorRecord("emb.weight", (256, 64), "FP32", rng.standard_normal((256, 64)).astype(np.float32)),
        TensorRecord("blocks.0.ln1.weight", (64,), "FP32", rng.standard_normal(64).astype(np.float32)),
        ("blocks.0.att.key.weight", (64, 64), "FP16", rng.standard_normal((64, 64)).astype(np.float16)),
        ("blocks.0.att.value.weight", (96, 64), "Q5_1", rng.integers(0, 256, 96 * 2 * 24, dtype=np.uint8)),
        ("blocks.0.att.time_decay", (8, 8, 1), "FP32", bytes(rng.integers(0, 256, 256, dtype=np.uint8))),
        ("blocks.0.ffn.key.weight", (128, 64), "Q4_0", bytearray(128 * 2 * 18)),
    ]


def test_round_trip_through_reader(tmp_path):
    rng = np.random.default_rng(0)
    records = synthetic_records(rng)
    path = tmp_path / "model.bin"
    write_rwkvcpp(path, records, **HEADER)
    raw = path.read_bytes()
    assert raw[:4] == b"fmgg"  # magic 0x67676d66, little-endian
    assert struct.unpack_from("<6I", raw) == (0x67676D66, 101, 256, 64, 2, 8)
    f = RwkvCppFile(path)
    assert (f.header.version, f.header.n_vocab, f.header.n_embd, f.header.n_layer) == (101, 256, 64, 2)
    assert f.header.data_type.name == "Q5_1"
    assert list(f.tensors) == [r[0] for r in records]
    for name, shape, type_name, data in records:
        info = f.tensors[name]
        assert (info.shape, info.type.name) == (shape, type_name)
        assert f.raw(name).tobytes() == np.asarray(memoryview(data)).tobytes()
    assert np.array_equal(f.array("emb.weight"), records[0].data)
    assert np.array_equal(f.array("blocks.0.att.key.weight"), records[2][3].astype(np.float32))
    assert os.listdir(tmp_path) == ["model.bin"]


@pytest.mark.parametrize("model", ["tiny-rwkv-5v2-730K-FP16.bin", "tiny-rwkv-7v0-834K-Q5_1.bin"])
def test_rewriting_a_model_reproduces_it_byte_for_byte(tmp_path, model):
    src = RwkvCppFile(os.path.join(TINY, model))
    out = tmp_path / "copy.bin"
    records = [(i.name, i.shape, i.type.name, src.raw(i.name)) for i in src.tensors.values()]
    h = src.header
    write_rwkvcpp(out, records, n_vocab=h.n_vocab, n_embd=h.n_embd, n_layer=h.n_layer,
                  data_type=h.data_type.name, version=h.version)
    assert out.read_bytes() == open(os.path.join(TINY, model), "rb").read()


def test_progress_reports_each_tensor(tmp_path):
    records = synthetic_records(np.random.default_rng(1))
    calls = []
    write_rwkvcpp(tmp_path / "m.bin", records, progress=lambda *a: calls.append(a), **HEADER)
    assert calls == [(i + 1, len(records), r[0]) for i, r in enumerate(records)]
    calls.clear()
    write_rwkvcpp(tmp_path / "m.bin", iter(records), progress=lambda *a: calls.append(a), **HEADER)
    assert [c[1] for c in calls] == [None] * len(records)  # an iterator's length is unknown
    write_rwkvcpp(tmp_path / "m.bin", iter(records), n_tensors=6, progress=lambda *a: calls.append(a), **HEADER)
    assert calls[-1] == (6, 6, records[-1][0])


class Interrupted(Exception):
    pass


def records_then_failure(rng):
    records = synthetic_records(rng)
    yield from records[:3]
    raise Interrupted("source failed midway")


def test_failing_record_source_leaves_no_file(tmp_path):
    with pytest.raises(Interrupted):
        write_rwkvcpp(tmp_path / "m.bin", records_then_failure(np.random.default_rng(2)), **HEADER)
    assert os.listdir(tmp_path) == []


def test_failure_keeps_an_existing_destination(tmp_path):
    dst = tmp_path / "m.bin"
    dst.write_bytes(b"previous model")
    with pytest.raises(Interrupted):
        write_rwkvcpp(dst, records_then_failure(np.random.default_rng(3)), **HEADER)
    assert dst.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["m.bin"]


def test_failing_rename_leaves_no_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_rwkvcpp(tmp_path / "m.bin", synthetic_records(np.random.default_rng(4)), **HEADER)
    assert os.listdir(tmp_path) == []


def test_interrupt_from_progress_callback_leaves_no_file(tmp_path):
    def stop(done, total, name):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_rwkvcpp(tmp_path / "m.bin", synthetic_records(np.random.default_rng(5)), progress=stop, **HEADER)
    assert os.listdir(tmp_path) == []


def test_written_file_has_normal_permissions(tmp_path):
    write_rwkvcpp(tmp_path / "m.bin", synthetic_records(np.random.default_rng(6)), **HEADER)
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(tmp_path / "m.bin").st_mode & 0o777 == 0o666 & ~mask


def test_refuses_to_overwrite_a_protected_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"source")
    os.symlink(src, tmp_path / "alias.bin")
    for dst in (src, tmp_path / "alias.bin"):
        with pytest.raises(ModelFormatError, match="same file"):
            write_rwkvcpp(dst, synthetic_records(np.random.default_rng(7)), protect=[src], **HEADER)
    assert src.read_bytes() == b"source"
    assert sorted(os.listdir(tmp_path)) == ["alias.bin", "src.bin"]
    # A different destination next to it is fine.
    write_rwkvcpp(tmp_path / "other.bin", synthetic_records(np.random.default_rng(7)), protect=[src], **HEADER)


@pytest.mark.parametrize("record,message", [
    (("w", (64, 64), "FP32", bytes(10)), "10 bytes"),
    (("w", (64, 48), "Q4_0", bytes(64 * 18)), "block size"),
    (("w", (2, 2, 2, 2), "FP32", bytes(64)), "1..3"),
    (("w", (0, 4), "FP32", b""), "positive"),
    (("", (4,), "FP32", bytes(16)), "name"),
    (("w", (4,)), "record must be"),
])
def test_invalid_records_are_refused(tmp_path, record, message):
    with pytest.raises(ModelFormatError, match=message):
        write_rwkvcpp(tmp_path / "m.bin", [record], **HEADER)
    assert os.listdir(tmp_path) == []


def test_duplicate_names_are_refused(tmp_path):
    record = ("w", (4,), "FP32", bytes(16))
    with pytest.raises(ModelFormatError, match="twice"):
        write_rwkvcpp(tmp_path / "m.bin", [record, record], **HEADER)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("override", [{"version": 100}, {"version": 102}, {"n_layer": 0}, {"data_type": "Q9"}])
def test_invalid_headers_are_refused(tmp_path, override):
    with pytest.raises(ValueError):
        write_rwkvcpp(tmp_path / "m.bin", [], **{**HEADER, **override})
    assert os.listdir(tmp_path) == []


def test_version_100_is_allowed_for_float_files(tmp_path):
    write_rwkvcpp(tmp_path / "m.bin", [("w", (4,), "FP32", bytes(16))], **{**HEADER, "data_type": "FP32"},
                  version=100)
    assert RwkvCppFile(tmp_path / "m.bin").header.version == 100

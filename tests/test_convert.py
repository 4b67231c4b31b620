"""rwkvx.convert (.pth/.safetensors -> rwkv.cpp .bin) and the `rwkvx convert` / `rwkvx quantize` commands."""
import os

import numpy as np
import pytest

from rwkvx.errors import ModelFormatError
from rwkvx.formats.checkpoint import FP16_KEEP_SUBSTRINGS, load_checkpoint
from rwkvx.formats.convert import convert
from rwkvx.formats.quantize import quantize_file
from rwkvx.formats.rwkvcpp import VERSION_1, RwkvCppFile
from rwkvx.testing import RandomCheckpoint

PROMPT = list(range(100, 132))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: RandomCheckpoint.of(arch, seed=5, **sizes).write_pth(root / f"{arch}.pth")
            for arch, sizes in {"v4": dict(n_layer=2, n_embd=64, n_vocab=256),
                                "v5.2": dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16),
                                "v6": dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16),
                                "v7": dict(n_layer=3, n_embd=64, n_vocab=320, head_size=32)}.items()}


def files_in(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("arch", ["v4", "v5.2", "v6", "v7"])
def test_fp32_bin_gives_the_same_logits_as_the_checkpoint(tmp_path, checkpoints, arch):
    Model = pytest.importorskip("rwkvx.model", reason="C core not built").Model
    dst = tmp_path / "model-FP32.bin"
    convert(checkpoints[arch], dst, dtype="FP32")
    direct = load_checkpoint(checkpoints[arch])
    written = RwkvCppFile(dst)
    assert written.header.version == VERSION_1 and written.header.data_type.name == "FP32"
    assert list(written.tensors) == list(direct.tensors)
    for name, info in direct.tensors.items():  # the same bytes and layout as the in-memory source
        assert written.tensors[name].ne == info.ne and written.tensors[name].offset == info.offset, name
        np.testing.assert_array_equal(written.raw(name), direct.raw(name), err_msg=name)
    checkpoint_model = Model(direct, threads=2)
    # A .bin runs with rwkv.cpp's conventions by default (for v5, group-norm eps 1e-5 instead of the
    # official 64e-5): run it with the checkpoint's to compare the weights alone.
    from_bin, _ = Model(written, threads=2, group_norm_eps=checkpoint_model.group_norm_eps).forward(PROMPT, logits="all")
    from_pth, _ = checkpoint_model.forward(PROMPT, logits="all")
    assert np.isfinite(from_pth).all()
    np.testing.assert_array_equal(from_bin, from_pth)


def test_fp16_convert_keeps_rwkv_cpp_fp32_tensors(tmp_path, checkpoints):
    dst = tmp_path / "model-FP16.bin"
    convert(checkpoints["v7"], dst)  # FP16 is the default, as in rwkv.cpp
    f = RwkvCppFile(dst)
    assert f.header.data_type.name == "FP16"
    fp32 = [name for name, info in f.tensors.items() if info.type.name == "FP32"]
    for name, info in f.tensors.items():
        keep = len(info.ne) == 1 or any(part in name for part in FP16_KEEP_SUBSTRINGS)
        assert info.type.name == ("FP32" if keep else "FP16"), name
    assert "blocks.0.att.x_rwkvag" in fp32 and "blocks.0.att.r_k" in fp32 and "blocks.0.att.w1" not in fp32
    exact = load_checkpoint(checkpoints["v7"])
    np.testing.assert_array_equal(f.array("head.weight"), exact.array("head.weight").astype(np.float16))


@pytest.mark.parametrize("type_name", ["Q5_1", "Q4_0"])
def test_quantized_convert_equals_quantizing_the_fp32_file(tmp_path, checkpoints, type_name):
    convert(checkpoints["v6"], tmp_path / "fp32.bin", dtype="FP32")
    quantize_file(tmp_path / "fp32.bin", tmp_path / "two-steps.bin", type_name)
    convert(checkpoints["v6"], tmp_path / "one-step.bin", dtype=type_name)
    assert (tmp_path / "one-step.bin").read_bytes() == (tmp_path / "two-steps.bin").read_bytes()


def test_safetensors_convert_equals_pth_convert(tmp_path):
    ckpt = RandomCheckpoint.of("v5.1", n_layer=2, n_embd=64, n_vocab=256, head_size=16)
    convert(ckpt.write_pth(tmp_path / "m.pth"), tmp_path / "a.bin")
    convert(ckpt.write_safetensors(tmp_path / "m.safetensors"), tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_interrupted_convert_leaves_no_file(tmp_path, checkpoints):
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "model.bin"
    seen = []

    def interrupt(done, total, name):
        seen.append(name)
        if done == 5:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        convert(checkpoints["v7"], dst, dtype="FP16", progress=interrupt)
    assert len(seen) == 5
    assert files_in(out) == []  # neither the destination nor a temporary file

    dst.write_bytes(b"previous model")  # an existing destination survives a failed write unchanged
    with pytest.raises(KeyboardInterrupt):
        convert(checkpoints["v7"], dst, dtype="FP16", progress=interrupt)
    assert files_in(out) == ["model.bin"] and dst.read_bytes() == b"previous model"


def test_bad_source_leaves_no_file(tmp_path):
    ckpt = RandomCheckpoint.of("v4", n_layer=2, n_embd=64, n_vocab=256)
    from rwkvx.formats.pytorch import write_pth

    shapes = dict(ckpt.shapes)
    shapes["head.weight"] = (256, 32)  # wrong n_embd: found only after the other tensors were written
    write_pth(tmp_path / "bad.pth", shapes, lambda n: np.zeros(shapes[n], np.float32))
    with pytest.raises(ModelFormatError, match="head.weight"):
        convert(tmp_path / "bad.pth", tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists()
    assert files_in(tmp_path) == ["bad.pth"]


def test_refuses_to_overwrite_the_source(tmp_path, checkpoints):
    src = tmp_path / "m.pth"
    src.write_bytes(open(checkpoints["v4"], "rb").read())
    before = src.read_bytes()
    with pytest.raises(ModelFormatError, match="same file"):
        convert(src, src)
    assert src.read_bytes() == before


def test_cli_convert_and_quantize(tmp_path, checkpoints, capsys):
    import rwkvx.cli_formats  # noqa: F401  (registers the commands)
    from rwkvx.cli import main

    assert main(["convert", checkpoints["v5.2"], str(tmp_path / "m.bin"), "--dtype", "FP32"]) == 0
    assert main(["quantize", str(tmp_path / "m.bin"), str(tmp_path / "q.bin"), "Q5_0", "--head", "Q8_0"]) == 0
    assert "wrote" in capsys.readouterr().out
    q = RwkvCppFile(tmp_path / "q.bin")
    assert q.header.data_type.name == "Q5_0"
    assert q.tensors["head.weight"].type.name == "Q8_0"
    assert q.tensors["blocks.0.att.key.weight"].type.name == "Q5_0"
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.bin")]) != 0
    assert "missing.pth" in capsys.readouterr().err

"""Reading .pth / .safetensors checkpoints safely, the rwkv.cpp tensor transforms, and loading them.

The .pth reader is checked against torch itself (when installed) on files torch.save wrote, and
the .pth writer of rwkvx.testing against torch.load(weights_only=True). Malicious pickles must be
refused before anything in them runs.
"""
import os
import pickle
import zipfile

import numpy as np
import pytest

from rwkvx.errors import MissingTensorError, ModelFormatError
from rwkvx.formats.checkpoint import (FP16_KEEP_SUBSTRINGS, CheckpointConverter, load_checkpoint,
                                      open_checkpoint, open_model_source)
from rwkvx.formats.ggml_types import dequantize
from rwkvx.formats.pytorch import PthFile, _state_dict_pickle, read_pth, write_pth
from rwkvx.formats.quantize import quantize_rows, tensor_target_type
from rwkvx.formats.safetensors import read_safetensors, to_bfloat16_bits
from rwkvx.testing import RandomCheckpoint

SMALL = {
    "v4": dict(n_layer=2, n_embd=64, n_vocab=256),
    "v5.1": dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16),
    "v5.2": dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16),
    "v6": dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16),
    "v7": dict(n_layer=3, n_embd=64, n_vocab=256, head_size=16),
}
PROMPT = list(range(40, 72))


def small(arch, seed=0):
    return RandomCheckpoint.of(arch, seed=seed, **SMALL[arch])


def make_zip(path, pickle_bytes, extra=()):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        for name, data in extra:
            zf.writestr(name, data)
    return str(path)


# ---------------------------------------------------------------- .pth reading vs torch


def test_reader_matches_torch_on_torch_saved_files(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (test-only dependency)")
    g = torch.Generator().manual_seed(0)
    state = {
        "fp32": torch.randn(4, 6, generator=g),
        "transposed": torch.randn(4, 6, generator=g).t(),  # non-contiguous strides
        "slice": torch.randn(10, generator=g)[2:7],  # storage offset
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(2, 3, 4, generator=g).half(),
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "saved.pth"
    torch.save(state, path)
    mine = read_pth(path)
    assert list(mine) == list(state)
    for name, tensor in state.items():
        expected = tensor.detach().float().numpy()
        assert mine[name].shape == expected.shape, name
        np.testing.assert_array_equal(mine[name].astype(np.float32), expected, err_msg=name)
    assert mine["fp16"].dtype == np.float16 and mine["bf16"].dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_writer_output_loads_in_torch(tmp_path, dtype):
    torch = pytest.importorskip("torch", reason="torch not installed (test-only dependency)")
    ckpt = small("v7")
    path = ckpt.write_pth(tmp_path / "w.pth", dtype=dtype)
    loaded = torch.load(path, weights_only=True, mmap=True)  # mmap: the rwkv package's v7 loader uses it
    assert list(loaded) == list(ckpt.shapes)
    mine = read_pth(path)
    for name in ckpt.shapes:
        assert str(loaded[name].dtype) == f"torch.{dtype}"
        np.testing.assert_array_equal(loaded[name].float().numpy(), mine[name].astype(np.float32), err_msg=name)
    if dtype == "bfloat16":  # our float32 -> bf16 rounding is torch's (round to nearest even)
        x = ckpt.array("head.weight")
        np.testing.assert_array_equal(to_bfloat16_bits(x), torch.from_numpy(x).bfloat16().view(torch.int16)
                                      .numpy().view(np.uint16))


def test_pth_and_safetensors_round_trip_without_torch(tmp_path):
    ckpt = small("v6")
    expected = ckpt.arrays()
    for dtype, st_dtype in (("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16")):
        pth = read_pth(ckpt.write_pth(tmp_path / f"{dtype}.pth", dtype=dtype))
        st = read_safetensors(ckpt.write_safetensors(tmp_path / f"{dtype}.safetensors", dtype=st_dtype))
        assert list(pth) == list(expected) == list(st)
        for name, values in expected.items():
            if dtype == "float32":
                np.testing.assert_array_equal(pth[name], values)
            # fp16 / bf16 keep 11 / 8 significant bits: relative error below 2^-11 / 2^-8 (normal range)
            bound = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
            np.testing.assert_allclose(pth[name].astype(np.float32), values, rtol=bound, atol=1e-4 * (bound > 0))
            np.testing.assert_array_equal(pth[name], st[name])


# ---------------------------------------------------------------- refusing bad files


class _RunsCommand:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "eval", "exec in a tensor slot"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w').close()"
    if how == "os.system":
        payload = {"emb.weight": _RunsCommand(os.system, f"touch {marker}")}
    elif how == "eval":
        payload = _RunsCommand(eval, command)
    else:
        payload = {"emb.weight": _RunsCommand(exec, command)}
    path = make_zip(tmp_path / "evil.pth", pickle.dumps(payload, protocol=2))
    with pytest.raises(ModelFormatError, match="refusing"):
        PthFile(path)
    with pytest.raises(ModelFormatError, match="refusing"):
        load_checkpoint(path)
    assert not marker.exists()
    # The same payload does run through a plain unpickler: the test's marker is real.
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert marker.exists()


def test_torch_saved_object_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (test-only dependency)")
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module, not a state dict
    with pytest.raises(ModelFormatError, match="refusing"):
        read_pth(path)


def test_corrupt_pth_files_raise_model_format_error(tmp_path):
    not_zip = tmp_path / "text.pth"
    not_zip.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(ModelFormatError, match="not a PyTorch checkpoint"):
        read_pth(not_zip)
    # A tensor that claims more elements than its storage holds must not read out of bounds.
    lying = _state_dict_pickle([("emb.weight", (1000, 1000), "FloatStorage", "0")])
    path = make_zip(tmp_path / "lying.pth", lying, [("archive/data/0", b"\0" * 64)])
    with pytest.raises(ModelFormatError, match="bytes"):
        read_pth(path)
    no_storage = make_zip(tmp_path / "nostorage.pth", lying)
    with pytest.raises(ModelFormatError, match="no 'archive/data/0'"):
        read_pth(no_storage)
    not_dict = make_zip(tmp_path / "list.pth", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ModelFormatError, match="not a state dict"):
        read_pth(not_dict)
    truncated = tmp_path / "truncated.pth"
    good = small("v4").write_pth(tmp_path / "good.pth")
    truncated.write_bytes(open(good, "rb").read()[:3000])
    with pytest.raises(ModelFormatError):
        load_checkpoint(truncated)


def test_corrupt_safetensors_raise_model_format_error(tmp_path):
    path = small("v4").write_safetensors(tmp_path / "m.safetensors")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="does not hold"):
        read_safetensors(cut)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(b"\xff" * 16)
    with pytest.raises(ModelFormatError, match="header"):
        read_safetensors(huge)


def test_missing_tensor_is_named(tmp_path):
    ckpt = small("v7")
    shapes = {n: s for n, s in ckpt.shapes.items() if n != "blocks.1.att.k_k"}
    path = tmp_path / "missing.pth"
    write_pth(path, shapes, ckpt.array)
    with pytest.raises(MissingTensorError, match="blocks.1.att.k_k"):
        load_checkpoint(path)


def test_wrong_shape_is_refused(tmp_path):
    ckpt = small("v5.2")
    shapes = dict(ckpt.shapes)
    shapes["blocks.1.ffn.value.weight"] = (64, 100)  # ffn.key says 224 rows
    path = tmp_path / "shape.pth"
    write_pth(path, shapes, lambda n: np.zeros(shapes[n], np.float32))
    with pytest.raises(ModelFormatError, match="ffn.value.weight"):
        load_checkpoint(path)


# ---------------------------------------------------------------- the per-version transforms


def converted(ckpt, tmp_path):
    path = ckpt.write_pth(tmp_path / f"{ckpt.shape.arch}.pth")
    return dict(CheckpointConverter(open_checkpoint(path)).tensors())


def test_v4_transforms(tmp_path):
    ckpt = small("v4")
    t = converted(ckpt, tmp_path)
    np.testing.assert_allclose(t["blocks.1.att.time_decay"], -np.exp(ckpt.array("blocks.1.att.time_decay")),
                               rtol=1e-6)
    np.testing.assert_array_equal(t["blocks.1.att.time_mix_k"], ckpt.array("blocks.1.att.time_mix_k").reshape(-1))
    np.testing.assert_array_equal(t["blocks.0.att.key.weight"], ckpt.array("blocks.0.att.key.weight"))


def test_v5_transforms(tmp_path):
    for arch in ("v5.1", "v5.2"):
        ckpt = small(arch)
        t = converted(ckpt, tmp_path)
        H, S = ckpt.shape.n_head, ckpt.shape.head_size
        decay = np.exp(-np.exp(ckpt.array("blocks.0.att.time_decay").astype(np.float64)))
        if arch == "v5.1":
            assert t["blocks.0.att.time_decay"].shape == (H, 1, 1)
            np.testing.assert_allclose(t["blocks.0.att.time_first"].reshape(-1),
                                       np.exp(ckpt.array("blocks.0.att.time_first")), rtol=1e-6)
        else:
            assert t["blocks.0.att.time_decay"].shape == (H, S, 1)
            np.testing.assert_array_equal(t["blocks.0.att.time_faaaa"][:, :, 0], ckpt.array("blocks.0.att.time_faaaa"))
            assert "blocks.0.att.time_first" not in t
        np.testing.assert_allclose(t["blocks.0.att.time_decay"].reshape(-1), decay.reshape(-1), rtol=1e-6)


def test_v6_transforms(tmp_path):
    ckpt = small("v6")
    t = converted(ckpt, tmp_path)
    H, S = ckpt.shape.n_head, ckpt.shape.head_size
    np.testing.assert_array_equal(t["blocks.1.att.time_maa_w1"], ckpt.array("blocks.1.att.time_maa_w1").T)
    np.testing.assert_array_equal(t["blocks.1.att.time_decay_w2"], ckpt.array("blocks.1.att.time_decay_w2").T)
    w2 = ckpt.array("blocks.1.att.time_maa_w2")  # (5, D, C) -> (5, C, D)
    np.testing.assert_array_equal(t["blocks.1.att.time_maa_w2"][3], w2[3].T)
    np.testing.assert_array_equal(t["blocks.1.att.time_decay"].reshape(H, S),
                                  ckpt.array("blocks.1.att.time_decay").reshape(H, S))  # raw, no exp


def test_v7_transforms(tmp_path):
    ckpt = small("v7")
    t = converted(ckpt, tmp_path)
    mix = t["blocks.2.att.x_rwkvag"]
    assert mix.shape == (6, 1, 64)
    for row, c in enumerate("rwkvag"):
        np.testing.assert_array_equal(mix[row, 0], ckpt.array(f"blocks.2.att.x_{c}").reshape(-1))
    np.testing.assert_array_equal(t["blocks.2.att.g1"], ckpt.array("blocks.2.att.g1").T)
    np.testing.assert_array_equal(t["blocks.2.att.v2"], ckpt.array("blocks.2.att.v2").T)
    # Layer 0 never uses its value-residual LoRA: dropped, as rwkv.cpp has no slot for it.
    assert "blocks.0.att.v1" not in t and "blocks.1.att.v1" in t
    assert not any(name.endswith(("att.x_r", "att.x_g")) for name in t)


# ---------------------------------------------------------------- loading with dtype=


def test_fp16_load_keeps_the_converter_fp32_tensors(tmp_path):
    path = small("v7").write_pth(tmp_path / "v7.pth")
    source = load_checkpoint(path, dtype="FP16")
    assert source.header.data_type.name == "FP16"
    for name, info in source.tensors.items():
        keep = len(info.ne) == 1 or any(part in name for part in FP16_KEEP_SUBSTRINGS)
        assert info.type.name == ("FP32" if keep else "FP16"), name
    assert source.tensors["blocks.1.att.key.weight"].type.name == "FP16"
    assert source.tensors["blocks.1.att.x_rwkvag"].type.name == "FP32"


@pytest.mark.parametrize("type_name", ["Q5_1", "Q8_0"])
def test_quantized_load_follows_the_quantizer_rules(tmp_path, type_name):
    path = small("v6").write_pth(tmp_path / "v6.pth")
    fp32 = load_checkpoint(path)
    quantized = load_checkpoint(path, dtype=type_name)
    assert quantized.header.data_type.name == type_name
    assert quantized.tensors["head.weight"].type.name == "FP32"  # rwkv.cpp never quantizes the head
    assert quantized.tensors["blocks.0.att.time_maa_w1"].type.name == type_name  # but does v6 LoRA
    for name, info in fp32.tensors.items():
        target = tensor_target_type(info, type_name)
        got = quantized.tensors[name]
        if target is None:
            assert got.type.name == "FP32"
            np.testing.assert_array_equal(quantized.raw(name), fp32.raw(name))
        else:
            rows = fp32.array(name).reshape(info.ne[1], info.ne[0])
            np.testing.assert_array_equal(quantized.raw(name), quantize_rows(rows, target).reshape(-1), err_msg=name)
            back = dequantize(quantized.raw(name), type_name, info.n_elements).reshape(info.shape)
            np.testing.assert_array_equal(back, quantized.array(name))


def test_bin_source_dispatch(tmp_path):
    from rwkvx.formats.rwkvcpp import RwkvCppFile

    tiny = os.path.join(os.path.dirname(__file__), "data", "tiny", "tiny-rwkv-5v2-730K-FP32.bin")
    assert isinstance(open_model_source(tiny), RwkvCppFile)
    q = open_model_source(tiny, dtype="Q5_0")
    assert q.header.data_type.name == "Q5_0"
    assert q.tensors["blocks.0.att.key.weight"].type.name == "Q5_0"
    with pytest.raises(ModelFormatError, match="FP32 or FP16"):
        open_model_source(tiny.replace("FP32", "Q5_1"), dtype="Q4_0")
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(small("v4").write_pth(tmp_path / "a.pth"), dtype="Q3_K")


# ---------------------------------------------------------------- logits from checkpoints


@pytest.fixture(scope="module")
def core_model():
    return pytest.importorskip("rwkvx.model", reason="C core not built").Model


@pytest.mark.parametrize("arch", list(SMALL))
def test_loaded_checkpoint_matches_reference(tmp_path, core_model, arch):
    from rwkvx.architecture import infer_shape
    from rwkvx.reference import ReferenceModel

    path = small(arch, seed=1).write_pth(tmp_path / f"{arch}.pth")
    model = core_model(load_checkpoint(path), threads=2)
    logits, _ = model.forward(PROMPT, logits="all")
    tensors = dict(CheckpointConverter(open_checkpoint(path)).tensors())
    expected, _ = ReferenceModel(tensors, infer_shape({n: a.shape for n, a in tensors.items()})).forward(PROMPT)
    assert np.isfinite(logits).all() and expected.std() > 0.5
    # float32 kernels vs float64 reference, logits O(10): same bound as the tiny-model tests' spirit
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["v5.2", "v7"])
def test_bf16_fp16_and_safetensors_checkpoints_load(tmp_path, core_model, arch):
    """A bf16 (fp16) file gives exactly the logits of an fp32 file holding the same rounded values."""
    ckpt = small(arch, seed=2)
    for torch_dtype, st_dtype in (("bfloat16", "BF16"), ("float16", "F16")):
        low = ckpt.write_pth(tmp_path / f"{torch_dtype}.pth", dtype=torch_dtype)
        rounded = read_pth(low)
        same_fp32 = tmp_path / f"{torch_dtype}-as-fp32.pth"
        write_pth(same_fp32, ckpt.shapes, lambda n: rounded[n].astype(np.float32))
        st = ckpt.write_safetensors(tmp_path / f"{torch_dtype}.safetensors", dtype=st_dtype)
        results = [core_model(load_checkpoint(p), threads=2).forward(PROMPT, logits="all")[0]
                   for p in (low, same_fp32, st)]
        assert np.isfinite(results[0]).all()
        np.testing.assert_array_equal(results[0], results[1])
        np.testing.assert_array_equal(results[0], results[2])

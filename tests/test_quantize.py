"""Quantizers (C reference and NumPy reference) and quantize_file.

The C quantizer must reproduce ggml's reference rounding byte for byte: it is
checked against hand-computed blocks, against the NumPy reference on random
and extreme inputs, and against the quantized tiny models shipped by rwkv.cpp.
"""
import os

import numpy as np
import pytest

from rwkvx.errors import ModelFormatError
from rwkvx.formats.ggml_types import BLOCK_DTYPES, QK, QUANTIZED_TYPES, dequantize
from rwkvx.formats.quantize import quantize_file
from rwkvx.formats.quantize_numpy import quantize_rows as quantize_rows_numpy
from rwkvx.formats.rwkvcpp import RwkvCppFile

_quantize = pytest.importorskip("rwkvx._quantize", reason="C extension not built (python setup.py build_ext)")
quantize_rows_c = _quantize.quantize_rows

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny")
TINY_VERSIONS = ["4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K"]
ALL_TYPES = ("FP32", "FP16") + QUANTIZED_TYPES

FP16_REL_ERROR = 2.0**-11  # largest relative rounding error of float32 -> fp16 (normal range)
F32_SLACK_REL = 8 * np.finfo(np.float32).eps  # float32 arithmetic in quantize/dequantize
HALF_RANGE = {"Q4_0": 8, "Q5_0": 16}  # symmetric types: q - HALF_RANGE in [-h, h)
AFFINE_Q_MAX = {"Q4_1": 15, "Q5_1": 31}


def tiny(ver, kind):
    return os.path.join(TINY, f"tiny-rwkv-{ver}-{kind}.bin")


def blocks_of(raw, type_name):
    return np.asarray(raw).view(BLOCK_DTYPES[type_name])


# ---------------------------------------------------------------- known answers


def test_q5_0_known_block():
    # x_j = j - 16: the first largest |x| is x_0 = -16, so d = -16 / -16 = 1 and q_j = j.
    x = (np.arange(QK, dtype=np.float32) - 16).reshape(1, QK)
    expected = bytes([0x00, 0x3C]) + (0xFFFF0000).to_bytes(4, "little") + bytes(j | j << 4 for j in range(16))
    assert quantize_rows_c(x, "Q5_0").tobytes() == expected
    assert quantize_rows_numpy(x, "Q5_0").tobytes() == expected


def test_q4_0_known_block_and_half_up_ties():
    # max = -8 -> d = 1; q = trunc(x + 8.5): ties x = k + 0.5 go up (toward +inf).
    x = np.zeros((1, QK), dtype=np.float32)
    x[0, :16] = np.arange(16) - 8
    x[0, 16:20] = [0.5, -0.5, 1.5, -1.5]
    q = [j for j in range(16)] + [9, 8, 10, 7] + [8] * 12
    expected = bytes([0x00, 0x3C]) + bytes(q[j] | q[j + 16] << 4 for j in range(16))
    assert quantize_rows_c(x, "Q4_0").tobytes() == expected
    assert quantize_rows_numpy(x, "Q4_0").tobytes() == expected


def test_q4_0_zero_block_has_negative_zero_scale():
    # d = max / -8 with max = +0 gives -0 (fp16 0x8000); 1/d is taken as 0, so q = trunc(8.5) = 8.
    x = np.zeros((1, QK), dtype=np.float32)
    expected = bytes([0x00, 0x80]) + bytes([0x88] * 16)
    assert quantize_rows_c(x, "Q4_0").tobytes() == expected
    assert quantize_rows_numpy(x, "Q4_0").tobytes() == expected


def test_q4_1_and_q5_1_known_blocks():
    x41 = np.tile(np.arange(16, dtype=np.float32), 2).reshape(1, QK)  # min 0, max 15 -> d = 1, m = 0
    expected41 = bytes([0x00, 0x3C, 0x00, 0x00]) + bytes(j | j << 4 for j in range(16))
    x51 = (np.arange(QK, dtype=np.float32) + 10).reshape(1, QK)  # min 10, max 41 -> d = 1, m = 10
    expected51 = (bytes([0x00, 0x3C, 0x00, 0x49]) + (0xFFFF0000).to_bytes(4, "little")
                  + bytes(j | j << 4 for j in range(16)))
    for quantize in (quantize_rows_c, quantize_rows_numpy):
        assert quantize(x41, "Q4_1").tobytes() == expected41
        assert quantize(x51, "Q5_1").tobytes() == expected51


def test_q8_0_rounds_half_away_from_zero():
    x = np.zeros((1, QK), dtype=np.float32)
    x[0, :8] = [127, -127, 63.5, -63.5, 2.5, -2.5, 0.5, -0.49999997]  # amax 127 -> d = 1
    q = [127, -127, 64, -64, 3, -3, 1, 0] + [0] * 24
    expected = bytes([0x00, 0x3C]) + np.array(q, dtype=np.int8).tobytes()
    assert quantize_rows_c(x, "Q8_0").tobytes() == expected
    assert quantize_rows_numpy(x, "Q8_0").tobytes() == expected


# ----------------------------------------------------------- C == NumPy reference


def random_rows(rng, rows, n, kind):
    """float32 [rows, n] test inputs of several kinds."""
    if kind == "normal":
        return rng.standard_normal((rows, n)).astype(np.float32)
    if kind == "bf16-like":  # few mantissa bits, like trained weights: makes exact rounding ties common
        return (rng.integers(-64, 65, (rows, n)) * 2.0 ** rng.integers(-12, -4, (rows, 1))).astype(np.float32)
    if kind == "positive-offset":
        return (100 + rng.random((rows, n))).astype(np.float32)
    if kind == "tiny":
        return (rng.standard_normal((rows, n)) * 1e-30).astype(np.float32)
    if kind == "huge":
        return (rng.standard_normal((rows, n)) * 1e37).astype(np.float32)
    if kind == "subnormal":  # 1/d overflows to inf: the x86 "non-finite converts to 0" rule
        return (rng.standard_normal((rows, n)) * 1e-39).astype(np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize("type_name", ALL_TYPES)
@pytest.mark.parametrize("kind", ["normal", "bf16-like", "positive-offset", "tiny", "huge", "subnormal"])
@pytest.mark.parametrize("rows,n", [(1, 32), (3, 64), (7, 96), (17, 256)])
def test_c_matches_numpy(type_name, kind, rows, n):
    rng = np.random.default_rng([rows, n, len(kind)])
    x = random_rows(rng, rows, n, kind)
    c, ref = quantize_rows_c(x, type_name), quantize_rows_numpy(x, type_name)
    assert c.dtype == np.uint8 and c.shape == ref.shape == (_quantize.row_bytes(type_name, n) * rows,)
    mismatch = np.flatnonzero(c != ref)
    assert mismatch.size == 0, f"{type_name} {kind}: first differing byte {mismatch[:1]} of {c.size}"


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_c_matches_numpy_on_special_blocks(type_name):
    special = np.zeros((9, QK), dtype=np.float32)
    special[1] = -0.0  # all negative zeros
    special[2, ::2] = -0.0  # mixed signed zeros
    special[3] = 0.75  # all equal, positive
    special[4] = -3.0  # all equal, negative
    special[5, 17] = 1e-3  # a single non-zero
    special[6] = np.linspace(-1, 1, QK)  # |max| reached twice, +1 and -1: the first (-1) wins
    special[7] = np.float32(3.0e38) * np.sign(np.linspace(-1, 1, QK))  # max - min overflows float32
    special[8, :2] = [5.0, -5.0]  # equal magnitudes of both signs
    c, ref = quantize_rows_c(special, type_name), quantize_rows_numpy(special, type_name)
    assert np.array_equal(c, ref)


def test_fp16_rows_match_numpy_rounding():
    rng = np.random.default_rng(1)
    x = np.concatenate([
        rng.standard_normal(4096) * 10.0 ** rng.integers(-9, 5, 4096),
        [65504.0, 65519.99, 65520.0, 6e-8, 2.98e-8, 2.99e-8, -0.0, 1e-40],
    ]).astype(np.float32).reshape(1, -1)
    with np.errstate(over="ignore"):  # 65520 and above round to inf
        expected = x.astype("<f2").reshape(-1).view(np.uint8)
    assert np.array_equal(quantize_rows_c(x, "FP16"), expected)


def test_noncontiguous_input_is_packed_in_row_order():
    x = np.random.default_rng(2).standard_normal((64, 96)).astype(np.float32)
    assert np.array_equal(quantize_rows_c(x.T, "Q5_1"), quantize_rows_c(np.ascontiguousarray(x.T), "Q5_1"))


@pytest.mark.parametrize("bad,message", [
    (np.zeros((2, 32), dtype=np.float64), "float32"),
    (np.zeros(64, dtype=np.float32), "2-D"),
    (np.zeros((2, 48), dtype=np.float32), "multiple of 32"),
    ([[0.0] * 32], "numpy"),
])
def test_quantize_rows_rejects_bad_arrays(bad, message):
    with pytest.raises(ValueError, match=message):
        quantize_rows_c(bad, "Q4_0")


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_quantize_rows_rejects_non_finite(value):
    x = np.zeros((2, 32), dtype=np.float32)
    x[1, 5] = value
    with pytest.raises(ValueError, match="row 1, column 5"):
        quantize_rows_c(x, "Q8_0")


def test_quantize_rows_rejects_unknown_type():
    with pytest.raises(ValueError, match="Q4_K"):
        quantize_rows_c(np.zeros((1, 32), dtype=np.float32), "Q4_K")


# --------------------------------------------------------------- error bounds


@pytest.mark.parametrize("type_name", QUANTIZED_TYPES)
def test_dequantized_error_within_format_bound(type_name):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 10, (64, 1))).astype(np.float32)
    packed = quantize_rows_c(x, type_name)
    error = np.abs(dequantize(packed, type_name, x.size) - x.reshape(-1)).reshape(-1, QK)
    blocks = x.reshape(-1, QK).astype(np.float64)
    slack = F32_SLACK_REL * np.abs(blocks).max(axis=1, keepdims=True)
    if type_name in HALF_RANGE:
        h = HALF_RANGE[type_name]
        step = np.abs(blocks).max(axis=1, keepdims=True) / h
        q = np.rint(blocks / (blocks[np.arange(len(blocks)), np.abs(blocks).argmax(1)][:, None] / -h)) + h
        # Half a step, but a whole step for values clamped to the top code 2h-1 (x/d near +h).
        steps = np.where(q >= 2 * h - 1, 1.0, 0.5)
        bound = step * (steps + h * FP16_REL_ERROR) + slack
    elif type_name in AFFINE_Q_MAX:
        q_max = AFFINE_Q_MAX[type_name]
        low, high = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
        step = (high - low) / q_max
        bound = step * (0.5 + q_max * FP16_REL_ERROR) + np.abs(low) * FP16_REL_ERROR + slack
    else:  # Q8_0
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127
        bound = step * (0.5 + 127 * FP16_REL_ERROR) + slack
    worst = np.argmax(error - bound)
    assert (error <= bound).all(), (
        f"{type_name}: element {worst}: error {error.flat[worst]:.3g} > bound {np.broadcast_to(bound, error.shape).flat[worst]:.3g}"
    )


# ------------------------------------------------- quantize_file vs rwkv.cpp output


@pytest.mark.parametrize("ver,type_name", [
    (v, t) for v in TINY_VERSIONS for t in ("Q5_0", "Q5_1") if (v, t) != ("6v0-1m", "Q5_0")
])
def test_quantize_file_reproduces_shipped_models(tmp_path, ver, type_name):
    out = tmp_path / "out.bin"
    quantize_file(tiny(ver, "FP32"), out, type_name)
    assert out.read_bytes() == open(tiny(ver, type_name), "rb").read()


def test_shipped_6v0_1m_q5_0_was_made_with_fused_multiply_add(tmp_path):
    """tiny-rwkv-6v0-1m-Q5_0.bin differs from ggml's portable (x86, no FMA) rounding.

    Its weights have few mantissa bits, so x * (1/d) + 16.5 often lands on an exact
    integer once the product is rounded to float32; a build that fuses the multiply
    and add into one FMA (ARM, or x86 with FP contraction) rounds only once and gets
    the integer below. Emulating that FMA reproduces every quantized tensor exactly.
    The Q5_1 file of the same model has no such ties and matches (tested above).
    """
    out = tmp_path / "out.bin"
    quantize_file(tiny("6v0-1m", "FP32"), out, "Q5_0")
    ours, shipped = RwkvCppFile(out), RwkvCppFile(tiny("6v0-1m", "Q5_0"))
    src = RwkvCppFile(tiny("6v0-1m", "FP32"))
    assert list(ours.tensors) == list(shipped.tensors)
    differing = 0
    for name, info in shipped.tensors.items():
        if info.type.name != "Q5_0":
            assert np.array_equal(ours.raw(name), shipped.raw(name))
            continue
        rows = np.asarray(src.array(name)).reshape(info.ne[1], info.ne[0])
        assert np.array_equal(quantize_rows_numpy(rows, "Q5_0", fused_multiply_add=True), shipped.raw(name))
        differing += not np.array_equal(ours.raw(name), shipped.raw(name))
    assert differing > 0


def test_quantize_file_rules_and_head_option(tmp_path):
    src_path = tiny("7v0-834K", "FP32")
    plain, with_head = tmp_path / "plain.bin", tmp_path / "head.bin"
    quantize_file(src_path, plain, "Q4_1")
    quantize_file(src_path, with_head, "Q4_1", head="Q8_0")
    src, out, out_head = RwkvCppFile(src_path), RwkvCppFile(plain), RwkvCppFile(with_head)
    assert (out.header.version, out.header.data_type.name) == (101, "Q4_1")
    assert (out.header.n_vocab, out.header.n_embd, out.header.n_layer) == (
        src.header.n_vocab, src.header.n_embd, src.header.n_layer)
    lora = ("att.v1", "att.v2", "att.g1", "att.g2", "att.a1", "att.a2", "att.w1", "att.w2", "att.r_k")
    for name, info in src.tensors.items():
        kept = len(info.ne) != 2 or name in ("emb.weight", "head.weight") or any(s in name for s in lora)
        assert out.tensors[name].type.name == ("FP32" if kept else "Q4_1"), name
        assert out.tensors[name].ne == info.ne
        if kept:
            assert np.array_equal(out.raw(name), src.raw(name)), name
        if name != "head.weight":
            assert np.array_equal(out_head.raw(name), out.raw(name)), name
    head = out_head.tensors["head.weight"]
    assert head.type.name == "Q8_0"
    x = src.array("head.weight")
    step = np.abs(x).reshape(-1, QK).max(axis=1) / 127
    error = np.abs(out_head.array("head.weight") - x).reshape(-1, QK)
    assert (error <= step[:, None] * (0.5 + 127 * FP16_REL_ERROR) * (1 + F32_SLACK_REL)).all()


def test_quantize_file_from_fp16_keeps_fp16_copies(tmp_path):
    out_path = tmp_path / "out.bin"
    quantize_file(tiny("5v2-730K", "FP16"), out_path, "Q8_0")
    src, out = RwkvCppFile(tiny("5v2-730K", "FP16")), RwkvCppFile(out_path)
    assert out.tensors["emb.weight"].type.name == "FP16"
    assert np.array_equal(out.raw("emb.weight"), src.raw("emb.weight"))
    key = "blocks.3.att.key.weight"
    assert out.tensors[key].type.name == "Q8_0"
    rows = src.array(key).reshape(src.tensors[key].ne[1], -1)  # fp16 -> float32 is exact
    assert np.array_equal(out.raw(key), quantize_rows_numpy(rows, "Q8_0"))


def test_quantize_file_progress(tmp_path):
    calls = []
    quantize_file(tiny("4v0-660K", "FP32"), tmp_path / "out.bin", "Q5_1", progress=lambda *a: calls.append(a))
    names = list(RwkvCppFile(tiny("4v0-660K", "FP32")).tensors)
    assert calls == [(i + 1, len(names), name) for i, name in enumerate(names)]


def test_quantize_file_rejects_quantized_source(tmp_path):
    with pytest.raises(ModelFormatError, match="FP32 or FP16"):
        quantize_file(tiny("5v1-730K", "Q5_0"), tmp_path / "out.bin", "Q4_0")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs", [{"type_name": "FP16"}, {"type_name": "Q4_K"},
                                    {"type_name": "Q5_0", "head": "FP32"}])
def test_quantize_file_rejects_bad_type_names(tmp_path, kwargs):
    with pytest.raises(ValueError):
        quantize_file(tiny("4v0-660K", "FP32"), tmp_path / "out.bin", **kwargs)
    assert os.listdir(tmp_path) == []


def test_quantize_file_refuses_to_overwrite_its_source(tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(open(tiny("4v0-660K", "FP32"), "rb").read())
    before = src.read_bytes()
    link = tmp_path / "link.bin"
    os.link(src, link)
    for dst in (src, link):
        with pytest.raises(ModelFormatError, match="same file"):
            quantize_file(src, dst, "Q5_0")
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["link.bin", "model.bin"]


def test_quantize_file_rejects_non_finite_weights(tmp_path):
    data = bytearray(open(tiny("4v0-660K", "FP32"), "rb").read())
    info = RwkvCppFile(tiny("4v0-660K", "FP32")).tensors["blocks.1.att.key.weight"]
    data[info.offset + 40 : info.offset + 44] = np.float32(np.nan).tobytes()
    src = tmp_path / "nan.bin"
    src.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="blocks.1.att.key.weight"):
        quantize_file(src, tmp_path / "out.bin", "Q5_0")
    assert os.listdir(tmp_path) == ["nan.bin"]

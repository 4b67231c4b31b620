"""Q4_0, Q4_1 and Q8_0 (no shipped tiny files): quantize the FP32 tiny models here with the NumPy
reference quantizer (ggml's rounding), then compare the C path with exact math on the same weights,
within the named cost of the C core's per-block int8 activations."""
import numpy as np
import pytest

import rwkvx
from rwkvx.formats.quantize import tensor_target_type
from rwkvx.formats.quantize_numpy import quantize_rows
from rwkvx.formats.rwkvcpp import RwkvCppFile
from rwkvx.formats.writer import write_rwkvcpp
from rwkvx.reference import ReferenceModel

from conftest import TINY
from test_model import FP32_VERSIONS, TEXT, assert_int8_activation_cost


def quantize_with_numpy(src_path, dst_path, type_name, head=None):
    src = RwkvCppFile(src_path)
    records = []
    for name, info in src.tensors.items():
        target = tensor_target_type(info, type_name, head=head)
        if target is None:
            records.append((name, info.shape, info.type.name, bytes(src.raw(name))))
        else:
            rows = src.array(name).reshape(-1, info.ne[0]).astype(np.float32)
            records.append((name, info.shape, target, quantize_rows(rows, target)))
    h = src.header
    write_rwkvcpp(dst_path, records, n_vocab=h.n_vocab, n_embd=h.n_embd, n_layer=h.n_layer, data_type=type_name)
    return dst_path


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("version", FP32_VERSIONS)
def test_quantized_model_serial_equals_sequence(tmp_path, version, type_name):
    path = quantize_with_numpy(TINY / f"tiny-rwkv-{version}-FP32.bin", tmp_path / "q.bin", type_name)
    model = rwkvx.load(path)
    logits, state = model.forward(list(TEXT), logits="all")
    serial_state = model.new_state()
    for t in TEXT:
        last, _ = model.forward(t, serial_state, inplace=True)
    np.testing.assert_array_equal(serial_state.data, state.data)
    np.testing.assert_array_equal(last, logits[-1])


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("version", FP32_VERSIONS)
def test_quantized_model_stays_close_to_exact_math_on_its_weights(tmp_path, version, type_name):
    path = quantize_with_numpy(TINY / f"tiny-rwkv-{version}-FP32.bin", tmp_path / "q.bin", type_name)
    model = rwkvx.load(path)
    assert model.dtype == type_name
    types = {info.type.name for info in model.source.tensors.values()}
    assert type_name in types, "the quantizer left every matrix unquantized"
    assert_int8_activation_cost(model, path, f"{version} {type_name}")


@pytest.mark.parametrize("version", FP32_VERSIONS)
def test_q8_0_head_stays_close_to_exact_math(tmp_path, version):
    path = quantize_with_numpy(TINY / f"tiny-rwkv-{version}-FP32.bin", tmp_path / "q.bin", "Q8_0", head="Q8_0")
    model = rwkvx.load(path)
    assert model.source.tensors["head.weight"].type.name == "Q8_0"
    assert_int8_activation_cost(model, path, f"{version} Q8_0 with a Q8_0 head")

"""Q4_0, Q4_1 and Q8_0 (no shipped tiny files): quantize the FP32 tiny models here with the NumPy
reference quantizer (ggml's rounding), then compare the C path with the reference on the same weights."""
import numpy as np
import pytest

import rwkvx
from rwkvx.formats.quantize import tensor_target_type
from rwkvx.formats.quantize_numpy import quantize_rows
from rwkvx.formats.rwkvcpp import RwkvCppFile
from rwkvx.formats.writer import write_rwkvcpp
from rwkvx.reference import ReferenceModel

from conftest import TINY
from test_model import C_VS_REFERENCE_TOLERANCE, FP32_VERSIONS, TEXT, assert_close


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
def test_quantized_model_matches_reference_on_its_weights(tmp_path, version, type_name):
    path = quantize_with_numpy(TINY / f"tiny-rwkv-{version}-FP32.bin", tmp_path / "q.bin", type_name)
    model = rwkvx.load(path)
    assert model.dtype == type_name
    types = {info.type.name for info in model.source.tensors.values()}
    assert type_name in types, "the quantizer left every matrix unquantized"
    ref_logits, ref_state = ReferenceModel.from_file(path).forward(list(TEXT))
    logits, state = model.forward(list(TEXT), logits="all")
    assert_close(logits, ref_logits, C_VS_REFERENCE_TOLERANCE, f"{version} {type_name} sequence")
    serial_state = model.new_state()
    for t in TEXT:
        last, _ = model.forward(t, serial_state, inplace=True)
    np.testing.assert_array_equal(serial_state.data, state.data)
    np.testing.assert_array_equal(last, logits[-1])


def test_q8_0_head_matches_reference(tmp_path):
    path = quantize_with_numpy(TINY / "tiny-rwkv-7v0-834K-FP32.bin", tmp_path / "q.bin", "Q8_0", head="Q8_0")
    model = rwkvx.load(path)
    assert model.source.tensors["head.weight"].type.name == "Q8_0"
    ref_logits, _ = ReferenceModel.from_file(path).forward(list(TEXT))
    logits, _ = model.forward(list(TEXT), logits="all")
    assert_close(logits, ref_logits, C_VS_REFERENCE_TOLERANCE, "Q8_0 head")

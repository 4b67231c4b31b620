"""The NumPy reference forward pass against rwkv.cpp's expected logits for its tiny test models.

`expected-logits-<model>.bin` (256 little-endian float32) are the FP32 model's logits after the bytes
34, 105, 110 ('"', 'i', 'n') fed from the initial state, computed by rwkv.cpp (see tests/data/tiny/README.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rwkvx.architecture import ModelShape
from rwkvx.errors import MissingTensorError, ModelFormatError, StateError, TokenError
from rwkvx.formats.rwkvcpp import RwkvCppFile
from rwkvx.reference import ReferenceModel
from rwkvx.reference.common import group_norm, l2_normalize_heads, layer_norm

TINY = Path(__file__).parent / "data" / "tiny"
PROMPT = [34, 105, 110]
N_VOCAB = 256

# rwkv.cpp computes in float32; its logits (magnitude < 16) agree with a float64 pass to a few 1e-6.
FP32_LOGIT_TOLERANCE = 1e-5
# FP16 files round every matrix to 11 significant bits; observed max |Δ| 4.4e-3 (5v1).
FP16_LOGIT_TOLERANCE = 1e-2
# 6v0-3m ships only quantized; its expected logits come from the FP32 model we do not have, so the
# difference is 5-bit weight rounding. Observed max |Δ| 0.076 for Q5_1 (logits span about ±15).
Q5_1_VS_FP32_LOGIT_TOLERANCE = 0.1

# (model, architecture, state length from SPEC §2 "State buffer")
FP32_MODELS = [
    ("4v0-660K", "v4", 2560),
    ("5v1-730K", "v5.1", 7680),
    ("5v2-730K", "v5.2", 7680),
    ("6v0-1m", "v6", (2 + 8) * 64 * 12),
    ("7v0-834K", "v7", 50688),
]
MODEL_NAMES = [m[0] for m in FP32_MODELS]

_cache: dict[str, ReferenceModel] = {}


def load(model: str, data_type: str = "FP32") -> ReferenceModel:
    key = f"{model}-{data_type}"
    if key not in _cache:
        _cache[key] = ReferenceModel.from_file(RwkvCppFile(TINY / f"tiny-rwkv-{key}.bin"))
    return _cache[key]


def expected_logits(model: str) -> np.ndarray:
    return np.fromfile(TINY / f"expected-logits-{model}.bin", dtype="<f4").astype(np.float64)


def assert_logits_close(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    diff = np.abs(actual - expected)
    worst = int(np.argmax(diff))
    assert diff[worst] <= tolerance, (
        f"logit {worst}: expected {expected[worst]:.7g}, got {actual[worst]:.7g}, "
        f"|Δ| = {diff[worst]:.3g} > {tolerance:g} ({int((diff > tolerance).sum())} entries over)"
    )


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_prompt_in_one_call_matches_expected_logits(model):
    logits, state = load(model).forward(PROMPT)
    assert logits.shape == (len(PROMPT), N_VOCAB) and logits.dtype == np.float64
    assert_logits_close(logits[-1], expected_logits(model), FP32_LOGIT_TOLERANCE)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_prompt_one_token_per_call_gives_the_same(model):
    ref = load(model)
    whole_logits, whole_state = ref.forward(PROMPT)
    state = None
    for t, token in enumerate(PROMPT):
        logits, state = ref.forward([token], state)
        assert logits.shape == (1, N_VOCAB)
        np.testing.assert_array_equal(logits[0], whole_logits[t])
    np.testing.assert_array_equal(state, whole_state)
    assert_logits_close(logits[0], expected_logits(model), FP32_LOGIT_TOLERANCE)


@pytest.mark.parametrize("model, arch, state_len", FP32_MODELS)
def test_initial_state_layout_and_values(model, arch, state_len):
    ref = load(model)
    assert ref.shape.arch == arch
    state = ref.initial_state()
    assert state.shape == (state_len,) and state.dtype == np.float64
    if arch == "v4":
        C = ref.shape.n_embd
        per_layer = state.reshape(ref.shape.n_layer, 5, C)
        assert np.all(per_layer[:, :4] == 0.0)  # ffn_xx, att_xx, aa, bb
        assert np.all(per_layer[:, 4] == -1e30)  # pp
    else:
        assert np.all(state == 0.0)
    assert ref.initial_state() is not state  # a fresh buffer each time


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_layer0_token_shift_slots_hold_the_normed_input(model):
    """Pins the state layout: layer 0's att_xx slot is LN1(LN0(emb[last token])), at offset C."""
    f = RwkvCppFile(TINY / f"tiny-rwkv-{model}-FP32.bin")
    ref = load(model)
    C = ref.shape.n_embd
    _, state = ref.forward(PROMPT)

    def ln(x, name):
        x = x.astype(np.float64)
        return (x - x.mean()) / np.sqrt(x.var() + 1e-5) * f.array(f"{name}.weight").reshape(-1) \
            + f.array(f"{name}.bias").reshape(-1)

    x0 = ln(f.array("emb.weight")[PROMPT[-1]], "blocks.0.ln0")
    np.testing.assert_allclose(state[C : 2 * C], ln(x0, "blocks.0.ln1"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_input_state_is_not_modified(model):
    ref = load(model)
    _, state = ref.forward(PROMPT[:1])
    before = state.copy()
    _, after = ref.forward(PROMPT[1:], state)
    np.testing.assert_array_equal(state, before)
    assert not np.array_equal(after, before)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_float32_state_is_accepted(model):
    ref = load(model)
    _, state = ref.forward(PROMPT[:2])
    logits64, _ = ref.forward(PROMPT[2:], state)
    logits32, _ = ref.forward(PROMPT[2:], state.astype(np.float32))
    # Rounding the state to float32 only perturbs logits at float32 precision.
    np.testing.assert_allclose(logits32, logits64, rtol=0, atol=FP32_LOGIT_TOLERANCE)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_fp16_file_is_close_to_expected_logits(model):
    logits, _ = load(model, "FP16").forward(PROMPT)
    assert_logits_close(logits[-1], expected_logits(model), FP16_LOGIT_TOLERANCE)


def test_6v0_3m_q5_1_dequantized_is_close_to_expected_logits():
    ref = load("6v0-3m", "Q5_1")
    assert (ref.shape.arch, ref.shape.n_embd, ref.shape.n_head, ref.shape.n_ffn) == ("v6", 128, 16, 448)
    logits, _ = ref.forward(PROMPT)
    assert_logits_close(logits[-1], expected_logits("6v0-3m"), Q5_1_VS_FP32_LOGIT_TOLERANCE)


def test_from_file_accepts_a_path():
    ref = ReferenceModel.from_file(TINY / "tiny-rwkv-5v1-730K-FP32.bin")
    np.testing.assert_array_equal(ref.forward(PROMPT)[0], load("5v1-730K").forward(PROMPT)[0])


def test_empty_token_list_returns_no_logits_and_the_same_state():
    ref = load("4v0-660K")
    logits, state = ref.forward([])
    assert logits.shape == (0, N_VOCAB)
    np.testing.assert_array_equal(state, ref.initial_state())


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [N_VOCAB, -1, 3.0, "a", True])
def test_bad_token_raises_token_error(token):
    with pytest.raises(TokenError):
        load("4v0-660K").forward([34, token])


@pytest.mark.parametrize("bad_state", [np.zeros(7680 - 1), np.zeros((2, 3840)), np.zeros(7680, dtype=np.int32)])
def test_bad_state_raises_state_error(bad_state):
    with pytest.raises(StateError):
        load("5v1-730K").forward(PROMPT, bad_state)


def test_state_of_another_architecture_is_rejected():
    v4_state = load("4v0-660K").initial_state()  # 2560 floats; v7 needs 50688
    with pytest.raises(StateError):
        load("7v0-834K").forward(PROMPT, v4_state)


def _weights_and_shape(model: str) -> tuple[dict[str, np.ndarray], ModelShape]:
    f = RwkvCppFile(TINY / f"tiny-rwkv-{model}-FP32.bin")
    ref = load(model)
    return {name: f.array(name) for name in f.tensors}, ref.shape


def test_missing_tensor_raises_missing_tensor_error():
    weights, shape = _weights_and_shape("7v0-834K")
    del weights["blocks.3.att.v2"]
    with pytest.raises(MissingTensorError, match="blocks.3.att.v2"):
        ReferenceModel(weights, shape)


def test_wrong_tensor_shape_raises_model_format_error():
    weights, shape = _weights_and_shape("6v0-1m")
    weights["blocks.0.att.time_maa_w2"] = weights["blocks.0.att.time_maa_w2"][:4]
    with pytest.raises(ModelFormatError, match="time_maa_w2"):
        ReferenceModel(weights, shape)


def test_integer_weights_raise_model_format_error():
    weights, shape = _weights_and_shape("4v0-660K")
    weights["head.weight"] = weights["head.weight"].astype(np.int32)
    with pytest.raises(ModelFormatError, match="head.weight"):
        ReferenceModel(weights, shape)


def test_weights_of_any_float_dtype_give_the_same_model():
    weights, shape = _weights_and_shape("5v2-730K")
    as_float64 = ReferenceModel({n: a.astype(np.float64) for n, a in weights.items()}, shape, group_norm_eps=1e-5)
    np.testing.assert_array_equal(as_float64.forward(PROMPT)[0], load("5v2-730K").forward(PROMPT)[0])


# --- building blocks ------------------------------------------------------------------------------

def test_group_norm_normalizes_each_head_on_its_own():
    rng = np.random.default_rng(0)
    n_head, head_size = 4, 8
    x = rng.normal(size=n_head * head_size) * np.repeat([1.0, 10.0, 0.1, 3.0], head_size)
    weight, bias = rng.normal(size=x.size), rng.normal(size=x.size)
    y = group_norm(x, weight, bias, n_head, eps=0.0)
    normed = ((y - bias) / weight).reshape(n_head, head_size)
    np.testing.assert_allclose(normed.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(normed.var(axis=1), 1.0, atol=1e-12)


def test_layer_norm_uses_the_biased_variance_and_eps():
    x = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3, biased variance 3.5
    y = layer_norm(x, np.ones(4), np.zeros(4), eps=0.5)
    np.testing.assert_allclose(y, (x - 3.0) / 2.0, rtol=1e-15)


def test_l2_normalize_heads_gives_unit_heads_and_keeps_zero_heads_zero():
    x = np.array([3.0, 4.0, 0.0, 0.0, 0.0, 5.0])
    np.testing.assert_allclose(l2_normalize_heads(x, 3), [0.6, 0.8, 0.0, 0.0, 0.0, 1.0], rtol=1e-15)

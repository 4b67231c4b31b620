"""The C forward path against rwkv.cpp's expected logits and the NumPy reference."""
import numpy as np
import pytest

import rwkvx
from rwkvx.reference import ReferenceModel

from conftest import TINY, TINY_VERSIONS, tiny_model_files

PROMPT_IN = [34, 105, 110]  # the bytes '"', 'i', 'n' behind expected-logits-*.bin
TEXT = (
    "The quick brown fox jumps over the lazy dog. RWKV is an RNN with transformer-level "
    "performance; it can be trained like a GPT.\n"
).encode()
assert len(TEXT) >= 64

# FP32 file vs rwkv.cpp's expected logits (the bound).
EXPECTED_LOGITS_TOLERANCE = 1e-4
# C (float32 arithmetic) vs the float64 reference on the same dequantized weights. Logits reach
# |20|; the worst difference seen over all shipped files is 1.0e-5 (about 60 float32 ulps at 20),
# so this leaves a 10x margin for summation-order changes in vectorized kernels.
C_VS_REFERENCE_TOLERANCE = 1e-4
# ...plus a relative part for large state values (v6 WKV states reach ~300, where 1e-4 is five
# float32 ulps): 16 float32 epsilons.
C_VS_REFERENCE_RTOL = 16 * float(np.finfo(np.float32).eps)

FP32_VERSIONS = [v for v in TINY_VERSIONS if (TINY / f"tiny-rwkv-{v}-FP32.bin").exists()]
ALL_FILES = tiny_model_files()


def expected_logits(version):
    return np.fromfile(TINY / f"expected-logits-{version}.bin", dtype="<f4")


def assert_close(actual, expected, tolerance, what, rtol=0.0):
    """|actual - expected| <= tolerance + rtol * |expected| everywhere; reports the worst element."""
    diff = np.abs(actual.astype(np.float64) - expected)
    excess = diff - (tolerance + rtol * np.abs(expected))
    worst = np.unravel_index(np.argmax(excess), diff.shape)
    assert excess[worst] <= 0, (
        f"{what}: |diff| {diff[worst]:.3g} at {worst}: expected {expected[worst]!r}, got {actual[worst]!r} "
        f"(tolerance {tolerance} + {rtol:.2g} * |expected|)"
    )


@pytest.fixture(scope="module")
def reference_runs():
    """Reference logits for TEXT, per model file (computed once: the reference is slow)."""
    cache = {}

    def run(path):
        if path not in cache:
            ref = ReferenceModel.from_file(path)
            cache[path] = ref.forward(list(TEXT))
        return cache[path]

    return run


@pytest.mark.parametrize("version", FP32_VERSIONS)
def test_fp32_matches_expected_logits_serial_and_sequence(version):
    model = rwkvx.load(TINY / f"tiny-rwkv-{version}-FP32.bin")
    assert model.arch == TINY_VERSIONS[version]
    assert model.dtype == "FP32"
    expected = expected_logits(version)
    sequence, _ = model.forward(PROMPT_IN)
    assert sequence.shape == (256,) and sequence.dtype == np.float32
    assert_close(sequence, expected, EXPECTED_LOGITS_TOLERANCE, f"{version} sequence")
    state = None
    for token in PROMPT_IN:
        serial, state = model.forward(token, state)
    assert_close(serial, expected, EXPECTED_LOGITS_TOLERANCE, f"{version} serial")


@pytest.mark.parametrize("version,fmt,path", ALL_FILES, ids=[f"{v}-{f}" for v, f, _ in ALL_FILES])
def test_every_position_matches_reference(version, fmt, path, reference_runs):
    """Every logit at every position of a 100-byte prompt, serial and sequence, equals the reference."""
    model = rwkvx.load(path)
    assert model.arch == TINY_VERSIONS[version]
    assert model.dtype == fmt
    ref_logits, ref_state = reference_runs(path)
    logits, state = model.forward(list(TEXT), logits="all")
    assert logits.shape == (len(TEXT), 256)
    assert_close(logits, ref_logits, C_VS_REFERENCE_TOLERANCE, f"{path.name} sequence")
    assert_close(state.data, ref_state, C_VS_REFERENCE_TOLERANCE, f"{path.name} state", C_VS_REFERENCE_RTOL)
    state = model.new_state()
    serial = np.stack([model.forward(t, state, inplace=True)[0] for t in TEXT])
    assert_close(serial, ref_logits, C_VS_REFERENCE_TOLERANCE, f"{path.name} serial")


@pytest.mark.parametrize("version", FP32_VERSIONS)
@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_chunked_sequence_gives_identical_state(version, chunk):
    model = rwkvx.load(TINY / f"tiny-rwkv-{version}-FP32.bin")
    tokens = list(TEXT)
    whole_logits, whole = model.forward(tokens)
    state = model.new_state()
    for start in range(0, len(tokens), chunk):
        logits, state = model.forward(tokens[start:start + chunk], state)
    np.testing.assert_array_equal(state.data, whole.data)
    np.testing.assert_array_equal(logits, whole_logits)


@pytest.mark.parametrize("version", FP32_VERSIONS)
def test_no_logits_leaves_the_same_state(version):
    model = rwkvx.load(TINY / f"tiny-rwkv-{version}-FP32.bin")
    with_logits, state_a = model.forward(list(TEXT), logits="last")
    none, state_b = model.forward(list(TEXT), logits=None)
    assert none is None
    np.testing.assert_array_equal(state_a.data, state_b.data)
    all_logits, _ = model.forward(list(TEXT), logits="all")
    np.testing.assert_array_equal(all_logits[-1], with_logits)


def test_no_logits_skips_the_head():
    """With logits=None the head is never read: a model whose head is NaN still runs and stays finite."""
    model = rwkvx.load(TINY / "tiny-rwkv-7v0-834K-FP32.bin")
    nan_head = np.full((256, 64), np.nan, dtype=np.float32)
    model._core.set_tensor(-1, "head.weight", nan_head, 0, 64, 256)
    logits, state = model.forward(list(TEXT), logits=None)
    assert logits is None and np.isfinite(state.data).all()
    logits, _ = model.forward(list(TEXT), logits="last")
    assert np.isnan(logits).all()


def test_forward_does_not_modify_the_state_passed_in():
    model = rwkvx.load(TINY / "tiny-rwkv-5v2-730K-FP32.bin")
    _, state = model.forward(list(TEXT[:10]))
    before = state.data.copy()
    _, after = model.forward(list(TEXT[10:20]), state)
    np.testing.assert_array_equal(state.data, before)
    assert not np.array_equal(after.data, before)


def test_inplace_updates_and_returns_the_same_state():
    model = rwkvx.load(TINY / "tiny-rwkv-5v2-730K-FP32.bin")
    state = model.new_state()
    _, returned = model.forward(list(TEXT[:10]), state, inplace=True)
    assert returned is state
    _, fresh = model.forward(list(TEXT[:10]))
    np.testing.assert_array_equal(state.data, fresh.data)


def test_new_state_is_the_architectures_initial_state():
    v4 = rwkvx.load(TINY / "tiny-rwkv-4v0-660K-FP32.bin").new_state()
    assert v4.data.shape == (5 * 128 * 4,)
    assert (v4.layer(2).pp == np.float32(-1e30)).all() and (v4.layer(2).aa == 0).all()
    v7 = rwkvx.load(TINY / "tiny-rwkv-7v0-834K-FP32.bin").new_state()
    assert v7.data.shape == ((2 + 64) * 64 * 12,) and not v7.data.any()
    copy = v7.copy()
    copy.data[0] = 1.0
    assert v7.data[0] == 0.0


def test_a_longer_sequence_than_one_internal_chunk_equals_serial():
    """Sequences longer than the C core's chunk (128 tokens) are split internally without changing results."""
    model = rwkvx.load(TINY / "tiny-rwkv-6v0-1m-FP32.bin")
    tokens = list(TEXT * 3)  # 300 tokens
    logits, state = model.forward(tokens, logits="all")
    serial_state = model.new_state()
    for t in tokens:
        last, _ = model.forward(t, serial_state, inplace=True)
    np.testing.assert_array_equal(state.data, serial_state.data)
    np.testing.assert_array_equal(logits[-1], last)

"""Per-level variants of the v7 recurrence and of activation quantization equal the scalar ones bit for bit.

The v7 recurrence: each level compiles the same C (rwkvx/_kernels/wkv7_body.h) with its own vector flags;
under -std=c11 nothing is contracted or reordered, so the floats must be identical, not merely close.
Activation quantization (int8 quants, scales, sums) defines every integer product downstream, so its
vector variants must reproduce the portable routine exactly, rounding ties and special values included.
"""
import numpy as np
import pytest

from rwkvx import _core

LEVELS = ("avx2", "avx512", "neon")
# (T, H, S): one token, a prefill chunk, head sizes around and at the vector widths, the real 64.
SHAPES = ((1, 1, 64), (5, 3, 64), (2, 2, 16), (3, 2, 24), (4, 1, 7), (7, 2, 33))


def inputs(T, H, S, seed):
    rng = np.random.default_rng(seed)
    C = H * S
    r, k, v = (rng.standard_normal((T, C)).astype(np.float32) for _ in range(3))
    w = rng.uniform(0.55, 1.0, (T, C)).astype(np.float32)  # v7 decays lie in (e^-0.607, 1)
    kk = rng.standard_normal((T, C)).astype(np.float32)
    alpha = rng.uniform(0.0, 1.0, (T, C)).astype(np.float32)
    state = rng.standard_normal((H, S, S)).astype(np.float32)
    return r, w, k, v, -kk, kk * alpha, state


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_wkv7_level_equals_scalar(isa, shape):
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} is not usable here")
    r, w, k, v, a, b, state = inputs(*shape, seed=sum(shape))
    scalar_state, level_state = state.copy(), state.copy()
    expected = _core.wkv7_with("scalar", r, w, k, v, a, b, scalar_state)
    actual = _core.wkv7_with(isa, r, w, k, v, a, b, level_state)
    assert np.array_equal(actual.view(np.uint32), expected.view(np.uint32)), f"{isa} {shape}: outputs differ"
    assert np.array_equal(level_state.view(np.uint32), scalar_state.view(np.uint32)), f"{isa} {shape}: state"
    assert not np.array_equal(scalar_state, state)  # the recurrence did run


def test_wkv7_refuses_mismatched_shapes():
    r, w, k, v, a, b, state = inputs(2, 2, 16, seed=0)
    with pytest.raises(ValueError):
        _core.wkv7_with("scalar", r[:, :-1].copy(), w, k, v, a, b, state)
    with pytest.raises(ValueError):
        _core.wkv7_with("scalar", r, w[:1].copy(), k, v, a, b, state)


def activation_blocks(seed):
    """Blocks exercising every rule: random scales, exact rounding ties (x * id = k + 0.5), zeros,
    subnormals, huge values, a NaN block, an infinity block, and signed zeros."""
    rng = np.random.default_rng(seed)
    blocks = [rng.standard_normal(32) * 10.0 ** rng.uniform(-6, 6) for _ in range(40)]
    ties = np.arange(-16, 16) + 0.5  # with amax 127 below, id = 1: every quant is a tie
    ties[0] = 127.0
    blocks += [ties, -ties, np.zeros(32), np.full(32, 1e-40), np.full(32, 3e38), np.r_[np.zeros(31), -0.0]]
    nan_block = rng.standard_normal(32)
    nan_block[7] = np.nan
    inf_block = rng.standard_normal(32)
    inf_block[3] = -np.inf
    blocks += [nan_block, inf_block]
    return np.concatenate(blocks).astype(np.float32)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_activation_quantization_level_equals_scalar(isa, seed):
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} is not usable here")
    x = activation_blocks(seed)
    expected = _core.quantize_blocks_with("scalar", x)
    actual = _core.quantize_blocks_with(isa, x)
    for name, a, e in zip(("quants", "stored scales", "exact scales", "sums"), actual, expected):
        assert np.array_equal(a.view(np.uint8), e.view(np.uint8)), f"{isa}: {name} differ"
    assert np.count_nonzero(expected[0]) > 0.8 * x.size  # mostly non-zero quants: the test has teeth

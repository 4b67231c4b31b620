"""The v7 recurrence of every usable kernel level equals the scalar build's bit for bit.

Each level compiles the same C (rwkvx/_kernels/wkv7_body.h) with its own vector flags; under -std=c11
nothing is contracted or reordered, so the floats must be identical, not merely close.
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

"""Per-level variants of v7's vector code and of activation quantization equal the scalar ones bit for bit.

The v7 recurrence and the per-token work before it: each level compiles the same C
(rwkvx/_kernels/wkv7_body.h, v7_gates_body.h) with its own vector flags; under -std=c11 nothing is
contracted or reordered, so the floats must be identical, not merely close.
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


GATE_SHAPES = ((1, 64), (32, 64), (3, 24), (2, 33), (1, 7))  # (H, S): real, odd and sub-vector widths
LAYER_VECTORS = ("w0", "a0", "k_k", "k_a", "v0")
ROW_VECTORS = ("w", "alpha", "k", "v", "v_first", "v_mix")


def gate_inputs(H, S, seed):
    rng = np.random.default_rng(seed)
    C = H * S
    layer = {name: rng.standard_normal(C).astype(np.float32) for name in LAYER_VECTORS}
    rows = {name: (3 * rng.standard_normal(C)).astype(np.float32) for name in ROW_VECTORS}
    # edge values where exp and sigmoid saturate, and a head of zeros (the norm's 1e-12 floor)
    rows["w"][:4] = [-200.0, 200.0, 0.0, -0.0]
    rows["alpha"][:3] = [-100.0, 100.0, 1e-30]
    rows["v_mix"][:2] = [-1e4, 1e4]
    rows["k"][:S] = 0.0
    return layer, rows


def gates_reference(H, S, layer, rows, residual):
    """v7's per-token work in float64 NumPy (the formulas of rwkvx/reference)."""
    f = {name: np.asarray(a, dtype=np.float64) for name, a in (layer | rows).items()}

    def sigmoid(x):
        with np.errstate(over="ignore"):  # e^-x = inf: sigmoid 0, as intended
            return 1.0 / (1.0 + np.exp(-x))

    w = np.exp(-np.exp(-0.5) * sigmoid(f["w0"] + f["w"]))
    alpha = sigmoid(f["a0"] + f["alpha"])
    kk = (f["k"] * f["k_k"]).reshape(H, S)
    kk = (kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)).reshape(-1)
    k = f["k"] * (1.0 + (alpha - 1.0) * f["k_a"])
    v = f["v"] + (f["v_first"] - f["v"]) * sigmoid(f["v0"] + f["v_mix"]) if residual else f["v"]
    return w, alpha, k, v, kk, -kk, kk * alpha


@pytest.mark.parametrize("residual", (True, False))
@pytest.mark.parametrize("shape", GATE_SHAPES)
def test_v7_gates_scalar_matches_numpy(shape, residual):
    layer, rows = gate_inputs(*shape, seed=sum(shape))
    actual = _core.v7_gates_with("scalar", shape[0], layer, rows, residual)
    for name, a, e in zip(("w", "alpha", "k", "v", "kk", "a", "b"), actual, gates_reference(*shape, layer, rows,
                                                                                            residual)):
        np.testing.assert_allclose(a, e, rtol=2e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("residual", (True, False))
@pytest.mark.parametrize("shape", GATE_SHAPES)
def test_v7_gates_level_equals_scalar(isa, shape, residual):
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} is not usable here")
    layer, rows = gate_inputs(*shape, seed=sum(shape))
    expected = _core.v7_gates_with("scalar", shape[0], layer, rows, residual)
    actual = _core.v7_gates_with(isa, shape[0], layer, rows, residual)
    for name, a, e in zip(("w", "alpha", "k", "v", "kk", "a", "b"), actual, expected):
        assert np.array_equal(a.view(np.uint32), e.view(np.uint32)), f"{isa} {shape}: {name} differs"


@pytest.mark.parametrize("isa", ("scalar",) + LEVELS)
def test_v7_gates_by_head_ranges_equals_one_call(isa):
    """Threads split the work by heads: two ranges together must give exactly the whole call."""
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} is not usable here")
    H, S = 5, 24
    layer, rows = gate_inputs(H, S, seed=7)
    whole = _core.v7_gates_with(isa, H, layer, rows, True)
    first = _core.v7_gates_with(isa, H, layer, rows, True, heads=(0, 2))
    second = _core.v7_gates_with(isa, H, layer, rows, True, heads=(2, 5))
    cut = 2 * S
    for name, w, a, b in zip(("w", "alpha", "k", "v", "kk", "a", "b"), whole, first, second):
        joined = np.concatenate([a[:cut], b[cut:]])
        assert np.array_equal(joined.view(np.uint32), w.view(np.uint32)), f"{isa}: {name} differs"
    # outside its range a call leaves the channels alone
    assert np.array_equal(first[0][cut:], rows["w"][cut:]) and not np.array_equal(first[0][:cut], rows["w"][:cut])


def test_v7_gates_refuses_mismatched_sizes():
    layer, rows = gate_inputs(2, 16, seed=0)
    with pytest.raises(ValueError):
        _core.v7_gates_with("scalar", 3, layer, rows, True)
    with pytest.raises(ValueError):
        _core.v7_gates_with("scalar", 2, layer, rows, True, heads=(1, 3))
    rows["k"] = rows["k"][:-1]
    with pytest.raises(ValueError):
        _core.v7_gates_with("scalar", 2, layer, rows, True)


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


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("n_blocks", (1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 50))
def test_activation_quantization_any_block_count(isa, n_blocks):
    """Runs of blocks that do not fill the levels' groups of blocks, with the NaN and infinity blocks
    moved to other places in them: every block as the scalar routine gives it."""
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} is not usable here")
    blocks = activation_blocks(n_blocks).reshape(-1, 32)
    order = np.random.default_rng(n_blocks).permutation(len(blocks))
    x = np.ascontiguousarray(blocks[order[:n_blocks]].reshape(-1))
    expected = _core.quantize_blocks_with("scalar", x)
    actual = _core.quantize_blocks_with(isa, x)
    for name, a, e in zip(("quants", "stored scales", "exact scales", "sums"), actual, expected):
        assert np.array_equal(a.view(np.uint8), e.view(np.uint8)), f"{isa}: {name} differ at {n_blocks} blocks"

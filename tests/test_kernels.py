"""Every compiled matrix-product kernel against the scalar reference (and the scalar one against NumPy).

Weights are written as raw rwkv.cpp bytes at arbitrary byte offsets (as in a memory-mapped file).
Three kinds of input:
- exact: unit scales, integer offsets and small integer activations, so every partial sum is an
  integer below 2**24 and every kernel must give the exact result, whatever its summation order.
  For quantized weights each activation block also holds a +-127, so its int8 scale is exactly 1 and
  its quants are the activations themselves: the integer block dot products (int4/5/8 x int8) of
  every SIMD level must then equal the scalar reference's (and NumPy's) exactly;
- random: results may differ from the reference only by summation order (weights are dequantized
  to the same float32 values), bounded by REORDER_TOLERANCE;
- extreme: all nibbles at -8 / +7, every INT5 high bit set or clear, INT8 at -128 / 127, zero scales.
"""
import numpy as np
import pytest

from rwkvx import _core
from rwkvx.formats.ggml_types import BLOCK_DTYPES, QK, dequantize, ggml_type
from rwkvx.reference.activations import QuantizedMatrix, block_mins, quantize_activations

TYPES = ("FP32", "FP16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
QUANTIZED = TYPES[2:]
ISAS = ("scalar", "avx2", "avx512", "neon")
EDGE_ROWS = (1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 65, 257)
EDGE_BLOCKS = (1, 2, 3, 7, 8, 9)
# Row lengths for FP32/FP16 that end in a partial 32-element block, or are one.
FLOAT_ROW_LENGTHS = (1, 7, 16, 31, 33, 47, 64, 65, 100)
REAL_SHAPES = ((64, 768), (768, 64), (768, 768), (3072, 768), (768, 3072), (2048, 2048))
MISALIGNMENTS = (0, 1, 2, 3)
TOKEN_COUNTS = (1, 2, 3, 4, 5, 7, 9, 33)

FLT_EPS = float(np.finfo(np.float32).eps)
# Summing n float32 products in another order (and with fused multiply-adds) moves the result by a
# few rounding errors of the partial sums; their random-walk growth is ~sqrt(n). Bound per element:
# REORDER_ULPS * eps * sqrt(n) * sum_i |w_i x_i|. A single mis-decoded weight moves it by ~ sum/n,
# far above this for every n tested.
REORDER_ULPS = 4.0


def usable(isa):
    if isa not in _core.compiled_isas():
        pytest.skip(f"{isa} kernels are not compiled in this build")
    if isa not in _core.supported_isas():
        pytest.skip(f"this CPU/OS cannot run {isa}")


def misaligned(raw: np.ndarray, offset: int) -> np.ndarray:
    """The same bytes, starting `offset` bytes past an aligned address."""
    buf = np.zeros(raw.nbytes + 64 + offset, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + raw.nbytes]
    out[:] = raw.reshape(-1).view(np.uint8)
    return out


def random_weights(type_name, n_rows, n_in, rng, kind="random"):
    """Raw bytes of n_rows rows of n_in weights of type_name."""
    if type_name in ("FP32", "FP16"):
        if kind == "exact":
            w = rng.integers(-8, 9, size=(n_rows, n_in)).astype(np.float32)
        else:
            w = rng.standard_normal((n_rows, n_in)).astype(np.float32)
        return w.astype(np.float32 if type_name == "FP32" else np.float16).reshape(-1).view(np.uint8)
    blocks = np.zeros(n_rows * n_in // QK, dtype=BLOCK_DTYPES[type_name])
    names = blocks.dtype.names
    if kind == "exact":
        blocks["d"] = 1.0
        if "m" in names:
            blocks["m"] = rng.integers(-4, 5, size=blocks.shape)
    else:
        blocks["d"] = rng.uniform(1e-3, 0.1, size=blocks.shape) * rng.choice([-1, 1], size=blocks.shape)
        if "m" in names:
            blocks["m"] = rng.uniform(-0.2, 0.2, size=blocks.shape)
    if type_name == "Q8_0":
        blocks["qs"] = rng.integers(-128, 128, size=blocks["qs"].shape)
    else:
        blocks["qs"] = rng.integers(0, 256, size=blocks["qs"].shape)
    if "qh" in names:
        blocks["qh"] = rng.integers(0, 2**32, size=blocks.shape, dtype=np.uint64).astype(np.uint32)
    return blocks.view(np.uint8)


def extreme_weights(type_name, n_rows, n_in, pattern):
    """Every block at one extreme: pattern 0 = lowest codes (nibbles 0, high bits clear, int8 -128),
    1 = highest codes (nibbles 15, high bits set, int8 127), 2 = zero scales over random codes."""
    blocks = np.zeros(n_rows * n_in // QK, dtype=BLOCK_DTYPES[type_name])
    names = blocks.dtype.names
    blocks["d"] = 0.0 if pattern == 2 else 0.5
    if "m" in names:
        blocks["m"] = -1.5
    if type_name == "Q8_0":
        blocks["qs"] = -128 if pattern == 0 else 127
    else:
        blocks["qs"] = 0x00 if pattern == 0 else 0xFF
    if "qh" in names:
        blocks["qh"] = 0 if pattern == 0 else 0xFFFFFFFF
    return blocks.view(np.uint8)


def dequantized(raw, type_name, n_rows, n_in):
    if type_name == "FP32":
        return raw.view(np.float32).reshape(n_rows, n_in)
    if type_name == "FP16":
        return raw.view(np.float16).astype(np.float32).reshape(n_rows, n_in)
    return dequantize(np.ascontiguousarray(raw), type_name, n_rows * n_in).reshape(n_rows, n_in)


def unit_scale_activations(x, type_name):
    """For quantized weights: put +-127 at the start of every 32-block so the block's int8 scale is 1."""
    if type_name in QUANTIZED:
        x = x.copy()
        x[:, ::QK] = np.where(np.arange(x.shape[0])[:, None] % 2 == 0, 127.0, -127.0)
    return x


def numpy_product(raw, type_name, n_rows, n_in, x):
    """float64 [T, n_rows]: W x as the C core defines it (activations quantized per block for quantized W)."""
    w = dequantized(raw, type_name, n_rows, n_in).astype(np.float64)
    if type_name not in QUANTIZED:
        return x.astype(np.float64) @ w.T
    m = QuantizedMatrix(w, type_name, block_mins(raw, type_name, (n_rows, n_in)))
    return np.stack([m @ row for row in x])


def effective_activations(x, type_name):
    """What the kernels multiply the weights by: x itself, or its per-block dequantized int8 quants."""
    if type_name not in QUANTIZED:
        return x
    return np.stack([quantize_activations(row).values for row in x]).astype(np.float32)


def run(isa, type_name, raw, n_in, n_rows, x):
    return _core.matmul_with(isa, ggml_type(type_name).id, raw, n_in, n_rows, np.ascontiguousarray(x))


def assert_within_reorder(actual, expected, w, x, what):
    """|actual - expected| <= REORDER_ULPS * eps * sqrt(n) * (|x| @ |w|.T), per element."""
    n_in = w.shape[1]
    bound = REORDER_ULPS * FLT_EPS * np.sqrt(n_in) * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64))
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    excess = err - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 0, (
        f"{what}: at (token, row) {worst} expected {expected[worst]!r}, got {actual[worst]!r}, "
        f"abs error {err[worst]:.3g} > bound {bound[worst]:.3g}"
    )


def assert_exact(actual, expected, what):
    bad = np.argwhere(actual != expected)
    assert bad.size == 0, (
        f"{what}: {len(bad)} elements differ; first at (token, row) {tuple(bad[0])}: "
        f"expected {expected[tuple(bad[0])]!r}, got {actual[tuple(bad[0])]!r}"
    )


def edge_shapes(type_name):
    lengths = [b * QK for b in EDGE_BLOCKS]
    if type_name in ("FP32", "FP16"):
        lengths += list(FLOAT_ROW_LENGTHS)
    return [(rows, n_in) for rows in EDGE_ROWS for n_in in lengths]


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_exact_inputs_give_exact_results(isa, type_name):
    usable(isa)
    rng = np.random.default_rng(1)
    for i, (n_rows, n_in) in enumerate(edge_shapes(type_name)):
        raw = random_weights(type_name, n_rows, n_in, rng, kind="exact")
        x = unit_scale_activations(rng.integers(-3, 4, size=(3, n_in)).astype(np.float32), type_name)
        expected = (x.astype(np.float64) @ dequantized(raw, type_name, n_rows, n_in).T.astype(np.float64))
        actual = run(isa, type_name, misaligned(raw, i % 4), n_in, n_rows, x)
        assert_exact(actual, expected.astype(np.float32), f"{isa} {type_name} {n_rows}x{n_in} exact")


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_edge_sizes_match_reference(isa, type_name):
    usable(isa)
    rng = np.random.default_rng(2)
    for i, (n_rows, n_in) in enumerate(edge_shapes(type_name)):
        raw = random_weights(type_name, n_rows, n_in, rng)
        x = rng.standard_normal((2, n_in)).astype(np.float32)
        w = dequantized(raw, type_name, n_rows, n_in)
        expected = run("scalar", type_name, raw, n_in, n_rows, x)
        if isa == "scalar":  # the oracle itself, against NumPy in float64
            expected = numpy_product(raw, type_name, n_rows, n_in, x).astype(np.float32)
        actual = run(isa, type_name, misaligned(raw, i % 4), n_in, n_rows, x)
        assert_within_reorder(actual, expected, w, effective_activations(x, type_name),
                              f"{isa} {type_name} {n_rows}x{n_in}")


@pytest.mark.parametrize("offset", MISALIGNMENTS)
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_misaligned_weights_give_identical_results(isa, type_name, offset):
    usable(isa)
    rng = np.random.default_rng(3)
    n_rows, n_in = 17, 9 * QK
    raw = random_weights(type_name, n_rows, n_in, rng)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    aligned = run(isa, type_name, misaligned(raw, 0), n_in, n_rows, x)
    assert_exact(run(isa, type_name, misaligned(raw, offset), n_in, n_rows, x), aligned,
                 f"{isa} {type_name} offset {offset}")


@pytest.mark.parametrize("pattern", (0, 1, 2))
@pytest.mark.parametrize("type_name", QUANTIZED)
@pytest.mark.parametrize("isa", ISAS)
def test_extreme_quants(isa, type_name, pattern):
    usable(isa)
    n_rows, n_in = 9, 7 * QK
    raw = extreme_weights(type_name, n_rows, n_in, pattern)
    x = unit_scale_activations(np.random.default_rng(4).integers(-3, 4, size=(2, n_in)).astype(np.float32), type_name)
    # scales 0.5 / 0, offset -1.5 and unit activation scales make every product and partial sum exact
    expected = (x.astype(np.float64) @ dequantized(raw, type_name, n_rows, n_in).T).astype(np.float32)
    assert_exact(run(isa, type_name, misaligned(raw, 1), n_in, n_rows, x), expected,
                 f"{isa} {type_name} pattern {pattern}")


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_real_shapes_match_reference(isa, type_name):
    usable(isa)
    rng = np.random.default_rng(5)
    for n_rows, n_in in REAL_SHAPES:
        raw = random_weights(type_name, n_rows, n_in, rng)
        # one token too: there the float products read rows of 256-2048 inputs one at a time
        for n_tokens in (1, 2):
            x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
            expected = run("scalar", type_name, raw, n_in, n_rows, x)
            actual = run(isa, type_name, misaligned(raw, 3), n_in, n_rows, x)
            assert_within_reorder(actual, expected, dequantized(raw, type_name, n_rows, n_in),
                                  effective_activations(x, type_name),
                                  f"{isa} {type_name} {n_rows}x{n_in} T={n_tokens}")


@pytest.mark.parametrize("n_rows", (7, 19, 67))
@pytest.mark.parametrize("blocks", (3, 8, 65, 129))
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_token_count_does_not_change_any_result(isa, type_name, blocks, n_rows):
    """Sequence mode must equal one token at a time bit for bit: tiles of tokens never mix (also where
    one token reads its rows in other tiles than a tile of tokens does: float rows of 256-2048 inputs
    one at a time on AVX-512; on AVX2, float rows four at a time, from four quarters of 16 rows or more
    (19, 67) or neighbouring rows below (7) at fewer than 32 tokens, neighbours at 32 or more (33))."""
    usable(isa)
    rng = np.random.default_rng(6)
    n_in = blocks * QK if type_name in QUANTIZED else blocks * QK + 5
    raw = random_weights(type_name, n_rows, n_in, rng)
    x = rng.standard_normal((max(TOKEN_COUNTS), n_in)).astype(np.float32)
    one_at_a_time = np.concatenate([run(isa, type_name, raw, n_in, n_rows, x[t:t + 1]) for t in range(len(x))])
    for T in TOKEN_COUNTS:
        assert_exact(run(isa, type_name, raw, n_in, n_rows, x[:T]), one_at_a_time[:T], f"{isa} {type_name} T={T}")


def test_unusable_level_is_refused():
    unusable = [isa for isa in ISAS if isa not in _core.supported_isas()]
    if not unusable:
        pytest.skip("every level is usable here")
    from rwkvx.errors import BackendError

    with pytest.raises(BackendError, match="not usable"):
        run(unusable[0], "FP32", np.zeros(4 * 32, np.uint8), 32, 1, np.zeros((1, 32), np.float32))


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_activation_quantization_follows_ggml_rules(type_name):
    """Hand-checked block: amax 2.54 -> d = 0.02, quants round(x / d) with halves away from zero."""
    x = np.zeros((1, QK), np.float32)
    x[0, :4] = [2.54, -0.03, 0.01, 1.27]  # q = 127, -1.5 -> -2, 0.5 -> 1, 63.5 -> 64
    q = quantize_activations(x[0])
    d = np.float64(np.float16(np.float32(2.54) / np.float32(127)))
    np.testing.assert_array_equal(q.values[:4] / d, [127, -2, 1, 64])
    # the C kernels see the same quants: W = identity rows of one block with unit weights
    raw = random_weights(type_name, 4, QK, np.random.default_rng(0), kind="exact")
    assert_exact(run("scalar", type_name, raw, QK, 4, x).astype(np.float64),
                 numpy_product(raw, type_name, 4, QK, x).astype(np.float32).astype(np.float64), type_name)


def test_bandwidth_probe_reads_every_word():
    """read_bytes (the benchmark's probe) returns the xor of all 8-byte words, so no read is skipped,
    with or without its prefetches (which reach past the buffer's end here)."""
    words = np.random.default_rng(5).integers(0, 2**63, size=1000 + 7, dtype=np.uint64)
    expected = int(np.bitwise_xor.reduce(words))
    last = int(words[-1])  # cut to 5 bytes below: the partial word zero-padded
    assert _core.read_bytes(words.view(np.uint8)) == expected
    assert _core.read_bytes(words.view(np.uint8), 2048, 4096) == expected
    for streams in (2, 4, 8):  # 1007 words: parts of 62, 31, 15 lines and words left after them
        assert _core.read_bytes(words.view(np.uint8), 0, 0, streams) == expected
        assert _core.read_bytes(words.view(np.uint8)[:-3], 256, 1024, streams) == expected ^ last ^ (last & (2**40 - 1))
    with pytest.raises(ValueError, match="streams"):
        _core.read_bytes(words.view(np.uint8), 0, 0, 3)
    assert _core.read_bytes(words.view(np.uint8)[:-3], 64, 0) == expected ^ last ^ (last & (2**40 - 1))
    # windows of whole lines, the last one short (and ending in the partial word); a window that is no
    # whole line is taken down to one, and one as large as the buffer or larger reads it at once
    for window in (64, 640, 1004, 4096, 8056, 1 << 20):
        for streams in (1, 4):
            assert _core.read_bytes(words.view(np.uint8), 0, 0, streams, window) == expected
            assert (_core.read_bytes(words.view(np.uint8)[:-3], 256, 1024, streams, window)
                    == expected ^ last ^ (last & (2**40 - 1)))
    assert _core.read_bytes(words.view(np.uint8), 0, 0, 4, 63) == expected  # below a line: the whole buffer

"""The packed16 layout (rwkvx/_kernels/packed.h): quantized matrices with 16 rows interleaved.

The layout only moves bytes, and its products repeat the scalar reference's arithmetic in the
reference's order, so everything here is checked for exact equality, bit for bit:
- the portable product over a packed matrix equals the scalar reference over the file's rows;
- every compiled SIMD product over the packed layout equals the portable one;
- a model packed at load gives the same logits as the scalar level on the file's layout.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import rwkvx
from rwkvx import _core
from rwkvx.formats.ggml_types import ggml_type
from test_kernels import extreme_weights, misaligned, random_weights

QUANTIZED = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
PACK_ROWS = 16
# Row counts around the group size (a partial last group is padded), block counts around the
# number of block columns a kernel handles per step.
EDGE_ROWS = (1, 2, 15, 16, 17, 31, 33, 100)
EDGE_BLOCKS = (1, 2, 3, 5, 8)
TOKEN_COUNTS = (1, 2, 3, 4, 5, 8, 9, 13)
SIMD_LEVELS = ("avx2", "avx512")  # levels with a kernel of their own for the packed layout
# The two arrangements of the Q5 types' fifth bits (packed.h), and the products that read each: the SIMD
# levels their own, the scalar reference both.
LAYOUTS = {"masks": _core.PACKED16, "planes": _core.PACKED16_PLANES}
PRODUCTS = (("scalar", "masks"), ("scalar", "planes"), ("avx2", "planes"), ("avx512", "masks"))
TINY = os.path.join(os.path.dirname(__file__), "data", "tiny")


def activations(rng, n_tokens, n_in, kind="random"):
    if kind == "edge":  # zeros, a huge block, a tiny block and sign flips: every quantization branch
        x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
        x[0, :32] = 0.0
        if n_in >= 64:
            x[:, 32:64] *= 1e30
        if n_in >= 96:
            x[:, 64:96] *= 1e-30
        return x
    return (rng.standard_normal((n_tokens, n_in)) * rng.uniform(0.1, 10.0)).astype(np.float32)


def scalar_file_layout(type_name, raw, n_in, n_rows, x):
    return _core.matmul_with("scalar", ggml_type(type_name).id, raw, n_in, n_rows, x)


def packed_product(isa, layout, type_name, raw, n_in, n_rows, x):
    type_id = ggml_type(type_name).id
    packed = _core.pack_matrix(type_id, raw, n_in, n_rows, LAYOUTS[layout])
    return _core.matmul_packed_with(isa, type_id, packed, n_in, n_rows, x, LAYOUTS[layout])


def assert_identical(actual, expected, what):
    assert actual.shape == expected.shape, what
    same = (actual.view(np.uint32) == expected.view(np.uint32))
    assert same.all(), f"{what}: {np.count_nonzero(~same)} of {same.size} outputs differ, first at " \
                       f"{np.argwhere(~same)[0]}: {actual[~same][0]!r} vs {expected[~same][0]!r}"


def usable(isa):
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} is not usable here")


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_packed_size_is_the_file_size_rounded_to_whole_groups(type_name):
    type_id = ggml_type(type_name).id
    for n_rows in EDGE_ROWS:
        raw = random_weights(type_name, n_rows, 64, np.random.default_rng(n_rows))
        packed = _core.pack_matrix(type_id, raw, 64, n_rows)
        groups = -(-n_rows // PACK_ROWS)
        assert packed.nbytes == groups * PACK_ROWS * _core.row_bytes(type_id, 64)
        assert packed.ctypes.data % 64 == 0


@pytest.mark.parametrize("type_name", QUANTIZED)
@pytest.mark.parametrize("isa,layout", PRODUCTS)
def test_packed_products_equal_the_scalar_reference_on_edge_sizes(isa, layout, type_name):
    usable(isa)
    rng = np.random.default_rng(7)
    for n_rows in EDGE_ROWS:
        for n_blocks in EDGE_BLOCKS:
            n_in = 32 * n_blocks
            raw = misaligned(random_weights(type_name, n_rows, n_in, rng), n_rows % 4)
            x = activations(rng, TOKEN_COUNTS[(n_rows + n_blocks) % len(TOKEN_COUNTS)], n_in)
            assert_identical(packed_product(isa, layout, type_name, raw, n_in, n_rows, x),
                             scalar_file_layout(type_name, raw, n_in, n_rows, x),
                             f"{isa} {layout} {type_name} {n_rows}x{n_in}")


@pytest.mark.parametrize("type_name", QUANTIZED)
@pytest.mark.parametrize("isa,layout", PRODUCTS)
@pytest.mark.parametrize("n_tokens", TOKEN_COUNTS)
def test_every_token_count_gives_the_reference_result(isa, layout, type_name, n_tokens):
    usable(isa)
    rng = np.random.default_rng(n_tokens)
    n_rows, n_in = 48, 256
    raw = random_weights(type_name, n_rows, n_in, rng)
    x = activations(rng, n_tokens, n_in, kind="edge")
    assert_identical(packed_product(isa, layout, type_name, raw, n_in, n_rows, x),
                     scalar_file_layout(type_name, raw, n_in, n_rows, x), f"{isa} {layout} {type_name} T={n_tokens}")


@pytest.mark.parametrize("type_name", QUANTIZED)
@pytest.mark.parametrize("isa,layout", PRODUCTS)
def test_one_token_over_groups_read_side_by_side(isa, layout, type_name):
    """At one token the AVX2 product reads whole groups from two far-apart parts at once, and any group
    left over (an odd count, a partial last group) alone: every way of splitting gives the reference."""
    usable(isa)
    rng = np.random.default_rng(11)
    for n_rows in (32, 33, 48, 50, 64, 100, 130, 160):
        n_in = 32 * (1 + n_rows % 5)
        raw = random_weights(type_name, n_rows, n_in, rng)
        x = activations(rng, 1, n_in, kind="edge" if n_rows % 2 else "random")
        assert_identical(packed_product(isa, layout, type_name, raw, n_in, n_rows, x),
                         scalar_file_layout(type_name, raw, n_in, n_rows, x), f"{isa} {layout} {type_name} {n_rows} rows")


@pytest.mark.parametrize("type_name", QUANTIZED)
@pytest.mark.parametrize("isa,layout", PRODUCTS)
@pytest.mark.parametrize("pattern", (0, 1, 2))
def test_extreme_codes_and_scales(isa, layout, type_name, pattern):
    usable(isa)
    rng = np.random.default_rng(pattern)
    n_rows, n_in = 33, 96
    raw = extreme_weights(type_name, n_rows, n_in, pattern)
    x = activations(rng, 3, n_in)
    assert_identical(packed_product(isa, layout, type_name, raw, n_in, n_rows, x),
                     scalar_file_layout(type_name, raw, n_in, n_rows, x), f"{isa} {layout} {type_name} pattern {pattern}")


@pytest.mark.parametrize("type_name", QUANTIZED)
@pytest.mark.parametrize("isa,layout", [p for p in PRODUCTS if p[0] in SIMD_LEVELS])
def test_real_shapes(isa, layout, type_name):
    usable(isa)
    rng = np.random.default_rng(3)
    for n_rows, n_in in ((768, 768), (3072, 768), (768, 3072)):
        raw = random_weights(type_name, n_rows, n_in, rng)
        x = activations(rng, 5, n_in)
        assert_identical(packed_product(isa, layout, type_name, raw, n_in, n_rows, x),
                         scalar_file_layout(type_name, raw, n_in, n_rows, x), f"{isa} {layout} {type_name} {n_rows}x{n_in}")


def test_each_level_packs_into_the_layout_its_product_reads():
    for isa, layout in PRODUCTS:
        if isa in SIMD_LEVELS and isa in _core.supported_isas():
            assert _core.packed_layout(isa) == LAYOUTS[layout], isa
    assert _core.packed_layout("scalar") == _core.PACKED16


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_the_layouts_differ_only_in_the_arrangement_of_the_fifth_bits(type_name):
    """Same size, same scales and codes; for Q5 types the fifth bits' bytes differ (so the tests above
    run the reference over both arrangements, not one twice)."""
    type_id = ggml_type(type_name).id
    n_rows, n_in = 33, 96
    raw = random_weights(type_name, n_rows, n_in, np.random.default_rng(5))
    masks, planes = (_core.pack_matrix(type_id, raw, n_in, n_rows, LAYOUTS[k]) for k in ("masks", "planes"))
    assert masks.nbytes == planes.nbytes
    differ = np.count_nonzero(masks != planes)
    if type_name.startswith("Q5"):
        fifth_bit_bytes = 64 * (n_in // 32) * -(-n_rows // PACK_ROWS)
        assert 0 < differ <= fifth_bit_bytes
    else:
        assert differ == 0


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_flipped_fifth_bit_is_caught(layout):
    """The reference reads the fifth bits of each arrangement: flipping any one changes the product."""
    rng = np.random.default_rng(13)
    type_id = ggml_type("Q5_1").id
    raw = random_weights("Q5_1", 16, 32, rng)
    x = activations(rng, 1, 32)
    expected = scalar_file_layout("Q5_1", raw, 32, 16, x)
    packed = _core.pack_matrix(type_id, raw, 32, 16, LAYOUTS[layout])
    fifth_bits_offset = 2 * 2 * PACK_ROWS  # after the column's scales d and minima m
    for byte in (0, 31, 63):
        corrupted = packed.copy()
        corrupted[fifth_bits_offset + byte] ^= 0x01
        assert not np.array_equal(
            _core.matmul_packed_with("scalar", type_id, corrupted, 32, 16, x, LAYOUTS[layout]), expected)


def test_a_simd_product_refuses_a_layout_it_does_not_read():
    isa = next((i for i in SIMD_LEVELS if i in _core.supported_isas()), None)
    if isa is None:
        pytest.skip("no SIMD level with a packed product here")
    other = _core.PACKED16 if _core.packed_layout(isa) == _core.PACKED16_PLANES else _core.PACKED16_PLANES
    raw = random_weights("Q5_0", 16, 64, np.random.default_rng(1))
    packed = _core.pack_matrix(ggml_type("Q5_0").id, raw, 64, 16, other)
    with pytest.raises(ValueError, match="reads only"):
        _core.matmul_packed_with(isa, ggml_type("Q5_0").id, packed, 64, 16, np.zeros((1, 64), np.float32), other)


def test_a_mis_packed_byte_is_caught():
    """The comparison above can fail: one flipped code byte in a packed matrix changes the product."""
    rng = np.random.default_rng(11)
    raw = random_weights("Q4_0", 16, 64, rng)
    x = activations(rng, 1, 64)
    packed = _core.pack_matrix(ggml_type("Q4_0").id, raw, 64, 16)
    packed[5] ^= 0x11
    corrupted = _core.matmul_packed_with("scalar", ggml_type("Q4_0").id, packed, 64, 16, x)
    assert not np.array_equal(corrupted, scalar_file_layout("Q4_0", raw, 64, 16, x))


def test_bad_arguments_are_refused():
    raw = random_weights("Q8_0", 16, 64, np.random.default_rng(0))
    with pytest.raises(ValueError):
        _core.pack_matrix(ggml_type("Q8_0").id, raw[:-1], 64, 16)
    with pytest.raises(ValueError):
        _core.pack_matrix(ggml_type("FP32").id, np.zeros(16 * 64 * 4, np.uint8), 64, 16)
    packed = _core.pack_matrix(ggml_type("Q8_0").id, raw, 64, 16)
    with pytest.raises(ValueError):
        _core.matmul_packed_with("scalar", ggml_type("Q8_0").id, packed[:-1], 64, 16, np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError):
        _core.matmul_packed_with("scalar", ggml_type("Q8_0").id, packed, 64, 16, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError):
        _core.pack_matrix(ggml_type("Q8_0").id, raw, 64, 16, 7)
    with pytest.raises(ValueError):
        rwkvx.load(os.path.join(TINY, "tiny-rwkv-7v0-834K-Q8_0.bin"), pack="yes")


def quantized_tiny_models():
    return sorted(f for f in os.listdir(TINY) if f.endswith(".bin") and any(q in f for q in QUANTIZED))


TOKENS = list(b"The packed layout must not change a single bit of the state.")

SCALAR_STATE_SCRIPT = """
import sys, numpy as np, rwkvx
path, out, tokens = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
model = rwkvx.load(path, threads=1, pack=False)
state = model.new_state()
model.forward(tokens, state, logits=None, inplace=True)
np.save(out, state.data)
"""


def state_after(model):
    state = model.new_state()
    model.forward(TOKENS, state, logits=None, inplace=True)
    return state.data


# Models whose every matrix product is quantized: v6 and v7 add low-rank F32/F16 matrices (and every
# model's head is FP16), whose float products legitimately differ between levels by summation order.
ALL_QUANTIZED_PRODUCTS = [n for n in quantized_tiny_models() if n.split("-")[2][:3] in ("4v0", "5v1", "5v2")]


@pytest.mark.parametrize("name", ALL_QUANTIZED_PRODUCTS)
def test_packed_model_state_equals_the_scalar_level_bit_for_bit(name, tmp_path):
    """Packed at load, with threads splitting every product, a model whose products are all quantized
    ends in the same state, bit for bit, as the scalar kernels on the file's own layout (another process)."""
    path = os.path.join(TINY, name)
    out = tmp_path / "scalar.npy"
    env = dict(os.environ, RWKVX_ISA="scalar")
    result = subprocess.run([sys.executable, "-c", SCALAR_STATE_SCRIPT, path, str(out), ",".join(map(str, TOKENS))],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for threads in (1, 2):
        model = rwkvx.load(path, threads=threads, pack=True)
        assert model.packed_bytes > 0
        assert_identical(state_after(model), np.load(out), f"{name} packed, {threads} threads")


# Same model, packed or not, at the active level: the products differ only where the level's
# file-layout kernel sums in another order than the reference (float rounding, amplified through the
# layers of a tiny model by the int8 activation quantization); a mis-wired packed matrix (wrong group,
# wrong thread share) gives logits unrelated to the model's.
PACKED_VS_UNPACKED_RMS = 0.1


@pytest.mark.parametrize("name", quantized_tiny_models())
def test_packed_and_unpacked_models_agree(name):
    path = os.path.join(TINY, name)
    one, two = rwkvx.load(path, threads=1, pack=True), rwkvx.load(path, threads=2, pack=True)
    packed = one.forward(TOKENS, one.new_state(), logits="all")[0]
    assert_identical(two.forward(TOKENS, two.new_state(), logits="all")[0], packed, f"{name}: 1 vs 2 threads")
    plain = rwkvx.load(path, threads=2, pack=False)
    unpacked = plain.forward(TOKENS, plain.new_state(), logits="all")[0]
    rms = float(np.sqrt(np.mean((packed - unpacked) ** 2)))
    spread = float(np.std(unpacked))
    assert rms <= PACKED_VS_UNPACKED_RMS * max(spread, 1.0), f"{name}: RMS {rms} (logit spread {spread})"


def test_packing_is_the_default_exactly_where_the_level_has_a_kernel_for_it():
    model = rwkvx.load(os.path.join(TINY, "tiny-rwkv-7v0-834K-Q5_1.bin"))
    assert (model.packed_bytes > 0) == _core.active_prefers_packed()
    assert _core.active_prefers_packed() == (_core.active_isa() in SIMD_LEVELS)
    unpacked = rwkvx.load(os.path.join(TINY, "tiny-rwkv-7v0-834K-Q5_1.bin"), pack=False)
    assert unpacked.packed_bytes == 0


@pytest.mark.parametrize("name", ["tiny-rwkv-7v0-834K-FP16.bin", "tiny-rwkv-6v0-1m-FP32.bin"])
def test_float_models_are_moved_unchanged(name):
    """pack=True copies F32/F16 matrices into the kernels' memory as they are: identical logits."""
    path = os.path.join(TINY, name)
    moved, mapped = rwkvx.load(path, pack=True), rwkvx.load(path, pack=False)
    assert moved.packed_bytes > 0 and mapped.packed_bytes == 0
    assert not any(moved._core.is_packed(i, "att.key.weight") for i in range(moved.n_layer))
    assert_identical(moved.forward(TOKENS, moved.new_state(), logits="all")[0],
                     mapped.forward(TOKENS, mapped.new_state(), logits="all")[0], name)

"""pytest-benchmark cases for the matrix-product kernels: GB/s of weights streamed, per level and type.

Run: python -m pytest bench/test_bench_kernels.py -m bench  (excluded from the default test run).
Each case streams a weight matrix much larger than the caches (T = 1, one thread), so it measures
how close one core's kernel gets to memory bandwidth; extra_info holds the GB/s.
"""
import numpy as np
import pytest

from rwkvx import _core
from rwkvx.formats.ggml_types import ggml_type

pytestmark = pytest.mark.bench

TYPES = ("FP32", "FP16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
N_IN, N_ROWS = 2048, 8192  # v7 1.5B's ffn.key shape: 16.8M weights


def weights(type_name):
    n_bytes = _core.row_bytes(ggml_type(type_name).id, N_IN) * N_ROWS
    raw = np.random.default_rng(0).integers(0, 256, size=n_bytes, dtype=np.uint8)
    if type_name in ("FP32", "FP16"):  # finite values only
        dtype = np.float32 if type_name == "FP32" else np.float16
        raw = np.random.default_rng(0).standard_normal(n_bytes // np.dtype(dtype).itemsize).astype(dtype)
        raw = raw.view(np.uint8)
    else:  # scales: set each block's first half to a small finite value
        block = _core.row_bytes(ggml_type(type_name).id, 32)
        raw = raw.reshape(-1, block)
        raw[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        if type_name in ("Q4_1", "Q5_1"):
            raw[:, 2:4] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        raw = raw.reshape(-1)
    return raw


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("isa", ("scalar", "avx2", "avx512", "neon"))
def test_matvec_bandwidth(benchmark, isa, type_name):
    if isa not in _core.supported_isas():
        pytest.skip(f"{isa} not usable here")
    raw = weights(type_name)
    x = np.random.default_rng(1).standard_normal((1, N_IN)).astype(np.float32)
    type_id = ggml_type(type_name).id
    benchmark(_core.matmul_with, isa, type_id, raw, N_IN, N_ROWS, x)
    benchmark.extra_info["GB/s"] = raw.nbytes / benchmark.stats.stats.min / 1e9

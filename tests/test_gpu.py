"""GPU kernels and the offloaded model against the NumPy specification and the CPU core.

Marked `gpu` (run with `pytest -m gpu`); skipped without PyCUDA, a driver or a device. Never run on the
machine this was written on (no GPU there): the tolerances below are derived, not tuned.
"""
import glob
import os

import numpy as np
import pytest

from rwkvx.offload import Offload

from offload_helpers import PROMPT, linked_state

pytestmark = pytest.mark.gpu
TINY = os.path.join(os.path.dirname(__file__), "data", "tiny")
TINY_MODELS = sorted(glob.glob(os.path.join(TINY, "tiny-rwkv-*.bin")))
F32_EPS = np.finfo(np.float32).eps
F16_EPS = 2.0 ** -10  # FP16 sequence products round x to half before cuBLAS
OP_REL_TOL = 64 * F32_EPS  # pointwise ops: a few roundings of exp/tanh in different libm implementations
MODEL_LOGITS_TOL = 2e-3  # tiny models' logits are O(10); a float32 model differs by ~1e-5 in different order
FP16_SEQUENCE_LOGITS_TOL = 5e-2
TYPES = ("FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
TYPE_IDS = {"FP32": 0, "FP16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 7, "Q5_1": 8, "Q8_0": 9}


@pytest.fixture(scope="module")
def cuda_ops():
    from rwkvx.cuda.driver import gpu_info
    from rwkvx.cuda.errors import GPUUnavailableError

    info = gpu_info()
    if not info["available"]:
        pytest.skip(info["reason"])
    from rwkvx.cuda.backend import open_backend

    try:
        ops = open_backend(0)
    except GPUUnavailableError as exc:
        pytest.skip(str(exc))
    ops.activate()
    yield ops
    ops.deactivate()
    ops.close()


def _both(cuda_ops, *arrays):
    """Each array as a NumPy buffer and as a device buffer with the same contents."""
    return [(a.astype(np.float32).copy(), cuda_ops.upload(a)) for a in arrays]


def _fetch(cuda_ops, buf):
    out = np.empty(buf.shape, dtype=np.float32)
    cuda_ops.to_host(out, buf)
    return out


def _assert_close(actual, expected, scale, tol, what):
    err = np.abs(actual - expected)
    bound = tol * np.maximum(scale, 1.0)
    i = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{what}: at {i} expected {expected[i]}, got {actual[i]}, |err| {err[i]}"


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n_tokens", [1, 3, 8, 9, 17])
@pytest.mark.parametrize("n_rows, n_in", [(1, 32), (7, 64), (65, 256), (257, 96)])
def test_matmul_matches_numpy(cuda_ops, type_name, n_tokens, n_rows, n_in):
    from rwkvx.cuda.ops_numpy import NumpyOps
    from rwkvx.formats.quantize_numpy import quantize_rows

    rng = np.random.default_rng(n_rows * 1000 + n_in + n_tokens)
    raw = quantize_rows(rng.standard_normal((n_rows, n_in)).astype(np.float32), type_name)
    x = rng.standard_normal((n_tokens, n_in + 32)).astype(np.float32)  # x_col = 32: a column slice
    ref_w, dev_w = NumpyOps().weight(raw, TYPE_IDS[type_name], n_in, n_rows), cuda_ops.weight(
        raw, TYPE_IDS[type_name], n_in, n_rows)
    y = np.zeros((n_tokens, n_rows), dtype=np.float32)
    NumpyOps().matmul(ref_w, x, y, x_col=32)
    dev_y = cuda_ops.empty((n_tokens, n_rows))
    cuda_ops.matmul(dev_w, cuda_ops.upload(x), dev_y, x_col=32)
    scale = np.abs(x[:, 32:]) @ np.abs(ref_w.matrix).T  # bound on the sum's rounding error
    tol = 2 * F16_EPS if type_name == "FP16" and n_tokens >= 16 else n_in * F32_EPS
    _assert_close(_fetch(cuda_ops, dev_y), y, scale, tol, f"matmul {type_name}")


POINTWISE = {  # op -> (arguments built from (T, C) activations a..e and per-channel p, q)
    "lerp_mix": lambda a, b, c, d, e, p, q: (a, b, p, c),
    "delta_mix": lambda a, b, c, d, e, p, q: (a, b, p, c, d),
    "add": lambda a, b, c, d, e, p, q: (a, b),
    "tanh": lambda a, b, c, d, e, p, q: (a,),
    "sigmoid": lambda a, b, c, d, e, p, q: (a,),
    "relu_squared": lambda a, b, c, d, e, p, q: (a,),
    "mul_sigmoid": lambda a, b, c, d, e, p, q: (a, b),
    "mul_silu": lambda a, b, c, d, e, p, q: (a, b),
    "decay_v6": lambda a, b, c, d, e, p, q: (a, p),
    "decay_v7": lambda a, b, c, d, e, p, q: (a, p),
    "sigmoid_bias": lambda a, b, c, d, e, p, q: (a, p),
    "value_residual": lambda a, b, c, d, e, p, q: (a, b, c, p),
    "token_shift": lambda a, b, c, d, e, p, q: (a, b, p),
    "layer_norm": lambda a, b, c, d, e, p, q: (a, b, p, q, 1e-5),
    "group_norm": lambda a, b, c, d, e, p, q: (a, b, p, q, 4, 64e-5),
    "v7_keys": lambda a, b, c, d, e, p, q: (a, b, p, q, c, d, 4),
    "v7_bonus_gate": lambda a, b, c, d, e, p, q: (a, b, c, d, e, p, 4),
}


@pytest.mark.parametrize("op", POINTWISE)
@pytest.mark.parametrize("n_tokens", [1, 5])
def test_pointwise_ops_match_numpy(cuda_ops, op, n_tokens):
    from rwkvx.cuda.ops_numpy import NumpyOps

    rng = np.random.default_rng(len(op) + n_tokens)
    C = 256
    acts = [rng.standard_normal((n_tokens, C)).astype(np.float32) for _ in range(5)]
    params = [rng.standard_normal(C).astype(np.float32) for _ in range(2)]
    pairs = _both(cuda_ops, *acts, *params)
    host_args = POINTWISE[op](*[h for h, _ in pairs])
    dev_args = POINTWISE[op](*[d for _, d in pairs])
    getattr(NumpyOps(), op)(*host_args)
    getattr(cuda_ops, op)(*dev_args)
    for (host, dev) in pairs:  # every buffer, written or not, must agree
        _assert_close(_fetch(cuda_ops, dev), host, np.abs(host), OP_REL_TOL, op)


@pytest.mark.parametrize("kind", ["wkv4", "wkv5", "wkv6", "wkv7"])
@pytest.mark.parametrize("head_size", [8, 64])
def test_wkv_matches_numpy(cuda_ops, kind, head_size):
    from rwkvx.cuda.ops_numpy import NumpyOps

    rng = np.random.default_rng(head_size)
    T, H = 6, 3
    C = H * head_size
    act = lambda: (0.5 * rng.standard_normal((T, C))).astype(np.float32)
    decay = lambda shape: rng.uniform(0.5, 0.99, shape).astype(np.float32)
    y = np.zeros((T, C), np.float32)
    if kind == "wkv4":
        state = np.concatenate([np.zeros(2 * C), rng.standard_normal(2 * C), np.full(C, -1e30)]).astype(np.float32)
        args = [act(), act(), act()[0], -decay(C), state, y]
    elif kind in ("wkv5", "wkv6"):
        w = decay(C) if kind == "wkv5" else decay((T, C))
        args = [act(), act(), act(), act()[0], w, rng.standard_normal(H * head_size ** 2).astype(np.float32), y, H]
    else:
        kk = act()
        kk /= np.linalg.norm(kk.reshape(T, H, -1), axis=2, keepdims=True).repeat(head_size, axis=2).reshape(T, C)
        args = [act(), decay((T, C)), act(), act(), -kk, kk * 0.5, rng.standard_normal(H * head_size ** 2).astype(np.float32), y, H]
    name = "wkv5" if kind == "wkv6" else kind
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    dev = {id(a): cuda_ops.upload(a) for a in arrays}
    getattr(NumpyOps(), name)(*args)
    getattr(cuda_ops, name)(*[dev.get(id(a), a) if isinstance(a, np.ndarray) else a for a in args])
    for a in arrays:
        _assert_close(_fetch(cuda_ops, dev[id(a)]), a, np.abs(a), T * head_size * F32_EPS * 4, kind)


PLACEMENTS = {
    "all": Offload(layers="all"),
    "head only": Offload(layers=0, head=True),
    "last 3 + head": Offload(layers=3),
    "first 2 only": Offload(layers=[0, 1], head=False),
}


@pytest.mark.parametrize("path", TINY_MODELS, ids=os.path.basename)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_offloaded_model_matches_the_reference(cuda_ops, path, placement):
    import rwkvx
    from rwkvx.cuda.runner import OffloadRunner
    from rwkvx.reference import ReferenceModel

    model = rwkvx.load(path)
    reference_logits, _ = ReferenceModel.from_file(model.source).forward([int(t) for t in PROMPT])
    _, cpu_state = model.forward(PROMPT, logits=None)
    runner = OffloadRunner(model, PLACEMENTS[placement].plan(model), cuda_ops)
    state = linked_state(model)
    logits = runner.forward(PROMPT, state, "all")  # sequence mode (cuBLAS for FP16/FP32 at 17 tokens)
    tol = FP16_SEQUENCE_LOGITS_TOL if model.dtype == "FP16" else MODEL_LOGITS_TOL
    assert np.abs(logits - reference_logits).max() < tol
    assert np.abs(state.data - cpu_state.data).max() < tol
    serial = linked_state(model)
    for token in PROMPT:
        last = runner.forward(np.array([token], dtype=np.int32), serial, "last")
    assert np.abs(last - reference_logits[-1]).max() < MODEL_LOGITS_TOL
    assert runner.forward(PROMPT[:1], serial, None) is None

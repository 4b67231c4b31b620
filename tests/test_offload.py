"""Offload policies and plans (CPU only), the offload runner driven by the NumPy ops, and the error
raised when no GPU backend is available."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from rwkvx.architecture import ModelShape
from rwkvx.cuda.errors import GPUUnavailableError
from rwkvx.errors import BackendError
from rwkvx.architecture import MATRIX_TENSORS
from rwkvx.offload import GPU_CHUNK_TOKENS, Offload, OffloadPolicyError, UnitSizes

from offload_helpers import PROMPT, linked_state

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny")
TINY_MODELS = sorted(glob.glob(os.path.join(TINY, "tiny-rwkv-*.bin")))
# NumpyOps computes in float32 like the C core, in a different order: differences are rounding only.
RUNNER_LOGITS_TOL = 5e-5
RUNNER_STATE_TOL = 5e-5
# The device path multiplies float activations by dequantized weights (exact math); the CPU core
# quantizes activations per block before products with quantized weights. Against each other they
# differ by what that quantization costs (tests/test_model.py names it).
from test_model import ACTIVATION_Q8_LOGIT_MAX_TOLERANCE, ACTIVATION_Q8_STATE_ATOL, ACTIVATION_Q8_STATE_RTOL  # noqa: E402

# Real model shapes (from the released checkpoints).
V4_169M = ModelShape("v4", 50277, 768, 12, 3072, 1, 768)
V7_0B1 = ModelShape("v7", 65536, 768, 12, 3072, 12, 64, (("a1", 64), ("g1", 128), ("v1", 32), ("w1", 64)))
V7_1B5 = ModelShape("v7", 65536, 2048, 24, 8192, 32, 64, (("a1", 96), ("g1", 256), ("v1", 64), ("w1", 96)))
V5_14B = ModelShape("v5.2", 65536, 5120, 40, 17920, 80, 64)
SHAPES = {"v4-169M": V4_169M, "v7-0.1B": V7_0B1, "v7-1.5B": V7_1B5, "v5.2-14B": V5_14B}


def v4_layer_bytes_fp16(C, F):
    """Written out by hand: 5 CxC matrices (k, v, r, o, ffn.r) + ffn key/value, FP16; 11 vectors; state 5C."""
    return (5 * C * C + 2 * C * F) * 2 + 11 * C * 4 + 5 * C * 4


def v52_layer_bytes_q5_1(C, F):
    """6 CxC matrices (k, v, r, o, gate, ffn.r) + ffn key/value in Q5_1 (24 bytes per 32 weights);
    14 vectors of C (ln1, ln2, ln_x pairs; 4 mixes; 2 ffn mixes; decay, faaaa); state (2 + 64) C floats."""
    return (6 * C * C + 2 * C * F) * 24 // 32 + 14 * C * 4 + 66 * C * 4


# ---- policies and plans ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHAPES)
def test_all_layers_and_head_are_one_block_with_two_crossings(name):
    shape = SHAPES[name]
    plan = Offload(layers="all").plan(shape, dtype="FP16")
    assert plan.gpu_layers == tuple(range(shape.n_layer))
    assert plan.head_on_gpu  # head="auto" follows the layers when there is no memory limit
    assert [(s.where, s.begin, s.end) for s in plan.segments] == [("cuda:0", 0, shape.n_layer)]
    assert plan.crossings(logits=True) == 2
    assert plan.crossings(logits=False) == 1
    assert plan.offloaded_fraction == 1.0


@pytest.mark.parametrize("name", SHAPES)
def test_layer_count_offloads_the_last_layers(name):
    shape = SHAPES[name]
    plan = Offload(layers=5).plan(shape, dtype="Q5_1")
    L = shape.n_layer
    assert plan.gpu_layers == tuple(range(L - 5, L))
    assert [(s.where, s.begin, s.end) for s in plan.segments] == [("cpu", 0, L - 5), ("cuda:0", L - 5, L)]
    assert plan.head_on_gpu and plan.crossings(True) == 2 and plan.crossings(False) == 1
    assert Offload(layers=10 * L).plan(shape, dtype="Q5_1").gpu_layers == tuple(range(L))  # like -ngl 99


@pytest.mark.parametrize("name", SHAPES)
def test_first_layers_cost_more_crossings(name):
    shape = SHAPES[name]
    with_head = Offload(layers=[0, 1, 2]).plan(shape, dtype="Q4_0")
    assert with_head.gpu_layers == (0, 1, 2) and with_head.head_on_gpu
    assert with_head.crossings(True) == 4  # up, down after layer 2, up for the head, logits down
    without_head = Offload(layers=range(3), head=False).plan(shape, dtype="Q4_0")
    assert not without_head.head_on_gpu
    assert without_head.crossings(True) == 2 and without_head.crossings(False) == 2


def test_head_only_and_head_modes():
    head_only = Offload(layers=0, head=True).plan(V7_1B5, dtype="FP16")
    assert head_only.gpu_layers == () and head_only.head_on_gpu and head_only.uses_gpu
    assert head_only.crossings(True) == 2 and head_only.crossings(False) == 0
    nothing = Offload(layers=0).plan(V7_1B5, dtype="FP16")  # head="auto" with no layers: CPU
    assert not nothing.uses_gpu and nothing.gpu_bytes == 0 and nothing.crossings(True) == 0
    assert not Offload(layers="all", head=False).plan(V7_1B5, dtype="FP16").head_on_gpu


def test_byte_counts_match_hand_computed_sizes():
    C, F, V, L = 768, 3072, 50277, 12
    plan = Offload(layers="all").plan(V4_169M, dtype="FP16")
    assert plan.sizes.layers == (v4_layer_bytes_fp16(C, F),) * L
    assert plan.sizes.head == V * C * 2 + 2 * C * 4
    assert plan.gpu_bytes == L * v4_layer_bytes_fp16(C, F) + plan.sizes.head + plan.sizes.workspace
    C, F, V = 5120, 17920, 65536
    q = Offload(layers=4).plan(V5_14B, dtype="Q5_1")
    assert q.sizes.layers[0] == v52_layer_bytes_q5_1(C, F)
    assert q.sizes.head == V * C * 2 + 2 * C * 4  # the head is never quantized by rwkv.cpp
    assert q.gpu_bytes == 4 * v52_layer_bytes_q5_1(C, F) + q.sizes.head + q.sizes.workspace


def test_v7_layer_zero_has_no_value_residual_weights():
    sizes = UnitSizes.of(V7_0B1, "FP32")
    C, D_v = 768, 32
    assert sizes.layers[1] - sizes.layers[0] == (2 * C * D_v) * 4 + C * 4  # v1, v2 (FP32 file) + v0


def test_plan_from_a_loaded_model_uses_the_files_sizes():
    rwkvx = pytest.importorskip("rwkvx.model")
    model = rwkvx.load(os.path.join(TINY, "tiny-rwkv-5v2-730K-Q5_1.bin"))
    plan = Offload(layers="all").plan(model)
    files = model.source.tensors
    head_matrix = files["head.weight"].nbytes
    assert plan.sizes.head == head_matrix + 2 * model.n_embd * 4
    layer0_matrices = sum(files[f"blocks.0.{n}"].nbytes for n in MATRIX_TENSORS if f"blocks.0.{n}" in files)
    assert plan.sizes.layers[0] > layer0_matrices  # plus vectors and state
    estimate = Offload(layers="all").plan(model.shape, dtype="Q5_1")
    assert estimate.sizes.layers == plan.sizes.layers  # the rwkv.cpp rules reproduce the real file
    # (its head is FP32: this tiny file was quantized from FP32, the estimate assumes an FP16 source)
    fp16 = rwkvx.load(os.path.join(TINY, "tiny-rwkv-7v0-834K-FP16.bin"))
    assert Offload(layers="all").plan(fp16.shape, dtype="FP16").sizes == Offload(layers="all").plan(fp16).sizes


@pytest.mark.parametrize("name", SHAPES)
def test_auto_never_exceeds_the_budget_and_keeps_one_block(name):
    shape = SHAPES[name]
    sizes = UnitSizes.of(shape, "Q5_1")
    total = sum(sizes.layers) + sizes.head + sizes.workspace
    previous_moved = -1
    for fraction in np.linspace(0.0, 1.1, 23):
        budget = max(1, int(total * fraction))
        plan = Offload.auto(max_memory=budget).plan(shape, dtype="Q5_1")
        assert plan.gpu_bytes <= budget
        if plan.gpu_layers:
            assert plan.gpu_layers == tuple(range(plan.gpu_layers[0], shape.n_layer))
            assert plan.crossings(True) == 2
        moved = plan.gpu_bytes - (sizes.workspace if plan.uses_gpu else 0)
        assert moved >= previous_moved  # more memory never offloads fewer bytes
        previous_moved = moved
    assert plan.gpu_layers == tuple(range(shape.n_layer)) and plan.head_on_gpu  # above the total: everything


def test_auto_puts_the_head_first():
    sizes = UnitSizes.of(V7_1B5, "FP16")
    budget = sizes.workspace + sizes.head  # layers-only could move at most floor(head / layer) layers <= head
    plan = Offload.auto(max_memory=budget).plan(V7_1B5, dtype="FP16")
    assert plan.head_on_gpu and plan.gpu_layers == ()
    plan = Offload.auto(max_memory=budget + sizes.layers[-1]).plan(V7_1B5, dtype="FP16")
    assert plan.head_on_gpu and plan.gpu_layers == (V7_1B5.n_layer - 1,)
    small_head_room = Offload.auto(max_memory=budget + sizes.layers[-1] // 2).plan(V7_1B5, dtype="FP16")
    # head + half a layer of room: 3 layers (316 MB) beat the head (268 MB), so the head stays on the CPU
    assert not small_head_room.head_on_gpu and small_head_room.gpu_layers == (21, 22, 23)


def test_head_auto_respects_max_memory_and_explicit_plans_fail_loudly():
    sizes = UnitSizes.of(V5_14B, "Q5_1")
    layers_only = sum(sizes.layers[-2:]) + sizes.workspace
    plan = Offload(layers=2, max_memory=layers_only).plan(V5_14B, dtype="Q5_1")
    assert plan.gpu_layers == (38, 39) and not plan.head_on_gpu  # the head did not fit: stays on the CPU
    with pytest.raises(OffloadPolicyError, match="max_memory"):
        Offload(layers=2, head=True, max_memory=layers_only).plan(V5_14B, dtype="Q5_1")
    with pytest.raises(OffloadPolicyError, match="max_memory"):
        Offload(layers="all", max_memory=layers_only).plan(V5_14B, dtype="Q5_1")


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": -1}, ">= 0"), ({"layers": True}, "bool"), ({"layers": "some"}, "'all'"),
    ({"layers": [1, 1]}, "repeat"), ({"layers": [0.5]}, "ints"), ({"head": "yes"}, "head"),
    ({"device": -1}, "device"), ({"max_memory": 0}, "max_memory"),
])
def test_bad_policies_raise(kwargs, message):
    with pytest.raises(OffloadPolicyError, match=message):
        Offload(**kwargs)


def test_layer_indices_outside_the_model_and_missing_dtype_raise():
    with pytest.raises(OffloadPolicyError, match=r"\[12\]"):
        Offload(layers=[0, 12]).plan(V4_169M, dtype="FP16")
    with pytest.raises(OffloadPolicyError, match="dtype"):
        Offload(layers=1).plan(V4_169M)


def test_describe_names_every_placement():
    text = Offload(layers=[0, 1], head=False).plan(V4_169M, dtype="FP16").describe()
    assert "layers 0-1       on cuda:0" in text and "layers 2-11      on cpu" in text
    assert "head             on cpu" in text and "4 with logits" not in text
    assert "2 with logits, 2 with logits=None" in text


# ---- the runner, with NumPy standing in for the device --------------------------------------------

PLACEMENTS = {
    "all": Offload(layers="all"),
    "head only": Offload(layers=0, head=True),
    "last 2 + head": Offload(layers=2),
    "first 2 only": Offload(layers=[0, 1], head=False),
    "middle": Offload(layers=[1, 2], head=True),
}


def _runner(model, policy, max_tokens=GPU_CHUNK_TOKENS):
    from rwkvx.cuda.ops_numpy import NumpyOps
    from rwkvx.cuda.runner import OffloadRunner

    return OffloadRunner(model, policy.plan(model), NumpyOps(), max_tokens=max_tokens)


@pytest.mark.parametrize("path", TINY_MODELS, ids=os.path.basename)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_runner_matches_the_cpu_core(path, placement):
    rwkvx = pytest.importorskip("rwkvx.model")
    model = rwkvx.load(path)
    expected_logits, expected_state = model.forward(PROMPT, logits="all")
    logits_tol, state_tol = RUNNER_LOGITS_TOL, RUNNER_STATE_TOL
    if model.dtype not in ("FP32", "FP16"):  # each side within the bound of exact math: twice it apart
        logits_tol = 2 * ACTIVATION_Q8_LOGIT_MAX_TOLERANCE
        state_tol = 2 * (ACTIVATION_Q8_STATE_ATOL + ACTIVATION_Q8_STATE_RTOL * float(np.abs(expected_state.data).max()))
    runner = _runner(model, PLACEMENTS[placement], max_tokens=5)  # 17 tokens: chunks of 5, 5, 5, 2
    state = linked_state(model)
    logits = runner.forward(PROMPT, state, "all")
    assert np.abs(logits - expected_logits).max() < logits_tol
    assert np.abs(state.data - expected_state.data).max() < state_tol
    serial = linked_state(model)
    for token in PROMPT:
        last = runner.forward(np.array([token], dtype=np.int32), serial, "last")
    assert np.abs(last - expected_logits[-1]).max() < logits_tol
    assert np.abs(serial.data - expected_state.data).max() < state_tol


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("logits", ["last", None])
def test_runner_crosses_the_bus_as_planned(placement, logits):
    rwkvx = pytest.importorskip("rwkvx.model")
    model = rwkvx.load(os.path.join(TINY, "tiny-rwkv-7v0-834K-Q5_1.bin"))
    runner = _runner(model, PLACEMENTS[placement])
    out = runner.forward(PROMPT, linked_state(model), logits)
    assert (out is None) == (logits is None)
    assert runner.copies == runner.plan.crossings(logits is not None)


class CountingOps:
    """NumpyOps that counts state uploads and downloads (buffers the size of a block's state)."""

    def __init__(self):
        from rwkvx.cuda.ops_numpy import NumpyOps

        self.inner, self.uploads, self.downloads = NumpyOps(), 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to_device(self, dst, host):
        self.uploads += dst.ndim == 1
        self.inner.to_device(dst, host)

    def to_host(self, host, src):
        self.downloads += src.ndim == 1
        self.inner.to_host(host, src)


def test_state_stays_on_the_device_until_read():
    rwkvx = pytest.importorskip("rwkvx.model")
    from rwkvx.cuda.runner import OffloadRunner

    model = rwkvx.load(os.path.join(TINY, "tiny-rwkv-6v0-1m-FP16.bin"))
    ops = CountingOps()
    runner = OffloadRunner(model, Offload(layers="all").plan(model), ops)
    a, b = linked_state(model), linked_state(model)
    for token in PROMPT[:5]:
        runner.forward(np.array([token], dtype=np.int32), a, None)
    assert (ops.uploads, ops.downloads) == (1, 0)  # one upload, then resident
    runner.forward(PROMPT[:1], b, None)  # another state evicts a: a is synced down first
    assert (ops.uploads, ops.downloads) == (2, 1)
    _ = b.data  # reading syncs b and unlinks it; the next call re-uploads it
    runner.forward(PROMPT[1:2], b, None)
    assert (ops.uploads, ops.downloads) == (3, 2)
    expected = model.forward(PROMPT[:5], logits=None)[1]
    assert np.abs(a.data - expected.data).max() < RUNNER_STATE_TOL  # a's synced values are right


# ---- without a GPU backend ------------------------------------------------------------------------

def test_without_pycuda_offload_raises_a_backend_error_that_says_what_to_do():
    pytest.importorskip("rwkvx.model")
    if "pycuda" in sys.modules or _pycuda_installed():
        pytest.skip("PyCUDA is installed here")
    import rwkvx

    model = rwkvx.load(os.path.join(TINY, "tiny-rwkv-4v0-660K-FP32.bin"))
    with pytest.raises(GPUUnavailableError) as info:
        Offload(layers="all").plan(model).open(model)
    assert isinstance(info.value, BackendError) and info.value.missing == "pycuda"
    assert "pip install rwkvx[cuda]" in str(info.value)
    assert Offload(layers=0).plan(model).open(model) is None  # nothing offloaded: no backend needed
    with pytest.raises(GPUUnavailableError):
        Offload.auto().plan(model)  # auto without max_memory has to ask the device
    with pytest.raises(GPUUnavailableError, match="PyCUDA is not installed"):
        rwkvx.load(os.path.join(TINY, "tiny-rwkv-4v0-660K-FP32.bin"), offload=Offload(layers="all"))


def test_gpu_info_reports_why_there_is_no_gpu():
    from rwkvx.cuda import gpu_info

    info = gpu_info()
    if not info["available"]:
        assert info["devices"] == [] and info["reason"]


def test_cpu_info_and_python_m_rwkvx_report_the_gpu_or_why_none():
    import subprocess

    import rwkvx
    from rwkvx.cuda import gpu_info

    info = rwkvx.cpu_info()
    assert info["gpu"] == gpu_info() and "active" in info
    out = subprocess.run([sys.executable, "-m", "rwkvx"], capture_output=True, text=True, check=True).stdout
    section = out[out.index("[GPU offload]"):]
    if not info["gpu"]["available"]:
        assert info["gpu"]["reason"] in section


def test_importing_rwkvx_and_planning_never_import_pycuda():
    code = ("import sys, rwkvx, rwkvx.offload, rwkvx.cuda, rwkvx.cuda.runner, rwkvx.cuda.backend;"
            "from rwkvx.offload import Offload; from rwkvx.architecture import ModelShape;"
            "Offload(layers='all').plan(ModelShape('v4', 256, 64, 2, 256, 1, 64), dtype='FP32');"
            "print('pycuda' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _pycuda_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("pycuda") is not None

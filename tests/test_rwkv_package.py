"""rwkvx on official-layout .pth checkpoints vs the official `rwkv` package (rwkv.model.RWKV, "cpu fp32").

For every architecture a random-weight checkpoint with the official key names is run over a
32-token prompt by both; the logits after every token must agree. The package runs in a
subprocess (its behaviour is set by environment variables read at import, and v7 needs
RWKV_V7_ON=1, which changes the module for other versions).

v5.1 and v5.2: the package group-normalizes the WKV output with eps = 64e-5 (as the training code
does), rwkv.cpp with 1e-5. rwkvx runs checkpoints with the official 64e-5 (and rwkv.cpp .bin files
with rwkv.cpp's 1e-5), so every version is compared directly.

Needs torch and rwkv (pip install torch==2.13.0 rwkv); skipped without them.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed (test-only dependency)")
pytest.importorskip("rwkv", reason="the rwkv package is not installed (test-only dependency)")

from rwkvx.architecture import infer_shape  # noqa: E402
from rwkvx.formats.checkpoint import CheckpointConverter, load_checkpoint, open_checkpoint  # noqa: E402
from rwkvx.reference import ReferenceModel  # noqa: E402
from rwkvx.testing import RandomCheckpoint  # noqa: E402

model_module = pytest.importorskip("rwkvx.model", reason="C core not built")

# Both sides compute in float32 over a few layers; logits are O(10). Observed differences are
# ~1e-5; 1e-4 is still 5 orders of magnitude below a wrong transform (O(1)).
PACKAGE_LOGIT_TOLERANCE = 1e-4
PROMPT = [int(t) for t in np.random.default_rng(7).integers(0, 256, size=32)]

CASES = {
    "v4": dict(n_layer=3, n_embd=128, n_vocab=300),
    "v5.1": dict(n_layer=2, n_embd=64, n_vocab=256, head_size=16),
    "v5.2": dict(n_layer=3, n_embd=64, n_vocab=256, head_size=16),
    "v6": dict(n_layer=2, n_embd=128, n_vocab=500, head_size=32),
    "v7": dict(n_layer=4, n_embd=128, n_vocab=1000, head_size=32),
}

_RUNNER = r"""
import json, os, sys
import numpy as np
path, out, tokens, arch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"
if arch == "v7":
    os.environ["RWKV_V7_ON"] = "1"
from rwkv import model
net = model.RWKV_x070(path[: -len(".pth")], "cpu fp32") if arch == "v7" else model.RWKV(path, "cpu fp32", verbose=False)
state, rows = None, []
for token in tokens:  # one at a time: the logits after every token
    logits, state = net.forward([token], state)
    rows.append(logits.float().numpy())
np.save(out, np.stack(rows))
"""


def package_logits(pth: str, arch: str, tmp_path) -> np.ndarray:
    out = str(tmp_path / f"package-{arch}.npy")
    env = dict(os.environ, RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
    done = subprocess.run([sys.executable, "-c", _RUNNER, pth, out, json.dumps(PROMPT), arch], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"rwkv package failed:\n{done.stderr[-3000:]}"
    return np.load(out)


def rwkvx_logits(pth: str) -> np.ndarray:
    model = model_module.Model(load_checkpoint(pth), threads=2)
    logits, _ = model.forward(PROMPT, logits="all")
    return logits


def reference_logits(pth: str) -> np.ndarray:
    tensors = dict(CheckpointConverter(open_checkpoint(pth)).tensors())
    shape = infer_shape({name: a.shape for name, a in tensors.items()})
    return ReferenceModel(tensors, shape).forward(PROMPT)[0]


def assert_close(actual, expected, tolerance, what):
    diff = np.abs(np.asarray(actual, np.float64) - expected)
    t, i = np.unravel_index(int(np.argmax(diff)), diff.shape)
    assert diff.max() <= tolerance, (f"{what}: max |diff| {diff.max():.3g} > {tolerance} at token {t}, logit {i}: "
                                     f"{actual[t, i]} vs {expected[t, i]}")


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp("pkg") / f"random-{arch}.pth"
    RandomCheckpoint.of(arch, seed=3, **CASES[arch]).write_pth(path)
    return arch, str(path)


def test_logits_match_rwkv_package(checkpoint, tmp_path):
    arch, pth = checkpoint
    expected = package_logits(pth, arch, tmp_path)
    assert expected.shape == (len(PROMPT), CASES[arch]["n_vocab"])
    assert np.isfinite(expected).all() and expected.std(axis=1).min() > 0.5  # a non-trivial model
    assert_close(rwkvx_logits(pth), expected, PACKAGE_LOGIT_TOLERANCE, f"{arch} rwkvx vs rwkv package")
    assert_close(reference_logits(pth), expected, PACKAGE_LOGIT_TOLERANCE, f"{arch} reference vs rwkv package")

"""This x86 build runs on CPUs without AVX-512 (and without AVX): proof under qemu-x86_64 (qemu-user).

qemu-user emulates exactly the CPU model it is given, so an instruction outside it (an AVX-512 one
leaking into a portable or AVX2 file, or -march=native) kills the process with SIGILL. For each model
this Python runs a small script under emulation: import rwkvx, report what dispatch chose, and run
tiny models (FP32 float kernels, Q5_1 integer kernels) for a few tokens. The choice must be the best
level that CPU has, and the logits must equal the native run's with the same level forced.

CPU models: Haswell (AVX2 + FMA + F16C, no AVX-512) -> avx2; SandyBridge (AVX, no AVX2) and Nehalem
(no AVX at all) -> scalar. The plain `qemu64` model cannot be used: NumPy 2.x itself requires
x86-64-v2 (SSE4.2, POPCNT), which qemu64 lacks; Nehalem is exactly x86-64-v2 without any AVX.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkvx

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
# (qemu CPU model, level dispatch must pick there)
CPU_MODELS = (("Haswell", "avx2"), ("SandyBridge", "scalar"), ("Nehalem", "scalar"))
MODELS = ("tiny-rwkv-4v0-660K-FP32.bin", "tiny-rwkv-7v0-834K-Q5_1.bin")
TOKENS = [34, 105, 110, 32]
TIMEOUT_SECONDS = 120

SCRIPT = """
import json, sys
import numpy as np
import rwkvx
info = rwkvx.cpu_info()
logits = {}
for path in sys.argv[1:]:
    model = rwkvx.load(path, threads=1)
    out, _ = model.forward(%r, logits="all")
    logits[path] = np.asarray(out, dtype=np.float32).tobytes().hex()
print(json.dumps({"active": info["active"], "compiled": info["compiled"], "features": info["features"],
                  "logits": logits}))
""" % (TOKENS,)

pytestmark = [
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86_64 builds only"),
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not found (Debian: apt-get install qemu-user)"),
]


def run_script(isa=None, qemu_cpu=None):
    """The script's JSON report, natively (RWKVX_ISA=isa) or under qemu-x86_64 -cpu qemu_cpu."""
    env = {k: v for k, v in os.environ.items() if k != "RWKVX_ISA"}
    if isa is not None:
        env["RWKVX_ISA"] = isa
    command = [sys.executable, "-c", SCRIPT] + [str(TINY / m) for m in MODELS]
    if qemu_cpu is not None:
        command = [QEMU, "-cpu", qemu_cpu] + command
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    stderr = "\n".join(line for line in result.stderr.splitlines() if "TCG doesn't support" not in line)
    assert result.returncode == 0, (
        f"{'qemu -cpu ' + qemu_cpu if qemu_cpu else 'native'} run failed with status {result.returncode}"
        f"{' (SIGILL: an instruction this CPU lacks)' if result.returncode in (-4, 132) or 'signal 4' in stderr else ''}"
        f":\n{stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_build_contains_avx512_code():
    """setup.py compiles the AVX-512 kernels on every x86 build: the emulated runs below then prove that
    this code sits unused on CPUs without AVX-512 instead of running by accident."""
    assert "avx512" in rwkvx.cpu_info()["compiled"]


@pytest.mark.parametrize("qemu_cpu,expected_level", CPU_MODELS)
def test_runs_on_cpu_without_avx512(qemu_cpu, expected_level):
    emulated = run_script(qemu_cpu=qemu_cpu)
    assert not emulated["features"]["avx512f"], f"qemu -cpu {qemu_cpu} should not report AVX-512"
    assert emulated["active"] == expected_level, (
        f"on {qemu_cpu} dispatch picked {emulated['active']}, expected {expected_level}")
    if expected_level not in rwkvx.cpu_info()["supported"]:
        pytest.skip(f"this machine cannot run {expected_level} natively to compare logits")
    native = run_script(isa=expected_level)
    for model in MODELS:
        path = str(TINY / model)
        got = np.frombuffer(bytes.fromhex(emulated["logits"][path]), dtype=np.float32)
        want = np.frombuffer(bytes.fromhex(native["logits"][path]), dtype=np.float32)
        assert got.shape == (len(TOKENS) * 256,) and np.all(np.isfinite(want))
        # The same instructions on an emulated CPU: qemu's floating point is IEEE-exact, so bit for bit.
        bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert bad.size == 0, (f"{model} on {qemu_cpu}: {bad.size} logits differ from the native "
                               f"{expected_level} run; first at {bad[0]}: {got[bad[0]]!r} vs {want[bad[0]]!r}")

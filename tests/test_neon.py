"""NEON kernels on an x86 machine: cross-compiled for aarch64 and run under qemu-user.

tests/neon/driver.c is linked (statically) with every C file of rwkvx/_kernels/ that setup.py builds on
aarch64 (the portable files plus *_neon.c, with setup.py's own flags), so the link proves the C core
builds there. The driver compares rwkvx_matmul_neon with rwkvx_matmul_ref on edge sizes, misaligned
weights, extreme quants and token counts; its tolerance (REORDER_ULPS) and input kinds are documented
at its top: integer inputs must match the exact sum bit for bit, random ones within a summation-order
bound. It also checks dispatch.c's aarch64 branch (HWCAP detection, "neon" as the default level).

It runs twice: on qemu's default CPU (every extension qemu knows) and on a Cortex-A53 (plain ARMv8.0-A,
no dotprod, no fp16 arithmetic), where any instruction beyond baseline NEON is a SIGILL.
Skips, with the reason, when the cross compiler, its C library or qemu-aarch64 is missing
(Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user).
"""
import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "rwkvx" / "_kernels"
DRIVER = Path(__file__).resolve().parent / "neon" / "driver.c"
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
X86_ONLY_ISAS = ("avx2", "avx512")
# Cases the driver must report: 1 dispatch check; edge sizes: 12 row counts x 6 block counts x 2 kinds
# for the 5 quantized types, x (6 + 9 partial-block lengths) for FP32/FP16; extremes: 5 types x 3
# patterns x 3 shapes x 4 token counts; misalignment: 7 types x 8 offsets.
EXPECTED_CASES = 1 + 5 * 12 * 6 * 2 + 2 * 12 * (6 + 9) * 2 + 5 * 3 * 3 * 4 + 7 * 8
# qemu CPUs to run on: its default, and a plain ARMv8.0-A core without the dotprod/fp16 extensions.
QEMU_CPUS = (None, "cortex-a53")
RUN_TIMEOUT_SECONDS = 300


def setup_py_flags():
    """(BASE_FLAGS, ISA_FLAGS["neon"]) read from setup.py, so this build uses the package's flags."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("BASE_FLAGS", "ISA_FLAGS"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["BASE_FLAGS"], values["ISA_FLAGS"]["neon"]


def isa_suffix(path):
    suffix = path.stem.rsplit("_", 1)[-1]
    return suffix if suffix in X86_ONLY_ISAS + ("neon",) else None


def compile_objects(sources, flags, out_dir):
    objects = []
    for src in sources:
        obj = out_dir / (src.stem + ".o")
        result = subprocess.run([CROSS_CC, "-c", str(src), "-o", str(obj), "-I", str(KERNELS)] + flags,
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{src.name} does not compile for aarch64:\n{result.stderr}"
        objects.append(obj)
    return objects


@pytest.fixture(scope="module")
def neon_driver(tmp_path_factory):
    """Path of the static aarch64 driver binary."""
    if shutil.which(CROSS_CC) is None:
        pytest.skip(f"{CROSS_CC} not found (Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
    if QEMU is None:
        pytest.skip("qemu-aarch64 not found (Debian: apt-get install qemu-user)")
    out = tmp_path_factory.mktemp("neon")
    probe = out / "probe.c"
    probe.write_text("#include <stdio.h>\nint main(void) { return puts(\"\") < 0; }\n")
    result = subprocess.run([CROSS_CC, "-static", str(probe), "-o", str(out / "probe")], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"{CROSS_CC} cannot link a static program (libc6-dev-arm64-cross missing?): {result.stderr[-300:]}")

    base_flags, neon_flags = setup_py_flags()
    sources = sorted(KERNELS.glob("*.c"))
    portable = [s for s in sources if isa_suffix(s) is None]
    neon = [s for s in sources if isa_suffix(s) == "neon"]
    assert any(s.name == "matmul_neon.c" for s in neon)
    defines = ["-DRWKVX_HAVE_NEON=1"]
    objects = compile_objects(portable + [DRIVER], base_flags + defines, out)
    objects += compile_objects(neon, base_flags + neon_flags + defines + ["-DRWKVX_BUILD_NEON=1"], out)
    binary = out / "neon_driver"
    result = subprocess.run([CROSS_CC, "-static", "-o", str(binary)] + [str(o) for o in objects] + ["-lm", "-lpthread"],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"linking the aarch64 C core failed:\n{result.stderr}"
    return binary


@pytest.mark.parametrize("cpu", QEMU_CPUS, ids=lambda c: c or "qemu-default")
def test_neon_kernels_match_scalar_reference_under_qemu(neon_driver, cpu):
    command = [QEMU] + (["-cpu", cpu] if cpu else []) + [str(neon_driver)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0, (f"exit status {result.returncode}; first failures:\n" + "\n".join(failures[:20])
                                    + f"\n{result.stderr[-2000:]}")
    summary = re.search(r"checked (\d+) cases, (\d+) failed", result.stdout)
    assert summary is not None, result.stdout[-2000:]
    assert (int(summary.group(1)), int(summary.group(2))) == (EXPECTED_CASES, 0), summary.group(0)
    dispatch = re.search(r"dispatch: default (\w+); features:(.*)", result.stdout)
    assert dispatch is not None and dispatch.group(1) == "neon", result.stdout[:500]
    features = dispatch.group(2).split()
    assert "neon" in features
    if cpu == "cortex-a53":  # ARMv8.0: HWCAP must not claim the v8.2 dot-product extension
        assert "asimddp" not in features, features

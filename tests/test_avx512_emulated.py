"""The AVX-512 kernels on a CPU without AVX-512, through emulation.

Where the CPU has no AVX-512, the suite's tests of the avx512 level skip: its kernels would die on their
first instruction. This module builds a copy of rwkvx with RWKVX_EMULATE_AVX512=1 (setup.py): the
*_avx512.c files are compiled with the AVX2 flags against tests/avx512_emulation/immintrin.h, which
implements the AVX-512 intrinsics with SIMDe (Debian's libsimde-dev), and the level counts as usable
wherever AVX2 is. In that copy it runs the suite's own tests of the level: every kernel test of avx512
against the scalar reference (integer results exactly, floats bit for bit or within the named
tolerances), and the model tests with RWKVX_ISA=avx512, which match the NumPy reference on every tiny
model and data type.

What this shows is the kernels' logic: lanes, masks, tails, block layouts and the arithmetic they do.
How fast they run, and anything where an emulated instruction could differ from the real one, only a CPU
with AVX-512 shows; there this module skips, since the suite tests the level directly.
"""
import json
import os
import platform
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from rwkvx import _core

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from build_copy import build_copy  # noqa: E402

TESTS = Path(__file__).resolve().parent
KERNEL_TESTS = ("test_kernels.py", "test_packed.py", "test_level_variants.py")
MODEL_TESTS = ("test_model.py", "test_model_quantized.py", "test_batch.py", "test_threads.py", "test_dispatch.py")
NOT_IN_AN_EMULATING_BUILD = ("test_a_normal_build_emulates_nothing",)  # test names
TIMEOUT_SECONDS = 900


def simde_is_installed() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    try:
        probe = subprocess.run([compiler, "-E", "-x", "c", "-"], input="#include <simde/x86/avx512.h>\n",
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = [
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="AVX-512 is an x86 level"),
    pytest.mark.skipif("avx512" in _core.supported_isas(),
                       reason="this CPU runs AVX-512: the suite tests the level itself"),
    pytest.mark.skipif(not simde_is_installed(),
                       reason="SIMDe's headers are not installed (Debian: apt install libsimde-dev)"),
]


@pytest.fixture(scope="module")
def emulating_copy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("avx512_emulated")
    build_copy(directory, {"RWKVX_EMULATE_AVX512": "1"}, extra_dirs=("tests/avx512_emulation",))
    return directory


def in_copy(directory: Path, args: list, **env) -> subprocess.CompletedProcess:
    """A Python process that imports the copy's rwkvx, not the checkout's (cwd and PYTHONPATH)."""
    return subprocess.run([sys.executable] + args, cwd=directory, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS, env=dict(os.environ, PYTHONPATH=str(directory), **env))


def run_suite_part(directory: Path, files, select: str | None, report: Path) -> dict:
    """pytest on the suite's files inside the copy, with RWKVX_ISA=avx512 (an import of any other build
    would refuse the value: this CPU has no AVX-512). Returns the JUnit report's counts."""
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    args += [str(TESTS / name) for name in files]
    args += ["-k", " and ".join(([select] if select else []) + [f"not {name}" for name in NOT_IN_AN_EMULATING_BUILD])]
    result = in_copy(directory, args, RWKVX_ISA="avx512")
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    skips = [case.get("name") + ": " + (case.find("skipped").get("message") or "")
             for case in suite.iter("testcase") if case.find("skipped") is not None]
    return dict(counts, skips=skips)


def test_the_copy_runs_avx512_as_an_emulated_level(emulating_copy):
    code = ("import json, rwkvx\nfrom rwkvx.cpu import format_cpu_info\n"
            "print(json.dumps({'info': rwkvx.cpu_info(), 'text': format_cpu_info(), 'file': rwkvx.__file__}))")
    result = in_copy(emulating_copy, ["-c", code])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert Path(out["file"]).resolve().is_relative_to(Path(emulating_copy).resolve())
    info = out["info"]
    assert info["active"] == "avx512" and info["emulated"] == ["avx512"]
    assert not info["features"]["avx512f"]  # the CPU's own features are reported as they are
    assert "avx512 (emulated: a test build)" in out["text"]


def test_kernel_tests_of_avx512_pass_in_the_copy(emulating_copy, tmp_path):
    counts = run_suite_part(emulating_copy, KERNEL_TESTS, "avx512", tmp_path / "kernels.xml")
    # every kernel test of the level ran: none skipped as "not usable here"
    assert counts["skipped"] == 0, counts["skips"]
    assert counts["tests"] >= 200 and counts["failures"] == counts["errors"] == 0, counts


def test_model_tests_pass_under_avx512_in_the_copy(emulating_copy, tmp_path):
    counts = run_suite_part(emulating_copy, MODEL_TESTS, None, tmp_path / "models.xml")
    assert counts["tests"] >= 100 and counts["failures"] == counts["errors"] == 0, counts
    assert not [s for s in counts["skips"] if "avx512" in s], counts["skips"]

"""Kernel dispatch: RWKVX_ISA forcing (read once at import), failure on bad values, cpu_info()."""
import os
import subprocess
import sys

import pytest

from rwkvx import _core
from rwkvx.cpu import cpu_info

LEVELS = ("scalar", "avx2", "avx512", "neon")
PRINT_ACTIVE = "from rwkvx import _core; print(_core.active_isa())"


def run_python(code, isa=None):
    env = {k: v for k, v in os.environ.items() if k != "RWKVX_ISA"}
    if isa is not None:
        env["RWKVX_ISA"] = isa
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_unknown_level_fails_at_import_with_a_clear_message():
    result = run_python(PRINT_ACTIVE, isa="sse9")
    assert result.returncode != 0
    assert "RWKVX_ISA='sse9'" in result.stderr and "valid values are" in result.stderr, result.stderr


@pytest.mark.parametrize("isa", LEVELS)
def test_forcing_a_level(isa):
    result = run_python(PRINT_ACTIVE, isa=isa)
    if isa in _core.supported_isas():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == isa
    else:  # not compiled or not runnable here: an error naming the level, never a silent fallback
        assert result.returncode != 0
        assert f"RWKVX_ISA='{isa}'" in result.stderr and ("not support" in result.stderr
                                                          or "no " + isa in result.stderr), result.stderr


def test_forced_value_is_case_and_space_insensitive():
    result = run_python(PRINT_ACTIVE, isa=" Scalar ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scalar"


def test_default_is_the_best_usable_level():
    result = run_python(PRINT_ACTIVE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _core.supported_isas()[0]


def test_cpu_info_is_consistent():
    info = cpu_info()
    assert info["active"] in info["supported"]
    assert set(info["supported"]) <= set(info["compiled"])
    assert info["supported"][-1] == "scalar" and "scalar" in info["compiled"]
    assert info["physical_cores"] >= 1 and info["logical_cpus"] >= info["physical_cores"]
    features = info["features"]
    if "avx2" in info["supported"]:
        assert features["avx2"] and features["fma"] and features["f16c"] and features["os_ymm"]
    assert set(info["emulated"]) <= set(info["compiled"])
    if "avx512" in info["supported"] and "avx512" not in info["emulated"]:
        assert all(features[f] for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "os_zmm"))


def test_a_normal_build_emulates_nothing():
    """Only a test build (setup.py's RWKVX_EMULATE_AVX512, tests/test_avx512_emulated.py) emulates a level;
    an installed rwkvx runs every level it reports on the CPU itself."""
    assert cpu_info()["emulated"] == []


def test_cpu_features_agree_with_the_kernel_flags_in_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if not flags:
        pytest.skip("no x86 /proc/cpuinfo flags line here")
    features = cpu_info()["features"]
    for ours, linux in (("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"), ("avx512f", "avx512f"),
                        ("avx512bw", "avx512bw"), ("avx512_vnni", "avx512_vnni")):
        assert features[ours] == (linux in flags), ours


def test_python_m_rwkvx_prints_cpu_info():
    result = subprocess.run([sys.executable, "-m", "rwkvx"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"active:    {_core.active_isa()}" in result.stdout

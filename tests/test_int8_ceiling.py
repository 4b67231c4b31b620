"""bench/int8_ceiling.py: the count of multiply-adds it divides by, and one short run of its measurement."""
import importlib
import platform
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("int8_ceiling")
    finally:
        sys.path.remove(str(BENCH))


def test_macs_count_the_quantized_layer_matrices_only(tool):
    c, f, layers = 768, 3072, 12
    # v7: receptance, key, value, output (C x C) and the FFN's key and value (C x F); the low-rank
    # matrices, the embedding and the head stay FP16 in a quantized file
    assert tool.quantized_macs_per_token("v7-0.1B") == layers * (4 * c * c + 2 * c * f)
    # v4 has the FFN's receptance as well
    assert tool.quantized_macs_per_token("v4-169M") == layers * (5 * c * c + 2 * c * f)


def avx2_here() -> bool:
    if platform.machine() != "x86_64" or shutil.which("gcc") is None:
        return False
    from rwkvx import _core

    return bool(_core.cpu_features().get("avx2"))


@pytest.mark.skipif(not avx2_here(), reason="needs gcc and an x86-64 CPU with AVX2")
def test_a_short_run_prints_a_bound_for_every_target(tool, capsys):
    assert tool.main(["--repeats", "1", "--iterations", "20000"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| v")]
    assert len(rows) == sum(len(t) for t in tool.TARGETS.values())
    for row in rows:
        bound = float(row.split("|")[4])
        assert bound > 0

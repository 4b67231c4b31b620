"""bench/compare_builds.py, the paired timing of two checkouts, run on the demo model with both sides
this checkout: each side gets its own process and every window is answered."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "rwkvx" / "demo" / "tiny-rwkv-7v0-834K-Q5_1.bin"


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_builds", ROOT / "bench" / "compare_builds.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize("mode", ["nolog", "prefill"])
def test_both_sides_time_every_window(mode):
    tool = load_tool()
    calls, times_a, times_b = tool.compare(str(DEMO), ROOT, ROOT, mode=mode, calls=2, rounds=4, threads=1,
                                           prefill_tokens=8)
    assert calls == 2
    assert len(times_a) == len(times_b) == 4
    assert all(t > 0 for t in times_a + times_b)


def test_a_side_that_cannot_load_the_model_is_reported(tmp_path):
    tool = load_tool()
    env_path = os.environ.get("PYTHONPATH")
    with pytest.raises(SystemExit, match="did not load"):
        tool.compare(str(tmp_path / "missing.bin"), ROOT, ROOT, calls=1, rounds=4, threads=1)
    assert os.environ.get("PYTHONPATH") == env_path  # the children's environment is their own

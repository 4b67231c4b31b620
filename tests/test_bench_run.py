"""bench/run.py's mapped-load timing, run as the benchmark runs it: in its own process, on a tiny model."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_mmap_load_times_a_cold_and_a_warm_load():
    path = TINY / "tiny-rwkv-7v0-834K-Q5_1.bin"
    out = subprocess.run([sys.executable, str(RUN), "--mmap-load", str(path)], capture_output=True, text=True,
                         check=True)
    times = json.loads(out.stdout)
    assert set(times) == {"cold_s", "warm_s"}
    assert 0 < times["warm_s"] < 60 and (times["cold_s"] is None or 0 < times["cold_s"] < 60)

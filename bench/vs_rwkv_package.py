"""rwkvx vs the official `rwkv` PyPI package on the same v7 0.1B checkpoint: python bench/vs_rwkv_package.py

Writes a random-weight v7 0.1B checkpoint with the official key names (bench/models/, not committed),
then times serial decoding (one token per call, logits every token) in two fresh processes with the
same thread count: the package with strategy "cpu fp32" (torch), and rwkvx loading the same .pth
(FP32) and as Q8_0 / Q4_0 on load. Prints ms/token and the ratio to the package.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, if rwkvx is not installed

MODELS = Path(__file__).resolve().parent / "models"
WARMUP, TOKENS = 4, 32

_PACKAGE = r"""
import json, os, sys, time
os.environ["RWKV_JIT_ON"] = "0"; os.environ["RWKV_CUDA_ON"] = "0"; os.environ["RWKV_V7_ON"] = "1"
import torch
torch.set_num_threads(int(sys.argv[2]))
from rwkv import model
net = model.RWKV_x070(sys.argv[1][: -len(".pth")], "cpu fp32")
state = None
for t in range(WARMUP):
    _, state = net.forward([t], state)
start = time.perf_counter()
for t in range(TOKENS):
    _, state = net.forward([t], state)
print(json.dumps((time.perf_counter() - start) / TOKENS))
"""

_RWKVX = r"""
import json, sys, time
import rwkvx
model = rwkvx.load(sys.argv[1], threads=int(sys.argv[2]), dtype=None if sys.argv[3] == "-" else sys.argv[3])
state = model.new_state()
for t in range(WARMUP):
    model.forward(t, state, inplace=True)
start = time.perf_counter()
for t in range(TOKENS):
    model.forward(t, state, inplace=True)
print(json.dumps((time.perf_counter() - start) / TOKENS))
"""


def run(code: str, *args: str) -> float:
    code = f"WARMUP, TOKENS = {WARMUP}, {TOKENS}\n" + code
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("rwkv") is None or importlib.util.find_spec("torch") is None:
        print("the rwkv package or torch is not installed: pip install torch==2.13.0 rwkv")
        return 0
    from rwkvx.cpu import physical_cores
    from rwkvx.testing import RandomCheckpoint

    threads = args.threads or physical_cores()
    path = MODELS / "random-v7-0.1B-official.pth"
    if not path.exists():
        MODELS.mkdir(exist_ok=True)
        RandomCheckpoint.of("v7", "0.1B", seed=0).write_pth(path)
    package = run(_PACKAGE, str(path), str(threads))
    print(f"# v7 0.1B random weights, serial decoding with logits, {threads} threads, best of one run of {TOKENS}")
    print("| runtime | ms/token | vs rwkv package |")
    print("|---|---|---|")
    print(f"| rwkv {__import__('importlib.metadata').metadata.version('rwkv')} (torch, cpu fp32) | "
          f"{package * 1e3:.1f} | 1.00 |")
    for dtype in ("-", "Q8_0", "Q4_0"):
        t = run(_RWKVX, str(path), str(threads), dtype)
        name = "FP32" if dtype == "-" else f"{dtype} (quantized on load)"
        print(f"| rwkvx {name} | {t * 1e3:.1f} | {package / t:.2f}x faster |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

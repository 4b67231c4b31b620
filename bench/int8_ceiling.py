"""The most prefill an AVX2 CPU without VNNI can reach with rwkvx's int8 products: python bench/int8_ceiling.py

int8_ceiling.c runs, on one core, the instructions the AVX2 packed kernel issues for a tile of 4 tokens
(vpmaddubsw into int16 pairs, vpmaddwd into int32, and their adds), with every operand in a register:
no memory, no scales, no float work. Its int8 multiply-adds per second bound the kernel's from above,
and times the cores they bound the tokens per second of a prefill whose layer matrices are quantized,
even if nothing else took any time:

    tokens/s <= MACs per second and core x threads / (multiply-adds of a token's quantized matrices)

The table prints that bound for each bench model and type group, beside the prefill the issue asks for
(4x rwkv.cpp's figures, 128 tokens). A bound below the target says that no kernel built from these
instructions reaches it on this CPU; one above it says only that it is not ruled out. The best of
--repeats runs is kept, since a busy moment of a shared machine only lowers what is measured; the clock
(from a chain of dependent adds, in the same runs) only turns the rate into multiply-adds per cycle.
Needs gcc and an x86-64 CPU with AVX2.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import kernel_vs_read
from models import SHAPES

from rwkvx.architecture import expected_tensors

# The prefill goal for 128 tokens, tokens/s: 4x rwkv.cpp's (Q8_0, Q4_0) on a machine like the
# issue's (Sapphire Rapids, 2 threads).
TARGETS = {"v4-169M": {"Q8_0": 4 * 440, "Q4_0": 4 * 416}, "v7-0.1B": {"Q8_0": 4 * 323, "Q4_0": 4 * 320},
           "v7-1.5B": {"Q8_0": 4 * 30, "Q4_0": 4 * 27}}
COLUMNS = ("Q8_0", "Q4_x", "Q5_x")  # int8_ceiling.c's output after the clock
TYPE_COLUMN = {"Q8_0": "Q8_0", "Q4_0": "Q4_x", "Q4_1": "Q4_x", "Q5_0": "Q5_x", "Q5_1": "Q5_x"}


def quantized_macs_per_token(model: str) -> int:
    """Multiply-adds of one token through the layer matrices a quantized file stores quantized (v7's
    low-rank matrices, the embedding and the head stay FP16 and are not counted)."""
    total = 0
    for name, shape in expected_tensors(SHAPES[model]).items():
        dims = [d for d in shape if d != 1]
        if name.startswith("blocks.") and name.endswith(".weight") and len(dims) == 2:
            total += dims[0] * dims[1]
    return total


def build(out_dir: Path) -> Path:
    """int8_ceiling.c with setup.py's flags for the AVX2 packed kernel's file."""
    base, isa_flags, file_flags = kernel_vs_read.setup_flags()
    flags = base + isa_flags["avx2"] + file_flags.get("matmul_packed_avx2.c", []) + ["-D_POSIX_C_SOURCE=200809L"]
    executable = out_dir / "int8_ceiling"
    result = subprocess.run(["gcc", *flags, str(Path(__file__).with_suffix(".c")), "-o", str(executable)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building int8_ceiling.c failed:\n{result.stderr}")
    return executable


def measure(executable: Path, iterations: int, repeats: int) -> tuple[float, dict[str, float]]:
    """(GHz, int8 multiply-adds per nanosecond and core per column): the best of `repeats` runs for each."""
    ghz, per_ns = 0.0, dict.fromkeys(COLUMNS, 0.0)
    for _ in range(repeats):
        fields = [float(v) for v in subprocess.run([str(executable), str(iterations)], capture_output=True,
                                                   text=True, check=True).stdout.split()]
        ghz = max(ghz, fields[0])
        for column, value in zip(COLUMNS, fields[1:]):
            per_ns[column] = max(per_ns[column], value)
    return ghz, per_ns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="cores the bound counts (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the measurement, the best kept")
    parser.add_argument("--iterations", type=int, default=20_000_000, help="block columns per type and run")
    args = parser.parse_args(argv)
    if platform.machine() not in ("x86_64", "AMD64"):
        print("int8_ceiling: measures AVX2 instructions, x86-64 only", file=sys.stderr)
        return 2
    from rwkvx import _core

    if not _core.cpu_features().get("avx2"):
        print("int8_ceiling: this CPU has no AVX2", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ghz, per_ns = measure(build(Path(tmp)), args.iterations, args.repeats)
    print(f"# int8 multiply-adds per ns and core, AVX2 tile of 4 tokens, operands in registers: "
          + ", ".join(f"{c} {per_ns[c]:.1f}" for c in COLUMNS)
          + f"; per cycle at the clock of {ghz:.2f} GHz (dependent adds): "
          + ", ".join(f"{c} {per_ns[c] / ghz:.1f}" for c in COLUMNS))
    print(f"# bound = MACs/ns x {args.threads} threads / MACs of a token's quantized matrices")
    print("| model | type | MACs/token (M) | bound tokens/s | issue's prefill target | bound / target |")
    print("|---|---|---|---|---|---|")
    for model in TARGETS:  # the models the issue sets a prefill target for
        macs = quantized_macs_per_token(model)
        for data_type, target in TARGETS[model].items():
            bound = per_ns[TYPE_COLUMN[data_type]] * 1e9 * args.threads / macs
            print(f"| {model} | {data_type} | {macs / 1e6:.1f} | {bound:.0f} | {target} | {bound / target:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

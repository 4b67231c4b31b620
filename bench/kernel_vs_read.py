"""Matrix product kernels against a plain read of the same bytes: python bench/kernel_vs_read.py

For each kernel level the CPU runs (AVX2, AVX-512) and each matrix shape, kernel_vs_read.c streams
the matrix with the level's one-token product on 2 threads and, in the same pass, reads a buffer
as large with a plain read, a prefetching one and one of 4 parts side by side within windows of 4 MB
(which on an AMD EPYC Zen 3 reads faster than one stream); the ratio of a pass is the product's time
over the fastest read's. Taken pass by pass, the ratio does not move with the machine's bandwidth
(which on a shared machine has fast and slow phases of seconds): a product at 1.00 streams its
weights as fast as the machine can read them. Prints the median ratio with its quartiles and the
product's median GB/s. Each pass reads another copy of the matrix (and of the read buffer), as many
copies as make --cold-mb, so that every pass reads memory the caches no longer hold, as decoding reads
each matrix once per token; --cold-mb 0 reads the same bytes every pass (cached when they fit).

The C kernels are compiled from rwkvx/_kernels/ with setup.py's flags (each ISA file with its own)
into a temporary directory: needs gcc, nothing else is built or installed.
"""
from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "rwkvx" / "_kernels"
sys.path.insert(0, str(ROOT))  # the checkout, if rwkvx is not installed

# (type, n_in, n_rows): the v7 0.1B head, rows of 2048 and 8192 inputs (v7 1.5B), packed quantized types,
# and the v7 0.1B FFN key matrix (2.5 MB in Q8_0: a thread's share of a layer's product is that small)
DEFAULT_CASES = (("FP16", 768, 65536), ("FP32", 768, 32768), ("FP16", 2048, 24576), ("FP16", 8192, 6144),
                 ("Q8_0", 2048, 65536), ("Q5_1", 2048, 65536), ("Q5_0", 2048, 65536), ("Q4_1", 2048, 65536),
                 ("Q4_0", 2048, 65536), ("Q4_0", 8192, 16384), ("FP16", 768, 3072), ("Q8_0", 768, 3072),
                 ("Q4_0", 768, 3072))


def setup_flags() -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """BASE_FLAGS, ISA_FLAGS and FILE_FLAGS as setup.py defines them (read, not imported: importing runs
    setup())."""
    values = {}
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("BASE_FLAGS", "ISA_FLAGS", "FILE_FLAGS"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["BASE_FLAGS"], values["ISA_FLAGS"], values["FILE_FLAGS"]


def build(out_dir: Path) -> Path:
    """Compile every portable and x86 kernel file and kernel_vs_read.c; returns the executable."""
    base, isa_flags, file_flags = setup_flags()
    base = base + ["-I", str(KERNELS), "-DRWKVX_HAVE_AVX2=1", "-DRWKVX_HAVE_AVX512=1"]
    jobs = []
    for source in sorted(KERNELS.glob("*.c")):
        suffix = source.stem.rsplit("_", 1)[-1]
        if suffix == "neon":
            continue
        flags = (isa_flags.get(suffix, []) if suffix in ("avx2", "avx512") else []) + file_flags.get(source.name, [])
        jobs.append(["gcc", *base, *flags, "-c", str(source), "-o", str(out_dir / (source.stem + ".o"))])

    def compile_one(command):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")

    with ThreadPoolExecutor() as pool:
        list(pool.map(compile_one, jobs))
    executable = out_dir / "kernel_vs_read"
    objects = [job[-1] for job in jobs]
    compile_one(["gcc", *base, str(Path(__file__).with_suffix(".c")), *objects, "-lpthread", "-lm", "-o",
                 str(executable)])
    return executable


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", help="comma-separated, of avx2, avx512 (default: those this CPU runs)")
    parser.add_argument("--passes", type=int, default=30, help="timed passes per case (the first is dropped)")
    parser.add_argument("--cases", help="TYPE:N_IN:N_ROWS,... (default: the v7 shapes above)")
    parser.add_argument("--cold-mb", type=float, default=256.0,
                        help="bytes of matrix copies that passes cycle through (0: one copy)")
    args = parser.parse_args(argv)
    if shutil.which("gcc") is None:
        print("kernel_vs_read: needs gcc", file=sys.stderr)
        return 1
    from rwkvx.cpu import cpu_info
    from rwkvx.formats.ggml_types import ggml_type

    info = cpu_info()
    supported = [level for level in ("avx512", "avx2") if level in info["supported"]]
    levels = args.levels.split(",") if args.levels else supported
    unusable = [level for level in levels if level not in supported]
    if unusable:
        print(f"kernel_vs_read: this CPU does not run {', '.join(unusable)} (it runs: {', '.join(supported)})",
              file=sys.stderr)
        return 1
    cases = DEFAULT_CASES
    if args.cases:
        cases = []
        for item in args.cases.split(","):
            type_name, n_in, n_rows = item.split(":")
            cases.append((type_name, int(n_in), int(n_rows)))

    print(f"# {info['model_name']}; 2 threads, one token; {args.passes} passes, each: product, plain read, "
          f"prefetching read, read of 4 parts side by side in 4 MB windows; copies cycled through: {args.cold_mb:g} MB of them")
    print("| level | type | n_in x n_rows | MB | copies | product GB/s | product / read: median | q1-q3 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        executable = build(Path(tmp))
        for level in levels:
            for type_name, n_in, n_rows in cases:
                matrix_bytes = ggml_type(type_name).nbytes(n_in) * n_rows
                copies = max(1, -(-int(args.cold_mb * 1e6) // matrix_bytes))
                result = subprocess.run([str(executable), level, str(ggml_type(type_name).id), str(n_in), str(n_rows),
                                         str(args.passes), str(copies)], capture_output=True, text=True)
                if result.returncode != 0:
                    print(f"| {level} | {type_name} | {n_in} x {n_rows} | failed: {result.stderr.strip()} |")
                    continue
                _, _, _, n_bytes, median, q1, q3, gbs = result.stdout.split()
                print(f"| {level} | {type_name} | {n_in} x {n_rows} | {int(n_bytes) / 1e6:.1f} | {copies} | {float(gbs):.1f} | "
                      f"{float(median):.3f} | {float(q1):.3f}-{float(q3):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile cuda/*.cu to PTX at build time, so the wheel ships kernels the driver can JIT for any GPU.

    python -m rwkvx.cuda.build_ptx            # from the repository root; setup.py calls build()

Output: rwkvx/cuda/ptx/<name>.ptx (PTX_ARCH: the oldest virtual architecture nvcc still targets, so the
driver compiles it for every newer GPU), plus a copy of the sources in rwkvx/cuda/src/ that the runtime
falls back to (PyCUDA's compiler) when no PTX was built. Without nvcc only the sources are copied.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

PTX_ARCH = "compute_75"  # Turing: the oldest architecture CUDA 12/13 compile for
HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)  # rwkvx/
REPO_ROOT = os.path.dirname(PACKAGE_ROOT)
SOURCE_DIR = os.path.join(REPO_ROOT, "cuda")
HEADER_DIR = os.path.join(PACKAGE_ROOT, "_kernels")  # blocks.h, shared with the C core
PTX_DIR = os.path.join(HERE, "ptx")
SHIPPED_SOURCE_DIR = os.path.join(HERE, "src")


def find_nvcc() -> str | None:
    """Path of nvcc: $CUDA_HOME/bin/nvcc, else the first on PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def cuda_sources(source_dir: str = SOURCE_DIR) -> list[str]:
    return sorted(glob.glob(os.path.join(source_dir, "*.cu")))


def nvcc_command(nvcc: str, source: str, output: str, target: str) -> list[str]:
    """nvcc arguments: target "compute_XX" makes PTX, "sm_XX" makes a cubin (what the tests check)."""
    kind = "--ptx" if target.startswith("compute_") else "--cubin"
    return [nvcc, kind, f"-arch={target}", "-std=c++17", "-O3", "-Werror", "all-warnings",
            "-I", HEADER_DIR, "-I", os.path.dirname(source), "-o", output, source]


def compile_source(source: str, output: str, target: str = PTX_ARCH, nvcc: str | None = None) -> None:
    """Compile one .cu file; raises RuntimeError with nvcc's output if it fails."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    done = subprocess.run(nvcc_command(nvcc, source, output, target), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for {target}:\n{done.stdout}{done.stderr}")


def build(verbose: bool = True) -> list[str]:
    """Copy the sources into the package and compile them to PTX if nvcc exists. Returns files written."""
    written = []
    os.makedirs(SHIPPED_SOURCE_DIR, exist_ok=True)
    for path in cuda_sources() + glob.glob(os.path.join(SOURCE_DIR, "*.cuh")):
        target = os.path.join(SHIPPED_SOURCE_DIR, os.path.basename(path))
        shutil.copyfile(path, target)
        written.append(target)
    nvcc = find_nvcc()
    if nvcc is None:
        if verbose:
            print("rwkvx: nvcc not found; shipping CUDA sources only (PyCUDA compiles them at first use)")
        return written
    os.makedirs(PTX_DIR, exist_ok=True)
    for source in cuda_sources():
        output = os.path.join(PTX_DIR, os.path.splitext(os.path.basename(source))[0] + ".ptx")
        compile_source(source, output, PTX_ARCH, nvcc)
        written.append(output)
        if verbose:
            print(f"rwkvx: {os.path.relpath(source, REPO_ROOT)} -> {os.path.relpath(output, REPO_ROOT)}")
    return written


if __name__ == "__main__":
    try:
        build()
    except RuntimeError as exc:
        sys.exit(str(exc))

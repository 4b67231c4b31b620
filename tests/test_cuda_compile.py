"""Every cuda/*.cu compiles with nvcc for Ampere (sm_80) and Hopper (sm_90), with warnings as errors, and
the PTX the package ships declares every kernel the Python side launches, with matching argument types."""
import os
import re

import pytest

from rwkvx.cuda import build_ptx
from rwkvx.cuda.kernels import SIGNATURES

NVCC = build_ptx.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")
SOURCES = build_ptx.cuda_sources()
# pycuda prepare() letters -> PTX parameter types the kernel must declare for them
PTX_PARAM_TYPES = {"P": {"u64", "b64", "s64"}, "q": {"u64", "b64", "s64"}, "i": {"u32", "b32", "s32"},
                   "f": {"f32", "b32"}}


def test_there_are_cuda_sources():
    names = {os.path.basename(p) for p in SOURCES}
    assert {"matvec.cu", "wkv.cu", "norm.cu", "elementwise.cu", "v7.cu"} <= names


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_source_compiles(source, arch, tmp_path):
    build_ptx.compile_source(source, str(tmp_path / "out.cubin"), arch, NVCC)
    assert (tmp_path / "out.cubin").stat().st_size > 0


@needs_nvcc
def test_ptx_declares_every_launched_kernel_with_matching_parameters(tmp_path):
    entries = {}
    for source in SOURCES:
        out = tmp_path / (os.path.basename(source) + ".ptx")
        build_ptx.compile_source(source, str(out), build_ptx.PTX_ARCH, NVCC)
        text = out.read_text()
        for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", text):
            entries[name] = re.findall(r"\.param\s+\.(\w+)", params)
    for name, signature in SIGNATURES.items():
        assert name in entries, f"{name} is launched but not compiled"
        params = entries[name]
        assert len(params) == len(signature), f"{name}: PTX has {len(params)} parameters, launcher passes {len(signature)}"
        for i, (letter, ptx_type) in enumerate(zip(signature, params)):
            assert ptx_type in PTX_PARAM_TYPES[letter], f"{name} parameter {i}: PTX .{ptx_type}, launcher '{letter}'"

"""Loading the kernels of cuda/*.cu into the current CUDA context.

Shipped PTX (rwkvx/cuda/ptx/, built by build_ptx.py) is preferred: the driver JIT-compiles it for the
GPU at hand. Without it, PyCUDA compiles the sources at first use (needs nvcc at run time).
"""
from __future__ import annotations

import glob
import os

from . import build_ptx
from .errors import GPUError

# Kernel name -> argument types for pycuda's Function.prepare (P pointer, i int32, q int64, f float32).
SIGNATURES = {
    **{f"rwkvx_matmul_{t}_f32": "PiiPiiPi" for t in ("f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")},
    "rwkvx_f32_to_f16": "PiiiP",
    "rwkvx_layer_norm_f32": "PPiPPf",
    "rwkvx_group_norm_f32": "PPiPPf",
    "rwkvx_token_shift": "PPPii",
    "rwkvx_lerp_mix": "PPPPii",
    "rwkvx_delta_mix": "PPPPPii",
    "rwkvx_add": "PPq",
    "rwkvx_tanh": "Pq",
    "rwkvx_sigmoid": "Pq",
    "rwkvx_relu_squared": "Pq",
    "rwkvx_mul_sigmoid": "PPq",
    "rwkvx_mul_silu": "PPq",
    "rwkvx_decay_v6": "PPii",
    "rwkvx_decay_v7": "PPii",
    "rwkvx_sigmoid_bias": "PPii",
    "rwkvx_value_residual": "PPPPii",
    "rwkvx_v7_keys": "PPPPPPi",
    "rwkvx_v7_bonus_gate": "PPPPPPi",
    "rwkvx_wkv4_f32": "iiPPPPPPPP",
    "rwkvx_wkv5_f32": "iiPPPPPiPP",
    "rwkvx_wkv7_f32": "iiPPPPPPPP",
}


def _source_dir() -> str:
    shipped = build_ptx.SHIPPED_SOURCE_DIR
    return shipped if glob.glob(os.path.join(shipped, "*.cu")) else build_ptx.SOURCE_DIR


def load_kernels() -> dict:
    """Name -> prepared pycuda Function for every kernel in SIGNATURES (a context must be current)."""
    import pycuda.driver as drv

    modules = []
    ptx_files = sorted(glob.glob(os.path.join(build_ptx.PTX_DIR, "*.ptx")))
    if ptx_files:
        for path in ptx_files:
            with open(path, "rb") as f:
                modules.append(drv.module_from_buffer(f.read()))
    else:
        from pycuda.compiler import SourceModule

        src_dir = _source_dir()
        for path in build_ptx.cuda_sources(src_dir):
            with open(path) as f:
                modules.append(SourceModule(f.read(), no_extern_c=True, options=["-std=c++17"],
                                            include_dirs=[build_ptx.HEADER_DIR, src_dir]))
    functions = {}
    for name, signature in SIGNATURES.items():
        for module in modules:
            try:
                function = module.get_function(name)
            except drv.Error:  # not in this module (cuModuleGetFunction: not found)
                continue
            function.prepare(signature)
            functions[name] = function
            break
        else:
            raise GPUError(f"CUDA kernel {name} is missing from the compiled modules (rebuild the PTX)")
    return functions

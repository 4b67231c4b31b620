"""The optional CUDA backend: offloaded layers and head, run with PyCUDA kernels and cuBLAS.

Nothing here imports pycuda at import time: driver.py imports it when a policy asks for a device.
Files: errors.py (GPUUnavailableError), driver.py (finding PyCUDA / driver / device), build_ptx.py
(nvcc -> PTX at build time), kernels.py (loading the PTX, typed launchers), cublas.py (ctypes
binding), backend.py (device buffers + ops), ops_numpy.py (the same ops in NumPy: the kernels'
specification), segment.py (a block of layers and the head, written against ops), runner.py (the
plan executed around the CPU core), residency.py (device-resident state, synced when read).
"""
from .errors import GPUError, GPUUnavailableError

__all__ = ["GPUError", "GPUUnavailableError", "gpu_info"]


def gpu_info() -> dict:
    """The GPUs found, or why none (see driver.gpu_info)."""
    from .driver import gpu_info as _gpu_info

    return _gpu_info()

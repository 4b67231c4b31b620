"""Errors of the CUDA backend. Both are rwkvx.BackendError, so `except rwkvx.BackendError` catches them."""
from __future__ import annotations

from ..errors import BackendError

# What to do about each missing piece, shown in the message.
REMEDIES = {
    "pycuda": "install it with `pip install rwkvx[cuda]` (needs the CUDA toolkit to build), or load the model "
              "without offload=",
    "driver": "install or update the NVIDIA driver (libcuda) so that `nvidia-smi` works, or load the model "
              "without offload=",
    "device": "check `nvidia-smi` and CUDA_VISIBLE_DEVICES, pick an existing device with Offload(device=...), "
              "or load the model without offload=",
}


class GPUUnavailableError(BackendError):
    """Offload was asked for, but PyCUDA, the NVIDIA driver or the CUDA device is missing.

    `missing` is "pycuda", "driver" or "device"; the message says what was found and what to do.
    """

    def __init__(self, missing: str, detail: str):
        self.missing = missing
        super().__init__(f"GPU offload unavailable: {detail}. To fix: {REMEDIES[missing]}.")


class GPUError(BackendError):
    """A CUDA call failed while running an offloaded segment (kernel launch, copy, cuBLAS)."""

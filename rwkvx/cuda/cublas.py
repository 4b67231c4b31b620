"""A thin ctypes binding of the four cuBLAS calls the backend needs, on the PyCUDA stream.

Used only for sequence-mode products of FP32 and FP16 weights (T > 1 tokens), where a GEMM beats the
matrix-vector kernels; serial decoding and quantized weights use cuda/matvec.cu.

Our matrices are row-major: W [n_rows, n_in], x [T, ldx], y [T, ldy]. cuBLAS is column-major, where
the same memory reads as W^T (n_in x n_rows, ld n_in), x^T and y^T, so y^T = W x^T is
gemm(op(A)=T on W, op(B)=N on x): m = n_rows, n = T, k = n_in.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from .errors import GPUError

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_16F = 0, 2  # cudaDataType_t (library_types.h)
CUBLAS_COMPUTE_32F = 68  # cublasComputeType_t: accumulate in float32
CUBLAS_GEMM_DEFAULT = -1
LIBRARY_NAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so", "cublas64_13.dll",
                 "cublas64_12.dll", "cublas64_11.dll")

_c_int, _ptr = ctypes.c_int, ctypes.c_void_p


def _load_library():
    names = list(LIBRARY_NAMES)
    found = ctypes.util.find_library("cublas")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise GPUError("cuBLAS (libcublas) was not found: install the CUDA toolkit's cuBLAS "
                   "(e.g. `pip install nvidia-cublas-cu12`) or add its directory to LD_LIBRARY_PATH")


class Cublas:
    """One cuBLAS handle bound to a CUDA stream (an int CUstream, e.g. pycuda Stream.handle)."""

    def __init__(self, stream_handle: int):
        lib = self.lib = _load_library()
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(_ptr)]
        lib.cublasDestroy_v2.argtypes = [_ptr]
        lib.cublasSetStream_v2.argtypes = [_ptr, _ptr]
        lib.cublasSgemm_v2.argtypes = [_ptr, _c_int, _c_int, _c_int, _c_int, _c_int, _ptr, _ptr, _c_int,
                                       _ptr, _c_int, _ptr, _ptr, _c_int]
        lib.cublasGemmEx.argtypes = [_ptr, _c_int, _c_int, _c_int, _c_int, _c_int, _ptr, _ptr, _c_int, _c_int,
                                     _ptr, _c_int, _c_int, _ptr, _ptr, _c_int, _c_int, _c_int, _c_int]
        for f in (lib.cublasCreate_v2, lib.cublasDestroy_v2, lib.cublasSetStream_v2, lib.cublasSgemm_v2,
                  lib.cublasGemmEx):
            f.restype = _c_int
        self.handle = _ptr()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetStream_v2(self.handle, _ptr(stream_handle)), "cublasSetStream")
        self._one, self._zero = ctypes.c_float(1.0), ctypes.c_float(0.0)  # host scalars (default pointer mode)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise GPUError(f"{what} failed with cublasStatus_t {status}")

    def matmul_f32(self, w_ptr: int, n_in: int, n_rows: int, x_ptr: int, ldx: int, n_tokens: int,
                   y_ptr: int, ldy: int) -> None:
        """y [T, ldy] = x [T, ldx][:, :n_in] @ W^T with W float32 [n_rows, n_in]."""
        self._check(self.lib.cublasSgemm_v2(
            self.handle, CUBLAS_OP_T, CUBLAS_OP_N, n_rows, n_tokens, n_in, ctypes.byref(self._one),
            _ptr(w_ptr), n_in, _ptr(x_ptr), ldx, ctypes.byref(self._zero), _ptr(y_ptr), ldy), "cublasSgemm")

    def matmul_f16(self, w_ptr: int, n_in: int, n_rows: int, x16_ptr: int, n_tokens: int, y_ptr: int,
                   ldy: int) -> None:
        """y [T, ldy] = x16 [T, n_in] @ W^T, W and x16 half, accumulated and stored in float32."""
        self._check(self.lib.cublasGemmEx(
            self.handle, CUBLAS_OP_T, CUBLAS_OP_N, n_rows, n_tokens, n_in, ctypes.byref(self._one),
            _ptr(w_ptr), CUDA_R_16F, n_in, _ptr(x16_ptr), CUDA_R_16F, n_in, ctypes.byref(self._zero),
            _ptr(y_ptr), CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), "cublasGemmEx")

    def close(self) -> None:
        if self.handle:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = _ptr()

"""CudaOps: the ops interface of ops_numpy.NumpyOps, run by the kernels of cuda/*.cu on one device.

Buffers are DeviceArray (a pointer, a shape, and the allocation that keeps it alive); weights are
DeviceWeight (the file's bytes uploaded unchanged, plus type and shape). All work is queued on one
stream; copies to the host synchronize it, so the host only waits where the plan crosses the bus.
"""
from __future__ import annotations

import numpy as np

from .errors import GPUError

ELEMENTWISE_THREADS = 256
MAX_GRID = 4096  # grid-stride kernels: enough blocks to fill any GPU, few enough to launch cheaply
ROWS_PER_BLOCK = 4  # matmul: warps (output rows) per block
CUBLAS_MIN_TOKENS = 16  # sequence length from which FP32/FP16 products go to cuBLAS
_TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q5_0", 8: "q5_1", 9: "q8_0"}
_BLOCK_BYTES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 7: (32, 22), 8: (32, 24), 9: (32, 34)}


class DeviceArray:
    """float32 device memory: ptr, shape (C order), and the allocation it belongs to."""

    __slots__ = ("ptr", "shape", "owner")

    def __init__(self, ptr: int, shape: tuple, owner):
        self.ptr, self.shape, self.owner = int(ptr), tuple(shape), owner

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)


class DeviceWeight:
    """A weight matrix [n_rows, n_in] in its file type (blocks.h layout)."""

    __slots__ = ("ptr", "type_id", "n_in", "n_rows", "owner")

    def __init__(self, ptr: int, type_id: int, n_in: int, n_rows: int, owner):
        self.ptr, self.type_id, self.n_in, self.n_rows, self.owner = int(ptr), type_id, n_in, n_rows, owner

    @property
    def row_bytes(self) -> int:
        block, size = _BLOCK_BYTES[self.type_id]
        return self.n_in // block * size

    def rows(self, begin: int, end: int) -> "DeviceWeight":
        return DeviceWeight(self.ptr + begin * self.row_bytes, self.type_id, self.n_in, end - begin, self.owner)


def _i32(v) -> np.int32:
    return np.int32(v)


class CudaOps:
    """See ops_numpy.NumpyOps for what each method computes."""

    name = "cuda"

    def __init__(self, device_index: int):
        from .driver import device
        from .kernels import load_kernels

        import pycuda.driver as drv

        self.drv = drv
        self.context = device(device_index).make_context()
        try:
            self.stream = drv.Stream()
            self.k = load_kernels()
            self._cublas = None  # created on first sequence-mode FP32/FP16 product
            self._f16_scratch = None
            self._staging = drv.pagelocked_empty(1 << 16, np.float32)
        finally:
            self.context.pop()  # pushed again around every call by the runner (see activate)

    # ---- context ----
    def activate(self):
        self.context.push()

    def deactivate(self):
        self.context.pop()

    def close(self):
        if self._cublas is not None:
            self._cublas.close()
        self.context.detach()

    # ---- memory ----
    def empty(self, shape) -> DeviceArray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = int(np.prod(shape, dtype=np.int64))
        alloc = self.drv.mem_alloc(max(n, 1) * 4)
        self.drv.memset_d32(alloc, 0, max(n, 1))
        return DeviceArray(int(alloc), shape, alloc)

    def upload(self, host: np.ndarray) -> DeviceArray:
        host = np.ascontiguousarray(host, dtype=np.float32)
        buf = self.empty(host.shape)
        self.to_device(buf, host)
        return buf

    def weight(self, raw: np.ndarray, type_id: int, n_in: int, n_rows: int) -> DeviceWeight:
        if type_id not in _TYPE_NAMES:
            raise GPUError(f"weight type id {type_id} has no GPU kernel")
        data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        alloc = self.drv.mem_alloc(max(data.nbytes, 1))
        self.drv.memcpy_htod(alloc, data)  # once, at load: the file's bytes, unchanged
        return DeviceWeight(int(alloc), type_id, n_in, n_rows, alloc)

    def _stage(self, n: int) -> np.ndarray:
        if self._staging.size < n:
            self._staging = self.drv.pagelocked_empty(n, np.float32)
        return self._staging[:n]

    def to_device(self, dst: DeviceArray, host: np.ndarray) -> None:
        stage = self._stage(dst.size)
        stage[...] = np.asarray(host, dtype=np.float32).reshape(-1)
        self.drv.memcpy_htod_async(dst.ptr, stage, self.stream)
        self.stream.synchronize()  # the staging buffer is reused by the next copy

    def to_host(self, host: np.ndarray, src: DeviceArray) -> None:
        stage = self._stage(src.size)
        self.drv.memcpy_dtoh_async(stage, src.ptr, self.stream)
        self.stream.synchronize()
        host[...] = stage.reshape(host.shape)

    def copy(self, dst: DeviceArray, src: DeviceArray) -> None:
        self.drv.memcpy_dtod_async(dst.ptr, src.ptr, src.size * 4, self.stream)

    def rows(self, buf: DeviceArray, begin: int, end: int) -> DeviceArray:
        width = buf.shape[1]
        return DeviceArray(buf.ptr + begin * width * 4, (end - begin, width), buf.owner)

    def flat(self, buf: DeviceArray, begin: int, end: int) -> DeviceArray:
        return DeviceArray(buf.ptr + begin * 4, (end - begin,), buf.owner)

    def synchronize(self) -> None:
        self.stream.synchronize()

    # ---- launching ----
    def _launch(self, name: str, grid, block: int, *args) -> None:
        grid = grid if isinstance(grid, tuple) else (int(grid), 1)
        self.k[name].prepared_async_call(grid, (block, 1, 1), self.stream, *args)

    def _pointwise(self, name: str, n: int, *args) -> None:
        blocks = min(MAX_GRID, max(1, -(-n // ELEMENTWISE_THREADS)))
        self._launch(name, blocks, ELEMENTWISE_THREADS, *args)

    # ---- products and norms ----
    def matmul(self, w: DeviceWeight, x: DeviceArray, y: DeviceArray, x_col: int = 0) -> None:
        T, ldx, ldy = y.shape[0], x.shape[1], y.shape[1]
        x_ptr = x.ptr + x_col * 4
        if T >= CUBLAS_MIN_TOKENS and w.type_id in (0, 1):
            self._matmul_cublas(w, x_ptr, ldx, T, y, ldy)
            return
        blocks = -(-w.n_rows // ROWS_PER_BLOCK)
        self._launch(f"rwkvx_matmul_{_TYPE_NAMES[w.type_id]}_f32", blocks, ROWS_PER_BLOCK * 32,
                     w.ptr, _i32(w.n_in), _i32(w.n_rows), x_ptr, _i32(ldx), _i32(T), y.ptr, _i32(ldy))

    def _matmul_cublas(self, w, x_ptr, ldx, T, y, ldy) -> None:
        if self._cublas is None:
            from .cublas import Cublas

            self._cublas = Cublas(self.stream.handle)
        if w.type_id == 0:
            self._cublas.matmul_f32(w.ptr, w.n_in, w.n_rows, x_ptr, ldx, T, y.ptr, ldy)
            return
        n = T * w.n_in  # FP16 weights: cuBLAS wants both operands in half; convert x once per product
        if self._f16_scratch is None or self._f16_scratch.size < (n + 1) // 2:
            self._f16_scratch = self.empty(((n + 1) // 2,))  # float32 words holding 2 halves each
        self._pointwise("rwkvx_f32_to_f16", n, x_ptr, _i32(ldx), _i32(T), _i32(w.n_in), self._f16_scratch.ptr)
        self._cublas.matmul_f16(w.ptr, w.n_in, w.n_rows, self._f16_scratch.ptr, T, y.ptr, ldy)

    def layer_norm(self, x, out, weight, bias, eps: float) -> None:
        self._launch("rwkvx_layer_norm_f32", x.shape[0], 256, x.ptr, out.ptr, _i32(x.shape[1]), weight.ptr,
                     bias.ptr, np.float32(eps))

    def group_norm(self, x, out, weight, bias, n_head: int, eps: float) -> None:
        T, C = x.shape
        self._launch("rwkvx_group_norm_f32", (n_head, T), 32, x.ptr, out.ptr, _i32(C // n_head), weight.ptr,
                     bias.ptr, np.float32(eps))

    # ---- token shift and mixes ----
    def token_shift(self, a, prev, stored) -> None:
        T, C = a.shape
        self._pointwise("rwkvx_token_shift", C, a.ptr, prev.ptr, stored.ptr, _i32(T), _i32(C))

    def lerp_mix(self, a, prev, mu, out) -> None:
        T, C = a.shape
        self._pointwise("rwkvx_lerp_mix", T * C, a.ptr, prev.ptr, mu.ptr, out.ptr, _i32(T), _i32(C))

    def delta_mix(self, a, prev, mu, out, m=None) -> None:
        T, C = a.shape
        self._pointwise("rwkvx_delta_mix", T * C, a.ptr, prev.ptr, mu.ptr, 0 if m is None else m.ptr, out.ptr,
                        _i32(T), _i32(C))

    # ---- elementwise ----
    def _unary(self, name, x) -> None:
        self._pointwise(name, x.size, x.ptr, np.int64(x.size))

    def add(self, x, d) -> None:
        self._pointwise("rwkvx_add", x.size, x.ptr, d.ptr, np.int64(x.size))

    def tanh(self, x) -> None:
        self._unary("rwkvx_tanh", x)

    def sigmoid(self, x) -> None:
        self._unary("rwkvx_sigmoid", x)

    def relu_squared(self, x) -> None:
        self._unary("rwkvx_relu_squared", x)

    def mul_sigmoid(self, y, r) -> None:
        self._pointwise("rwkvx_mul_sigmoid", y.size, y.ptr, r.ptr, np.int64(y.size))

    def mul_silu(self, y, g) -> None:
        self._pointwise("rwkvx_mul_silu", y.size, y.ptr, g.ptr, np.int64(y.size))

    def _per_channel(self, name, x, *params) -> None:
        T, C = x.shape
        self._pointwise(name, T * C, x.ptr, *[p.ptr for p in params], _i32(T), _i32(C))

    def decay_v6(self, w, time_decay) -> None:
        self._per_channel("rwkvx_decay_v6", w, time_decay)

    def decay_v7(self, w, w0) -> None:
        self._per_channel("rwkvx_decay_v7", w, w0)

    def sigmoid_bias(self, x, bias) -> None:
        self._per_channel("rwkvx_sigmoid_bias", x, bias)

    def value_residual(self, v, v_first, mix, v0) -> None:
        self._per_channel("rwkvx_value_residual", v, v_first, mix, v0)

    def v7_keys(self, k, alpha, k_k, k_a, a, b, n_head: int) -> None:
        T, C = k.shape
        self._launch("rwkvx_v7_keys", (n_head, T), 32, k.ptr, alpha.ptr, k_k.ptr, k_a.ptr, a.ptr, b.ptr,
                     _i32(C // n_head))

    def v7_bonus_gate(self, y, r, k, v, g, r_k, n_head: int) -> None:
        T, C = y.shape
        self._launch("rwkvx_v7_bonus_gate", (n_head, T), 32, y.ptr, r.ptr, k.ptr, v.ptr, g.ptr, r_k.ptr,
                     _i32(C // n_head))

    # ---- recurrences ----
    def wkv4(self, k, v, u, w, layer_state, y) -> None:
        T, C = k.shape
        st = layer_state.ptr
        self._launch("rwkvx_wkv4_f32", -(-C // 256), 256, _i32(T), _i32(C), k.ptr, v.ptr, u.ptr, w.ptr,
                     st + 2 * C * 4, st + 3 * C * 4, st + 4 * C * 4, y.ptr)

    def wkv5(self, r, k, v, u, w, heads, y, n_head: int) -> None:
        T, C = r.shape
        w_stride = 0 if w.ndim == 1 else C
        self._launch("rwkvx_wkv5_f32", n_head, C // n_head, _i32(T), _i32(C // n_head), r.ptr, k.ptr, v.ptr,
                     u.ptr, w.ptr, _i32(w_stride), heads.ptr, y.ptr)

    def wkv7(self, r, w, k, v, a, b, heads, y, n_head: int) -> None:
        T, C = r.shape
        self._launch("rwkvx_wkv7_f32", n_head, C // n_head, _i32(T), _i32(C // n_head), r.ptr, w.ptr, k.ptr,
                     v.ptr, a.ptr, b.ptr, heads.ptr, y.ptr)


def open_backend(device_index: int) -> CudaOps:
    """CudaOps on device `device_index`; GPUUnavailableError if PyCUDA, the driver or the device is missing."""
    from .driver import device

    device(device_index)  # raises the precise GPUUnavailableError before anything else is attempted
    return CudaOps(device_index)

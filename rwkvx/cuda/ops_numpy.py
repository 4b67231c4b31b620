"""Every device operation of the offload backend, in float32 NumPy: the specification of the kernels.

The GPU backend (backend.CudaOps) implements the same methods with the kernels of cuda/*.cu; the GPU
tests compare the two op by op. The device segment code (segment.py) is written against this
interface, so with NumpyOps it runs, and is tested, on any machine.

Buffers are float32 arrays: activations [T, n] row-major, parameters [n]. Views (rows, flat) share
memory with their buffer, as device pointers into one allocation do.
"""
from __future__ import annotations

import numpy as np

from ..formats.ggml_types import dequantize, ggml_type

WKV_MAX_HEAD_SIZE = 64  # RWKVX_MAX_HEAD_SIZE in cuda/common.cuh


def sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


class NumpyWeight:
    """A weight matrix [n_rows, n_in], dequantized to float32."""

    def __init__(self, matrix: np.ndarray, type_id: int):
        self.matrix, self.type_id = matrix, type_id
        self.n_rows, self.n_in = matrix.shape

    def rows(self, begin: int, end: int) -> "NumpyWeight":
        return NumpyWeight(self.matrix[begin:end], self.type_id)


class NumpyOps:
    """The reference implementation of the ops interface (see module docstring)."""

    name = "numpy"

    # ---- context (the CUDA backend makes its context current around every call) ----
    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    # ---- memory ----
    def empty(self, shape) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def upload(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, dtype=np.float32, copy=True)

    def weight(self, raw: np.ndarray, type_id: int, n_in: int, n_rows: int) -> NumpyWeight:
        values = dequantize(raw, ggml_type(type_id).name, n_in * n_rows)
        return NumpyWeight(values.reshape(n_rows, n_in), type_id)

    def to_device(self, dst: np.ndarray, host: np.ndarray) -> None:
        dst[...] = host.reshape(dst.shape)

    def to_host(self, host: np.ndarray, src: np.ndarray) -> None:
        host[...] = src.reshape(host.shape)

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        dst[...] = src

    def rows(self, buf: np.ndarray, begin: int, end: int) -> np.ndarray:
        return buf[begin:end]

    def flat(self, buf: np.ndarray, begin: int, end: int) -> np.ndarray:
        return buf.reshape(-1)[begin:end]

    def synchronize(self) -> None:
        pass

    # ---- products and norms ----
    def matmul(self, w: NumpyWeight, x: np.ndarray, y: np.ndarray, x_col: int = 0) -> None:
        """y [T, n_rows] = x[:, x_col : x_col + n_in] @ W.T for T = y.shape[0] rows of x."""
        T = y.shape[0]
        y[...] = x[:T, x_col:x_col + w.n_in] @ w.matrix.T

    def layer_norm(self, x, out, weight, bias, eps: float) -> None:
        mean = x.mean(axis=1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
        out[...] = (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias

    def group_norm(self, x, out, weight, bias, n_head: int, eps: float) -> None:
        T, C = x.shape
        heads = x.reshape(T, n_head, C // n_head)
        mean = heads.mean(axis=2, keepdims=True)
        var = ((heads - mean) ** 2).mean(axis=2, keepdims=True)
        out[...] = ((heads - mean) / np.sqrt(var + np.float32(eps))).reshape(T, C) * weight + bias

    # ---- token shift and mixes ----
    def token_shift(self, a, prev, stored) -> None:
        """prev[0] = stored, prev[t] = a[t-1]; stored becomes a[T-1]."""
        prev[0] = stored
        prev[1:] = a[:-1]
        stored[...] = a[-1]

    def lerp_mix(self, a, prev, mu, out) -> None:
        out[...] = a * mu + prev * (np.float32(1.0) - mu)

    def delta_mix(self, a, prev, mu, out, m=None) -> None:
        coef = mu if m is None else mu + m
        out[...] = a + (prev - a) * coef

    # ---- elementwise ----
    def add(self, x, d) -> None:
        x += d

    def tanh(self, x) -> None:
        np.tanh(x, out=x)

    def sigmoid(self, x) -> None:
        x[...] = sigmoid(x)

    def relu_squared(self, x) -> None:
        x[...] = np.maximum(x, 0) ** 2

    def mul_sigmoid(self, y, r) -> None:
        y *= sigmoid(r)

    def mul_silu(self, y, g) -> None:
        y *= g * sigmoid(g)

    def decay_v6(self, w, time_decay) -> None:
        w[...] = np.exp(-np.exp(time_decay + w))

    def decay_v7(self, w, w0) -> None:
        w[...] = np.exp(np.float32(-0.606531) * sigmoid(w0 + w))

    def sigmoid_bias(self, x, bias) -> None:
        x[...] = sigmoid(bias + x)

    def value_residual(self, v, v_first, mix, v0) -> None:
        v += (v_first - v) * sigmoid(v0 + mix)

    def v7_keys(self, k, alpha, k_k, k_a, a, b, n_head: int) -> None:
        """a = -kk, b = kk * alpha with kk = per-head unit vector of k * k_k; then k *= 1 + (alpha - 1) k_a."""
        T, C = k.shape
        kk = (k * k_k).reshape(T, n_head, -1)
        norm = np.sqrt((kk * kk).sum(axis=2, keepdims=True))
        kk = (kk / np.maximum(norm, np.float32(1e-12))).reshape(T, C)
        a[...] = -kk
        b[...] = kk * alpha
        k *= np.float32(1.0) + (alpha - np.float32(1.0)) * k_a

    def v7_bonus_gate(self, y, r, k, v, g, r_k, n_head: int) -> None:
        """y = (y + (sum over the head of r k r_k) v) g."""
        T, C = y.shape
        bonus = (r * k * r_k).reshape(T, n_head, -1).sum(axis=2, keepdims=True)
        y[...] = (y + (bonus * v.reshape(T, n_head, -1)).reshape(T, C)) * g

    # ---- recurrences ----
    def wkv4(self, k, v, u, w, layer_state, y) -> None:
        """layer_state: the layer's [5C] state (ffn_xx, att_xx, aa, bb, pp)."""
        C = k.shape[1]
        aa, bb, pp = (layer_state[i * C:(i + 1) * C] for i in (2, 3, 4))
        for t in range(k.shape[0]):
            ww = u + k[t]
            m = np.maximum(pp, ww)
            e1, e2 = np.exp(pp - m), np.exp(ww - m)
            y[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
            ww = pp + w
            m = np.maximum(ww, k[t])
            e1, e2 = np.exp(ww - m), np.exp(k[t] - m)
            aa[...] = e1 * aa + e2 * v[t]
            bb[...] = e1 * bb + e2
            pp[...] = m

    def wkv5(self, r, k, v, u, w, heads, y, n_head: int) -> None:
        """heads: [H*S*S] as M[h][i=key][j=value]; w is [C] (v5) or [T, C] (v6, per token)."""
        T, C = r.shape
        S = C // n_head
        M = heads.reshape(n_head, S, S)
        for t in range(T):
            wt = (w if w.ndim == 1 else w[t]).reshape(n_head, S, 1)
            kt, vt = k[t].reshape(n_head, S, 1), v[t].reshape(n_head, 1, S)
            kv = kt * vt
            y[t] = np.einsum("hi,hij->hj", r[t].reshape(n_head, S), u.reshape(n_head, S, 1) * kv + M).reshape(C)
            M[...] = wt * M + kv

    def wkv7(self, r, w, k, v, a, b, heads, y, n_head: int) -> None:
        """heads: [H*S*S] as M[h][i=value][j=key]."""
        T, C = r.shape
        S = C // n_head
        M = heads.reshape(n_head, S, S)
        for t in range(T):
            hs = lambda z: z[t].reshape(n_head, S)
            sa = np.einsum("hij,hj->hi", M, hs(a))
            M[...] = (M * hs(w)[:, None, :] + hs(v)[:, :, None] * hs(k)[:, None, :]
                      + sa[:, :, None] * hs(b)[:, None, :])
            y[t] = np.einsum("hij,hj->hi", M, hs(r)).reshape(C)

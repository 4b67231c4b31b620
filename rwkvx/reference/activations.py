"""Emulation of the C core's integer products: activations quantized per 32-block before every product
with a block-quantized weight matrix (ggml's quantize_row_q8_0 / q8_1 reference rules).

For a weight block (d_w, q_w (, m_w)) and an activation block (d_x, q_x (, s_x)) the product is
    d_w * d_x * sum(q_w * q_x)            (Q4_0, Q5_0, Q8_0; activations as Q8_0)
    d_w * d_x * sum(q_w * q_x) + m_w * s_x (Q4_1, Q5_1; activations as Q8_1)
with d_x = fp16(amax / 127), q_x = roundf(x * (1 / (amax / 127))) in float32, and
s_x = fp16(float32(sum q_x) * (amax / 127)) (the unrounded scale). Since d_w * q_w (+ m_w) is the
dequantized weight, the first form is W_deq @ (d_x q_x); the second adds m_w * (s_x - d_x sum q_x).
Sums here are float64; only the rounding of the activations is emulated.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..formats.ggml_types import BLOCK_DTYPES, QK

ACTIVATION_MODES = ("exact", "q8")
TYPES_WITH_MIN = ("Q4_1", "Q5_1")


class QuantizedActivations(NamedTuple):
    values: np.ndarray  # (n,) float64: d_x * q_x, what the integer product effectively multiplies
    scales: np.ndarray  # (n / 32,) float64: d_x as stored (fp16-rounded)
    sums: np.ndarray  # (n / 32,) float64: sum of q_x per block
    s: np.ndarray  # (n / 32,) float64: fp16(sum q_x * unrounded d), the Q8_1 field


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves go away from zero (NumPy's round goes to even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_activations(x: np.ndarray) -> QuantizedActivations:
    """x: (n,) any float dtype, n a multiple of 32; per-block Q8 quantization in float32 arithmetic."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, QK)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = round_half_away((blocks * inv[:, None]).astype(np.float32).astype(np.float64))
    stored = d.astype(np.float16).astype(np.float64)
    sums = q.sum(axis=1)
    s = (sums.astype(np.float32) * d).astype(np.float32).astype(np.float16).astype(np.float64)
    return QuantizedActivations((q * stored[:, None]).reshape(-1), stored, sums, s)


class QuantizedMatrix:
    """A block-quantized weight matrix whose products quantize their input like the C core.

    dense: (..., n_out, n_in) float64 dequantized weights; mins: (..., n_out, n_in / 32) float64 m_w per block
    for Q4_1/Q5_1, else None. Supports `W @ x` for a 1-D x and indexing leading axes (v6's stacked slabs).
    """

    def __init__(self, dense: np.ndarray, type_name: str, mins: np.ndarray | None):
        self.dense, self.type_name, self.mins = dense, type_name, mins
        self.shape = dense.shape

    def __getitem__(self, index):
        return QuantizedMatrix(self.dense[index], self.type_name, None if self.mins is None else self.mins[index])

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        xq = quantize_activations(x)
        y = self.dense @ xq.values
        if self.mins is not None:  # m_w * s_x replaces m_w * d_x * sum(q_x)
            y = y + self.mins @ (xq.s - xq.scales * xq.sums)
        return y


def block_mins(raw: np.ndarray, type_name: str, shape) -> np.ndarray | None:
    """m_w of every block of a raw Q4_1/Q5_1 tensor as float64, shape (..., n_out, n_in / 32); else None."""
    if type_name not in TYPES_WITH_MIN:
        return None
    blocks = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=BLOCK_DTYPES[type_name])
    return blocks["m"].astype(np.float64).reshape(*shape[:-1], shape[-1] // QK)

"""Operations every RWKV architecture shares, in float64 NumPy.

All functions take and return 1-D float64 vectors of length C (n_embd) unless
stated otherwise. Nothing here is clever: it is the math as written.
"""
from __future__ import annotations

import numpy as np

LAYER_NORM_EPS = 1e-5


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias, with the biased variance. x, weight, bias: (C,)."""
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def group_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, n_head: int, eps: float) -> np.ndarray:
    """Normalize each head's slice of x on its own, then apply weight and bias over all C channels.

    x, weight, bias: (C,) with C = n_head * head_size; heads are contiguous slices of x.
    """
    heads = x.reshape(n_head, -1)
    mean = heads.mean(axis=1, keepdims=True)
    var = ((heads - mean) ** 2).mean(axis=1, keepdims=True)
    normed = (heads - mean) / np.sqrt(var + eps)
    return normed.reshape(-1) * weight + bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def relu_squared(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) ** 2


def l2_normalize_heads(x: np.ndarray, n_head: int, eps: float = 1e-12) -> np.ndarray:
    """Scale each head's slice of x to unit Euclidean length (a zero slice stays zero). x: (C,)."""
    heads = x.reshape(n_head, -1)
    norms = np.sqrt((heads**2).sum(axis=1, keepdims=True))
    return (heads / np.maximum(norms, eps)).reshape(-1)


def token_shift(stored: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Return the previous token's input (kept in the state) and keep `current` in its place.

    `stored` is a (C,) view into the state and is overwritten; the returned array is a copy.
    """
    previous = stored.copy()
    stored[:] = current
    return previous


def time_mix_lerp(x: np.ndarray, x_prev: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """v4/v5 token-shift interpolation: mu weights the *current* token, 1 - mu the previous one."""
    return x * mu + x_prev * (1.0 - mu)


def vector(t: np.ndarray) -> np.ndarray:
    """A per-channel parameter stored as (C,) or (1, 1, C), as a flat (C,) vector."""
    return t.reshape(-1)

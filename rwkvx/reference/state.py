"""The recurrent state in rwkv.cpp's flat layout, and named per-layer views into it.

Per layer, concatenated in layer order (C = n_embd, H heads of size S):
    v4:       ffn_xx (C), att_xx (C), aa (C), bb (C), pp (C)       pp starts at -1e30, the rest at 0
    v5/v6/v7: ffn_xx (C), att_xx (C), heads (H*S*S)                 all start at 0
`ffn_xx` / `att_xx` hold the previous token's layer-normed input to each mix (the token shift).
`heads` is h-major, each head an S x S row-major matrix: v5/v6 index it [key][value], v7 [value][key].
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..architecture import ModelShape
from ..errors import StateError

# exp(-1e30) == 0: the v4 WKV starts as if an infinitely old, infinitely small history were stored.
V4_INITIAL_PP = -1e30


class V4LayerState(NamedTuple):
    ffn_xx: np.ndarray  # (C,)
    att_xx: np.ndarray  # (C,)
    aa: np.ndarray  # (C,) numerator of the WKV average, scaled by exp(-pp)
    bb: np.ndarray  # (C,) denominator, scaled likewise
    pp: np.ndarray  # (C,) log of the common scale


class HeadLayerState(NamedTuple):
    ffn_xx: np.ndarray  # (C,)
    att_xx: np.ndarray  # (C,)
    heads: np.ndarray  # (H, S, S) one matrix per head


def initial_state(shape: ModelShape) -> np.ndarray:
    """A fresh float64 state of length shape.state_len."""
    state = np.zeros(shape.state_len, dtype=np.float64)
    if shape.arch == "v4":
        for i in range(shape.n_layer):
            layer_view(state, shape, i).pp[:] = V4_INITIAL_PP
    return state


def layer_view(state: np.ndarray, shape: ModelShape, layer: int) -> V4LayerState | HeadLayerState:
    """Named views (not copies) of one layer's part of a flat float64 state."""
    C, H, S = shape.n_embd, shape.n_head, shape.head_size
    per_layer = shape.state_floats_per_layer
    block = state[layer * per_layer : (layer + 1) * per_layer]
    if shape.arch == "v4":
        return V4LayerState(*block.reshape(5, C))
    return HeadLayerState(block[:C], block[C : 2 * C], block[2 * C :].reshape(H, S, S))


def checked_state_copy(state, shape: ModelShape) -> np.ndarray:
    """A float64 copy of a caller's state, after checking that it fits this model."""
    array = np.asarray(state)
    if array.dtype.kind != "f":
        raise StateError(f"state has dtype {array.dtype}, expected a floating-point array")
    if array.shape != (shape.state_len,):
        raise StateError(
            f"state has shape {array.shape}, expected ({shape.state_len},) for this {shape.arch} model "
            f"(n_embd={shape.n_embd}, n_layer={shape.n_layer}, head_size={shape.head_size})"
        )
    return array.astype(np.float64, copy=True)

"""State: the recurrent state of one sequence, as one float32 buffer.

The layout is rwkv.cpp's (see rwkvx/reference/state.py for the per-layer
fields), so a state's buffer can be exchanged with rwkv.cpp byte for byte.
"""
from __future__ import annotations

import numpy as np

from .architecture import ModelShape
from .errors import StateError
from .reference.state import layer_view


class State:
    """Recurrent state of one sequence for one model.

    `data` is the float32 buffer [shape.state_len]; `layer(i)` gives named views
    of one layer's part (ffn_xx, att_xx and aa/bb/pp for v4 or heads for v5+).
    """

    __slots__ = ("data", "shape")

    def __init__(self, data: np.ndarray, shape: ModelShape):
        data = np.asarray(data)
        if data.dtype != np.float32 or data.shape != (shape.state_len,) or not data.flags.c_contiguous:
            raise StateError(
                f"state buffer must be a contiguous float32 array of shape ({shape.state_len},) for this "
                f"{shape.arch} model; got {data.dtype} {data.shape}"
            )
        self.data = data
        self.shape = shape

    def copy(self) -> "State":
        return State(self.data.copy(), self.shape)

    def layer(self, i: int):
        """Named views (not copies) of layer i's state."""
        if not 0 <= i < self.shape.n_layer:
            raise IndexError(f"layer {i} out of range [0, {self.shape.n_layer})")
        return layer_view(self.data, self.shape, i)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self) -> str:
        s = self.shape
        return f"<rwkvx.State {s.arch} n_layer={s.n_layer} n_embd={s.n_embd} floats={s.state_len}>"

    def check_fits(self, shape: ModelShape) -> None:
        """Raise StateError unless this state belongs to a model of the given shape."""
        if self.shape != shape:
            raise StateError(
                f"state belongs to another model: state is for {self.shape.arch} n_layer={self.shape.n_layer} "
                f"n_embd={self.shape.n_embd} head_size={self.shape.head_size}, model is {shape.arch} "
                f"n_layer={shape.n_layer} n_embd={shape.n_embd} head_size={shape.head_size}"
            )

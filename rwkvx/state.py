"""State: the recurrent state of one sequence, as one float32 buffer.

The layout is rwkv.cpp's (see rwkvx/reference/state.py for the per-layer
fields), so a state's buffer can be exchanged with rwkv.cpp byte for byte.
"""
from __future__ import annotations

import operator
import weakref

import numpy as np

from .architecture import ModelShape
from .errors import StateError
from .reference.state import layer_view


class State:
    """Recurrent state of one sequence for one model.

    `data` is the float32 buffer [shape.state_len]; `layer(i)` gives named views
    of one layer's part (ffn_xx, att_xx and aa/bb/pp for v4 or heads for v5+).
    A state made by a model remembers it (weakly), so `save(path)` can record
    which weights it belongs to.

    The buffer must be a writable, C-contiguous, native float32 array of shape
    (shape.state_len,): forward(..., inplace=True) writes the new state into it.
    State() raises StateError for any other, and check_fits() (which the model
    calls before every use) checks it again, in case it was made read-only or
    replaced since.
    """

    __slots__ = ("_data", "shape", "_owner", "_device", "__weakref__")

    def __init__(self, data: np.ndarray, shape: ModelShape, owner=None):
        if not isinstance(shape, ModelShape):
            raise StateError(f"shape must be a ModelShape (model.shape), got {type(shape).__name__}")
        data = np.asarray(data)
        _check_buffer(data, shape)
        self._data = data
        self.shape = shape
        self._device = None  # a device link while offloaded layers hold newer values (GPU offload)
        self._owner = owner if owner is None or isinstance(owner, weakref.ref) else weakref.ref(owner)

    @property
    def data(self) -> np.ndarray:
        """The float32 buffer. If offloaded layers keep their part on a GPU, reading this syncs it first."""
        if self._device is not None:
            link, self._device = self._device, None
            link.pull(self._data)
        return self._data

    def _host_buffer(self) -> np.ndarray:
        """The buffer without syncing (for the model and offload runner only)."""
        return self._data

    def _attach_device(self, link) -> None:
        """Mark that `link` holds newer values of part of this state; `link.pull(buffer)` copies them back."""
        self._device = link

    def copy(self) -> "State":
        return State(self.data.copy(), self.shape, self._owner)

    def save(self, path, model=None) -> None:
        """Write this state to `path`, tied to the model that made it (format: rwkvx/state_io.py).

        `model` defaults to the model this state came from. Raises StateError if the file cannot be written.
        """
        from .state_io import save_state

        model = model if model is not None else (self._owner() if self._owner is not None else None)
        if model is None:
            raise StateError("this state does not know its model (it was not made by one, or the model is "
                             "gone): pass it, state.save(path, model)")
        save_state(self, model, path)

    @staticmethod
    def load(path, model) -> "State":
        """Read a state saved by State.save; raises StateError if the file cannot be read, is not a state
        file, or does not belong to `model`."""
        from .state_io import load_state

        return load_state(path, model)

    def layer(self, i: int):
        """Named views (not copies) of layer i's state. Raises StateError unless 0 <= i < n_layer."""
        try:
            if isinstance(i, (bool, np.bool_)):
                raise TypeError  # refused like a float: True is not a layer number
            index = operator.index(i)
        except TypeError:
            raise StateError(f"layer index must be an int in [0, {self.shape.n_layer}), "
                             f"got {type(i).__name__} {i!r:.40}") from None
        if not 0 <= index < self.shape.n_layer:
            raise StateError(f"layer {index} out of range [0, {self.shape.n_layer})")
        return layer_view(self.data, self.shape, index)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self) -> str:
        s = self.shape
        return f"<rwkvx.State {s.arch} n_layer={s.n_layer} n_embd={s.n_embd} floats={s.state_len}>"

    def check_fits(self, shape: ModelShape) -> None:
        """Raise StateError unless this state belongs to a model of the given shape and its buffer is usable."""
        if self.shape != shape:
            raise StateError(
                f"state belongs to another model: state is for {self.shape.arch} n_layer={self.shape.n_layer} "
                f"n_embd={self.shape.n_embd} head_size={self.shape.head_size}, model is {shape.arch} "
                f"n_layer={shape.n_layer} n_embd={shape.n_embd} head_size={shape.head_size}"
            )
        _check_buffer(self._data, shape)


def _check_buffer(data, shape: ModelShape) -> None:
    """Raise StateError unless data is what a State must hold (see State): the kernels write into it."""
    if (not isinstance(data, np.ndarray) or data.dtype != np.float32 or data.shape != (shape.state_len,)
            or not data.flags.c_contiguous):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise StateError(f"state buffer must be a contiguous float32 array of shape ({shape.state_len},) for this "
                         f"{shape.arch} model; got {got}")
    if not data.flags.writeable:
        raise StateError("state buffer is read-only, but the model writes each new state into it: pass a "
                         "writable array (e.g. data.copy()), or use state.copy() for a State over a copy")

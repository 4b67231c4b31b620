"""ReferenceModel: the whole RWKV forward pass (embedding, layers, head) in float64 NumPy, token by token."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from ..architecture import (ARCHITECTURES, GROUP_NORM_EPS_OFFICIAL, ModelShape, default_group_norm_eps,
                            expected_tensors, infer_shape)
from ..errors import MissingTensorError, ModelFormatError, TokenError
from . import v4, v5, v6, v7
from .activations import ACTIVATION_MODES, QuantizedMatrix, block_mins
from .common import layer_norm
from .state import checked_state_copy, initial_state, layer_view


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


class ReferenceModel:
    """The readable float64 oracle of an RWKV v4 / v5.1 / v5.2 / v6 / v7 model.

    weights: rwkv.cpp tensor name -> array in NumPy shape (ggml ne reversed), any float dtype;
             converted once to float64. Tensors the architecture does not read are ignored.
    shape:   the model's ModelShape (rwkvx.architecture.infer_shape).
    group_norm_eps: epsilon of the ln_x group norm (v5+); see rwkvx.architecture.default_group_norm_eps.
    activations: "exact" multiplies weights by the float64 activations; "q8" emulates the C core, which
             quantizes activations per 32-block before every product with a block-quantized matrix
             (see activations.py).
    quantized: for "q8", tensor name -> (type name, m_w per block (..., n_out, n_in/32) or None) of the
             matrices stored block-quantized (from_file fills it); ignored for "exact".
    """

    def __init__(self, weights: Mapping[str, np.ndarray], shape: ModelShape,
                 group_norm_eps: float = GROUP_NORM_EPS_OFFICIAL, activations: str = "exact",
                 quantized: Mapping[str, tuple] | None = None):
        if shape.arch not in ARCHITECTURES:
            raise ModelFormatError(f"unknown architecture {shape.arch!r} (known: {', '.join(ARCHITECTURES)})")
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATION_MODES)}, not {activations!r}")
        self.activations = activations
        self.shape = shape
        self.group_norm_eps = float(group_norm_eps)
        needed = expected_tensors(shape)
        params: dict[str, np.ndarray] = {}
        for name, expected in needed.items():
            if name not in weights:
                raise MissingTensorError(f"tensor {name!r} is missing (needed by RWKV {shape.arch})")
            array = np.asarray(weights[name])
            if array.dtype.kind != "f":
                raise ModelFormatError(f"tensor {name!r} has dtype {array.dtype}, expected a floating-point array")
            # Vectors come as (C,) or (1, 1, C); compare without the singleton axes.
            if _squeezed(array.shape) != _squeezed(expected):
                raise ModelFormatError(f"tensor {name!r} has shape {array.shape}, expected {expected}")
            params[name] = np.ascontiguousarray(array, dtype=np.float64).reshape(expected)
        if activations == "q8":
            for name, (type_name, mins) in (quantized or {}).items():
                if name in params and name != "emb.weight":  # the embedding is a row lookup, not a product
                    params[name] = QuantizedMatrix(params[name], type_name, mins)
        self._emb = params["emb.weight"]
        self._ln0 = (params["blocks.0.ln0.weight"], params["blocks.0.ln0.bias"])
        self._ln_out = (params["ln_out.weight"], params["ln_out.bias"])
        self._head = params["head.weight"]
        # Per layer: the layer's tensors keyed without the "blocks.N." prefix, as the arch modules read them.
        self._layers = []
        for i in range(shape.n_layer):
            prefix = f"blocks.{i}."
            self._layers.append({n[len(prefix):]: a for n, a in params.items() if n.startswith(prefix)})

    @classmethod
    def from_file(cls, model_file, group_norm_eps: float | None = None, activations: str = "exact") -> "ReferenceModel":
        """From an open model source (RwkvCppFile, InMemorySource) or the path of an rwkv.cpp .bin
        (quantized weights dequantized). group_norm_eps defaults to the source's convention.
        activations="q8" emulates the C core's activation quantization (see __init__)."""
        if isinstance(model_file, (str, os.PathLike)):
            from ..formats.rwkvcpp import RwkvCppFile

            model_file = RwkvCppFile(model_file)
        shape = infer_shape({name: info.shape for name, info in model_file.tensors.items()}, model_file.path)
        if group_norm_eps is None:
            group_norm_eps = default_group_norm_eps(shape.arch, model_file.convention)
        names = expected_tensors(shape)
        quantized = {}
        if activations == "q8":
            for name in names:
                info = model_file.tensors[name]
                if info.type.quantized:
                    quantized[name] = (info.type.name, block_mins(model_file.raw(name), info.type.name, info.shape))
        return cls({name: model_file.array(name) for name in names}, shape, group_norm_eps, activations, quantized)

    def initial_state(self) -> np.ndarray:
        """A fresh float64 state [state_len] in rwkv.cpp's layout (see state.py)."""
        return initial_state(self.shape)

    def forward(self, tokens: Sequence[int], state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run tokens one after another from `state` (None: the initial state).

        Returns (logits float64 [len(tokens), n_vocab], one row per token; new state float64 [state_len]).
        The input state is not modified.
        """
        tokens = self._checked_tokens(tokens)
        state = self.initial_state() if state is None else checked_state_copy(state, self.shape)
        logits = np.empty((len(tokens), self.shape.n_vocab), dtype=np.float64)
        for t, token in enumerate(tokens):
            logits[t] = self._forward_token(token, state)
        return logits, state

    def _forward_token(self, token: int, state: np.ndarray) -> np.ndarray:
        """Logits (n_vocab,) for one token; advances `state` in place."""
        x = layer_norm(self._emb[token], *self._ln0)
        v_first = None  # v7's value residual: layer 0's value, reused by every later layer
        for i, w in enumerate(self._layers):
            layer_state = layer_view(state, self.shape, i)
            arch = self.shape.arch
            if arch == "v4":
                x = v4.block(x, w, layer_state)
            elif arch in ("v5.1", "v5.2"):
                x = v5.block(x, w, layer_state, self.shape, self.group_norm_eps)
            elif arch == "v6":
                x = v6.block(x, w, layer_state, self.shape, self.group_norm_eps)
            else:
                x, v_first = v7.block(x, w, layer_state, self.shape, v_first, self.group_norm_eps)
        return self._head @ layer_norm(x, *self._ln_out)

    def _checked_tokens(self, tokens) -> list[int]:
        checked = []
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                raise TokenError(f"token {token!r} is not an integer")
            if not 0 <= token < self.shape.n_vocab:
                raise TokenError(f"token {int(token)} is outside [0, {self.shape.n_vocab})")
            checked.append(int(token))
        return checked

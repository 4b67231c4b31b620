"""RWKV v6 ("Finch"): v5.2's multi-head WKV with data-dependent token shift and data-dependent decay.

Token shift here weights the *previous* token by the mix coefficient: x + (x_prev - x) * maa.
The five interpolations (w, k, v, r, g) each add a low-rank, input-dependent correction to maa:
    h = tanh(W1 @ (x + sx * maa_x)) split into 5 chunks of D;  m_c = W2[c] @ h_c
Weights `w`: one layer's tensors, float64, NumPy shape, so `W @ x`. `att.time_maa_w1` is (5D, C),
`att.time_maa_w2` is (5, C, D) (slab c maps D -> C), `att.time_decay` (H, S, 1) is the raw decay.
"""
from __future__ import annotations

import numpy as np

from ..architecture import ModelShape
from .common import group_norm, layer_norm, relu_squared, sigmoid, silu, token_shift, vector
from .state import HeadLayerState
from .v5 import wkv  # the WKV recurrence is v5's; only w now changes per token

DDLERP_ORDER = ("w", "k", "v", "r", "g")  # order of the chunks of time_maa_w1 / slabs of time_maa_w2


def ddlerp(x: np.ndarray, x_prev: np.ndarray, w) -> dict[str, np.ndarray]:
    """Data-dependent token shift: the five mixed inputs x_w, x_k, x_v, x_r, x_g, each (C,)."""
    sx = x_prev - x
    xxx = x + sx * vector(w["att.time_maa_x"])
    W1, W2 = w["att.time_maa_w1"], w["att.time_maa_w2"]
    h = np.tanh(W1 @ xxx).reshape(len(DDLERP_ORDER), -1)
    mixed = {}
    for c, name in enumerate(DDLERP_ORDER):
        m = W2[c] @ h[c]
        mixed[name] = x + sx * (vector(w[f"att.time_maa_{name}"]) + m)
    return mixed


def time_mix(x: np.ndarray, x_prev: np.ndarray, w, state: HeadLayerState, shape: ModelShape,
             group_norm_eps: float) -> np.ndarray:
    """Multi-head WKV with per-token decay, group-normed and gated by silu(g). x, x_prev: (C,) normed."""
    H, S = shape.n_head, shape.head_size
    xs = ddlerp(x, x_prev, w)
    r = w["att.receptance.weight"] @ xs["r"]
    k = w["att.key.weight"] @ xs["k"]
    v = w["att.value.weight"] @ xs["v"]
    g = silu(w["att.gate.weight"] @ xs["g"])
    decay = vector(w["att.time_decay"]) + w["att.time_decay_w2"] @ np.tanh(w["att.time_decay_w1"] @ xs["w"])
    decay_factor = np.exp(-np.exp(decay))  # in (0, 1), per channel, for this token
    u = w["att.time_faaaa"].reshape(H, S)
    y = wkv(r.reshape(H, S), k.reshape(H, S), v.reshape(H, S), decay_factor.reshape(H, S), u, state.heads)
    y = group_norm(y, w["att.ln_x.weight"], w["att.ln_x.bias"], H, group_norm_eps)
    return w["att.output.weight"] @ (y * g)


def channel_mix(x: np.ndarray, x_prev: np.ndarray, w) -> np.ndarray:
    """Feed-forward with squared ReLU, gated by a receptance; shift weights the previous token."""
    sx = x_prev - x
    xk = x + sx * vector(w["ffn.time_maa_k"])
    xr = x + sx * vector(w["ffn.time_maa_r"])
    r = sigmoid(w["ffn.receptance.weight"] @ xr)
    k = relu_squared(w["ffn.key.weight"] @ xk)
    return r * (w["ffn.value.weight"] @ k)


def block(x: np.ndarray, w, state: HeadLayerState, shape: ModelShape, group_norm_eps: float) -> np.ndarray:
    """One layer: x += TimeMix(LN1(x)); x += ChannelMix(LN2(x)). x: (C,) residual stream."""
    a = layer_norm(x, w["ln1.weight"], w["ln1.bias"])
    x = x + time_mix(a, token_shift(state.att_xx, a), w, state, shape, group_norm_eps)
    f = layer_norm(x, w["ln2.weight"], w["ln2.bias"])
    return x + channel_mix(f, token_shift(state.ffn_xx, f), w)

"""RWKV v4: per-channel WKV, a decayed weighted average of past values.

Weights `w` are one layer's tensors keyed without the "blocks.N." prefix, float64, NumPy shape
(matrices (n_out, n_in), so a matrix times a vector is `W @ x`). Vectors are (C,).
Stored `att.time_decay` is already -exp(decay) and `att.time_first` is the bonus u, both (C,).
"""
from __future__ import annotations

import numpy as np

from .common import layer_norm, relu_squared, sigmoid, time_mix_lerp, token_shift, vector
from .state import V4LayerState


def wkv(k: np.ndarray, v: np.ndarray, u: np.ndarray, w: np.ndarray, state: V4LayerState) -> np.ndarray:
    """The WKV operator for one token; updates state.aa/bb/pp in place. All arguments (C,).

    wkv_t = (sum_{i<t} e^{-(t-1-i)exp(decay) + k_i} v_i + e^{u + k_t} v_t) / (same without v).
    The sums are kept as aa / bb scaled by e^{-pp}, so no exponential can overflow.
    """
    aa, bb, pp = state.aa, state.bb, state.pp

    # Output: the stored history plus the current token, which gets the bonus u.
    ww = u + k
    p = np.maximum(pp, ww)
    e1 = np.exp(pp - p)
    e2 = np.exp(ww - p)
    out = (e1 * aa + e2 * v) / (e1 * bb + e2)

    # State: decay the history by e^w (w = -exp(decay) < 0), then add the current token without bonus.
    ww = pp + w
    p = np.maximum(ww, k)
    e1 = np.exp(ww - p)
    e2 = np.exp(k - p)
    aa[:] = e1 * aa + e2 * v
    bb[:] = e1 * bb + e2
    pp[:] = p
    return out


def time_mix(x: np.ndarray, x_prev: np.ndarray, w, state: V4LayerState) -> np.ndarray:
    """Attention replacement: receptance-gated WKV of the token-shifted input. x, x_prev: (C,) normed."""
    r = sigmoid(w["att.receptance.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_r"])))
    k = w["att.key.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_k"]))
    v = w["att.value.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_v"]))
    y = wkv(k, v, u=vector(w["att.time_first"]), w=vector(w["att.time_decay"]), state=state)
    return w["att.output.weight"] @ (r * y)


def channel_mix(x: np.ndarray, x_prev: np.ndarray, w) -> np.ndarray:
    """Feed-forward with squared ReLU, gated by a receptance. x, x_prev: (C,) normed. (Also v5.)"""
    r = sigmoid(w["ffn.receptance.weight"] @ time_mix_lerp(x, x_prev, vector(w["ffn.time_mix_r"])))
    k = relu_squared(w["ffn.key.weight"] @ time_mix_lerp(x, x_prev, vector(w["ffn.time_mix_k"])))
    return r * (w["ffn.value.weight"] @ k)


def block(x: np.ndarray, w, state: V4LayerState) -> np.ndarray:
    """One layer: x += TimeMix(LN1(x)); x += ChannelMix(LN2(x)). x: (C,) residual stream."""
    a = layer_norm(x, w["ln1.weight"], w["ln1.bias"])
    x = x + time_mix(a, token_shift(state.att_xx, a), w, state)
    f = layer_norm(x, w["ln2.weight"], w["ln2.bias"])
    return x + channel_mix(f, token_shift(state.ffn_xx, f), w)

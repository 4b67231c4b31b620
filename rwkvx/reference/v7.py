"""RWKV v7 ("Goose"): generalized delta-rule state update with in-context learning rate a.

Each head keeps an S x S matrix M[i][j] (i indexes values, j keys). Per token, with kk the
normalized key and a the learning rate:
    M = M @ diag(w) + v k^T + (M @ (-kk)) (kk * a)^T        y = M @ r
The value of layer 0 (v_first) is mixed into every later layer's value ("value residual").
Weights `w`: one layer's tensors, float64, NumPy shape, so `W @ x`. `att.x_rwkvag` is (6, 1, C) in
order r, w, k, v, a, g; LoRA pairs `att.X1` (D, C) then `att.X2` (C, D); `att.r_k` (H, S).
Layer 0 has no `att.v0/v1/v2`.
"""
from __future__ import annotations

import numpy as np

from ..architecture import ModelShape
from .common import group_norm, l2_normalize_heads, layer_norm, relu_squared, sigmoid, token_shift, vector
from .state import HeadLayerState

# w = exp(-e^-0.5 * sigmoid(z)) lies in (e^-0.6065, 1): the decay can never erase the state in one step.
DECAY_SCALE = np.exp(-0.5)


def wkv(r, w, k, v, a, b, heads: np.ndarray) -> np.ndarray:
    """The v7 WKV for one token; updates `heads` (H, S, S) in place.

    r, w, k, v, a, b: (H, S) head-major; here a = -kk and b = kk * learning_rate. Returns y: (C,).
    """
    H, S = r.shape
    y = np.empty((H, S))
    for h in range(H):
        M = heads[h]
        sa = M @ a[h]  # what the state currently recalls for the normalized key
        M[:] = M * w[h][None, :] + np.outer(v[h], k[h]) + np.outer(sa, b[h])
        y[h] = M @ r[h]
    return y.reshape(-1)


def time_mix(x, x_prev, w, state: HeadLayerState, shape: ModelShape, v_first, group_norm_eps: float):
    """Returns (output (C,), v_first (C,)); pass v_first=None for layer 0, which defines it."""
    H, S = shape.n_head, shape.head_size
    sx = x_prev - x
    x_r, x_w, x_k, x_v, x_a, x_g = (x + sx * mu for mu in w["att.x_rwkvag"].reshape(6, -1))

    r = w["att.receptance.weight"] @ x_r
    k = w["att.key.weight"] @ x_k
    v = w["att.value.weight"] @ x_v
    decay = np.exp(-DECAY_SCALE * sigmoid(vector(w["att.w0"]) + w["att.w2"] @ np.tanh(w["att.w1"] @ x_w)))
    a = sigmoid(vector(w["att.a0"]) + w["att.a2"] @ (w["att.a1"] @ x_a))  # in-context learning rate
    g = w["att.g2"] @ sigmoid(w["att.g1"] @ x_g)

    kk = l2_normalize_heads(k * vector(w["att.k_k"]), H)
    k = k * (1.0 + (a - 1.0) * vector(w["att.k_a"]))

    if v_first is None:
        v_first = v
    else:
        mix = sigmoid(vector(w["att.v0"]) + w["att.v2"] @ (w["att.v1"] @ x_v))
        v = v + (v_first - v) * mix

    def heads_of(z):
        return z.reshape(H, S)

    y = wkv(heads_of(r), heads_of(decay), heads_of(k), heads_of(v), heads_of(-kk), heads_of(kk * a), state.heads)
    y = group_norm(y, w["att.ln_x.weight"], w["att.ln_x.bias"], H, group_norm_eps)
    # Bonus for the current token, per head: (r . (k * r_k)) * v.
    bonus = (heads_of(r) * heads_of(k) * w["att.r_k"].reshape(H, S)).sum(axis=1, keepdims=True) * heads_of(v)
    y = y + bonus.reshape(-1)
    return w["att.output.weight"] @ (y * g), v_first


def channel_mix(x: np.ndarray, x_prev: np.ndarray, w) -> np.ndarray:
    """Feed-forward with squared ReLU and no receptance gate. x, x_prev: (C,) normed."""
    xk = x + (x_prev - x) * vector(w["ffn.x_k"])
    return w["ffn.value.weight"] @ relu_squared(w["ffn.key.weight"] @ xk)


def block(x: np.ndarray, w, state: HeadLayerState, shape: ModelShape, v_first, group_norm_eps: float):
    """One layer; returns (x, v_first). x: (C,) residual stream; v_first None at layer 0."""
    a = layer_norm(x, w["ln1.weight"], w["ln1.bias"])
    att, v_first = time_mix(a, token_shift(state.att_xx, a), w, state, shape, v_first, group_norm_eps)
    x = x + att
    f = layer_norm(x, w["ln2.weight"], w["ln2.bias"])
    return x + channel_mix(f, token_shift(state.ffn_xx, f), w), v_first

"""RWKV v5 ("Eagle"), minor versions 5.1 and 5.2: multi-headed matrix-valued state.

Each head h keeps an S x S matrix M[i][j] (i indexes keys, j values). Per token:
    y[j]    = sum_i r[i] * (u[i] * k[i] * v[j] + M[i][j])
    M[i][j] = w[i] * M[i][j] + k[i] * v[j]
Stored `att.time_decay` is already w = exp(-exp(decay)); v5.1 stores one w and u per head
((H, 1, 1), u as `time_first`), v5.2 one per channel ((H, S, 1), u as `time_faaaa`).
r has no sigmoid in v5. Weights `w` as in v4.py: one layer's tensors, float64, `W @ x`.
"""
from __future__ import annotations

import numpy as np

from ..architecture import ModelShape
from .common import group_norm, layer_norm, silu, time_mix_lerp, token_shift, vector
from .state import HeadLayerState
from .v4 import channel_mix  # the v5 feed-forward is v4's, unchanged



def wkv(r, k, v, w, u, heads: np.ndarray) -> np.ndarray:
    """The v5/v6 WKV for one token; updates `heads` (H, S, S) in place.

    r, k, v, w, u: (H, S), head-major slices of the C channels. Returns y: (C,).
    """
    H, S = r.shape
    y = np.empty((H, S))
    for h in range(H):
        M = heads[h]
        kv = np.outer(k[h], v[h])  # kv[i][j] = k[i] * v[j]
        y[h] = r[h] @ (u[h][:, None] * kv + M)
        M[:] = w[h][:, None] * M + kv
    return y.reshape(-1)


def decay_and_bonus(w, shape: ModelShape) -> tuple[np.ndarray, np.ndarray]:
    """(w, u), each (H, S): v5.1's per-head values repeated over the head's channels."""
    H, S = shape.n_head, shape.head_size
    if shape.arch == "v5.1":
        decay = np.repeat(w["att.time_decay"].reshape(H, 1), S, axis=1)
        bonus = np.repeat(w["att.time_first"].reshape(H, 1), S, axis=1)
    else:
        decay = w["att.time_decay"].reshape(H, S)
        bonus = w["att.time_faaaa"].reshape(H, S)
    return decay, bonus


def time_mix(x: np.ndarray, x_prev: np.ndarray, w, state: HeadLayerState, shape: ModelShape,
             group_norm_eps: float) -> np.ndarray:
    """Multi-head WKV of the token-shifted input, group-normed (and gated by silu(g) in 5.2). x: (C,)."""
    H, S = shape.n_head, shape.head_size
    r = w["att.receptance.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_r"]))
    k = w["att.key.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_k"]))
    v = w["att.value.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_v"]))
    decay, u = decay_and_bonus(w, shape)
    y = wkv(r.reshape(H, S), k.reshape(H, S), v.reshape(H, S), decay, u, state.heads)
    y = group_norm(y, w["att.ln_x.weight"], w["att.ln_x.bias"], H, group_norm_eps)
    if shape.arch == "v5.2":
        g = silu(w["att.gate.weight"] @ time_mix_lerp(x, x_prev, vector(w["att.time_mix_g"])))
        y = y * g
    return w["att.output.weight"] @ y


def block(x: np.ndarray, w, state: HeadLayerState, shape: ModelShape, group_norm_eps: float) -> np.ndarray:
    """One layer: x += TimeMix(LN1(x)); x += ChannelMix(LN2(x)). x: (C,) residual stream."""
    a = layer_norm(x, w["ln1.weight"], w["ln1.bias"])
    x = x + time_mix(a, token_shift(state.att_xx, a), w, state, shape, group_norm_eps)
    f = layer_norm(x, w["ln2.weight"], w["ln2.bias"])
    return x + channel_mix(f, token_shift(state.ffn_xx, f), w)

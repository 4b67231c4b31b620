"""A block of layers, and the model head, resident on a device: weights, recurrent state, scratch.

Written against the ops interface (ops_numpy.NumpyOps is its specification; backend.CudaOps runs it
on the GPU), following rwkvx/_kernels/forward.c step for step so the two can be read side by side.
Activations are [T, C] float32 device buffers with T <= max_tokens.
"""
from __future__ import annotations

import numpy as np

from ..architecture import ModelShape, expected_tensors
from .errors import GPUError
from .ops_numpy import WKV_MAX_HEAD_SIZE

LN_EPS = 1e-5


def upload_tensors(ops, model, names) -> dict:
    """Local name -> device weight (matrices, in the file's type) or float32 vector, for `names`."""
    from ..architecture import MATRIX_TENSORS, canonical_vector, layer_local_name

    source, out = model.source, {}
    for name in names:
        info, local = source.tensors[name], layer_local_name(name)
        if local in MATRIX_TENSORS:
            n_in = info.ne[0]
            if n_in % 32:
                raise GPUError(f"{name}: rows of {n_in} weights; the GPU kernels need a multiple of 32")
            out[local] = ops.weight(source.raw(name), info.type.id, n_in, info.n_elements // n_in)
        else:
            out[local] = ops.upload(canonical_vector(name, source.array(name), model.shape))
    return out


class _Scratch:
    """Device rows for max_tokens tokens, the same set forward.c allocates, plus hidden buffers by width."""

    NAMES_C = ("a", "prev", "mix0", "mix1", "mix2", "mix3", "mix4", "mix5",
               "r", "k", "v", "g", "w", "alpha", "y", "out")

    def __init__(self, ops, shape: ModelShape, max_tokens: int):
        self.ops, self.max_tokens = ops, max_tokens
        self.bufs = {n: ops.empty((max_tokens, shape.n_embd)) for n in self.NAMES_C}
        self.hidden_bufs: dict[tuple[int, int], object] = {}

    def take(self, T: int) -> "_Rows":
        return _Rows(self.ops, self.bufs, T)

    def hidden(self, T: int, width: int, slot: int = 0):
        """A contiguous [T, width] buffer (FFN hidden layer, low-rank intermediates); slots 0 and 1 never alias."""
        key = (slot, width)
        if key not in self.hidden_bufs:  # a handful of widths per model: allocated on first use, then kept
            self.hidden_bufs[key] = self.ops.empty((self.max_tokens, width))
        return self.ops.rows(self.hidden_bufs[key], 0, T)


class _Rows:
    """Attribute access to the first T rows of each scratch buffer."""

    def __init__(self, ops, bufs, T):
        for name, buf in bufs.items():
            setattr(self, name, ops.rows(buf, 0, T))


class DeviceLayers:
    """Layers [begin, end) on a device, with their recurrent state kept there between calls."""

    def __init__(self, ops, model, begin: int, end: int, max_tokens: int):
        shape = model.shape
        if shape.arch != "v4" and shape.head_size > WKV_MAX_HEAD_SIZE:
            raise GPUError(f"head size {shape.head_size} > {WKV_MAX_HEAD_SIZE} is not supported by the GPU WKV kernels")
        self.ops, self.shape, self.begin, self.end, self.max_tokens = ops, shape, begin, end, max_tokens
        self.group_norm_eps = model.group_norm_eps
        names = list(expected_tensors(shape))
        self.layers = [upload_tensors(ops, model, [n for n in names if n.startswith(f"blocks.{i}.") and ".ln0." not in n])
                       for i in range(begin, end)]
        self.per_layer = shape.state_floats_per_layer
        self.state = ops.empty(((end - begin) * self.per_layer,))
        self.scratch = _Scratch(ops, shape, max_tokens)

    @property
    def state_range(self) -> tuple[int, int]:
        """The floats of the whole model's state buffer that this block owns."""
        return self.begin * self.per_layer, self.end * self.per_layer

    def load_state(self, host_slice: np.ndarray) -> None:
        self.ops.to_device(self.state, host_slice)

    def save_state(self, host_slice: np.ndarray) -> None:
        self.ops.to_host(host_slice, self.state)

    def run(self, x, v_first) -> None:
        """x [T, C] += every layer of the block, in place; v_first [T, C] is v7's value residual."""
        ops, C, T = self.ops, self.shape.n_embd, x.shape[0]
        s = self.scratch.take(T)
        for n, L in enumerate(self.layers):
            layer = self.begin + n
            st = ops.flat(self.state, n * self.per_layer, (n + 1) * self.per_layer)
            ops.layer_norm(x, s.a, L["ln1.weight"], L["ln1.bias"], LN_EPS)
            ops.token_shift(s.a, s.prev, ops.flat(st, C, 2 * C))
            arch = self.shape.arch
            if arch == "v4":
                self._time_mix_v4(L, s, st)
            elif arch in ("v5.1", "v5.2"):
                self._time_mix_v5(L, s, st)
            elif arch == "v6":
                self._time_mix_v6(L, s, st)
            else:
                self._time_mix_v7(L, s, st, layer, v_first)
            ops.add(x, s.out)
            self._channel_mix(L, s, st, x)

    # ---- channel mixing (FFN) ----
    def _channel_mix(self, L, s, st, x) -> None:
        ops, C, arch = self.ops, self.shape.n_embd, self.shape.arch
        f, q, xk, xr = s.a, s.prev, s.mix0, s.mix1
        ops.layer_norm(x, f, L["ln2.weight"], L["ln2.bias"], LN_EPS)
        ops.token_shift(f, q, ops.flat(st, 0, C))
        if arch == "v7":
            ops.delta_mix(f, q, L["ffn.x_k"], xk)
        elif arch == "v6":
            ops.delta_mix(f, q, L["ffn.time_maa_k"], xk)
            ops.delta_mix(f, q, L["ffn.time_maa_r"], xr)
        else:
            ops.lerp_mix(f, q, L["ffn.time_mix_k"], xk)
            ops.lerp_mix(f, q, L["ffn.time_mix_r"], xr)
        hidden = self.scratch.hidden(x.shape[0], self.shape.n_ffn)
        ops.matmul(L["ffn.key.weight"], xk, hidden)
        ops.relu_squared(hidden)
        ops.matmul(L["ffn.value.weight"], hidden, s.out)
        if arch != "v7":
            ops.matmul(L["ffn.receptance.weight"], xr, s.r)
            ops.mul_sigmoid(s.out, s.r)
        ops.add(x, s.out)

    # ---- time mixing ----
    def _time_mix_v4(self, L, s, st) -> None:
        ops = self.ops
        ops.lerp_mix(s.a, s.prev, L["att.time_mix_k"], s.mix0)
        ops.lerp_mix(s.a, s.prev, L["att.time_mix_v"], s.mix1)
        ops.lerp_mix(s.a, s.prev, L["att.time_mix_r"], s.mix2)
        ops.matmul(L["att.key.weight"], s.mix0, s.k)
        ops.matmul(L["att.value.weight"], s.mix1, s.v)
        ops.matmul(L["att.receptance.weight"], s.mix2, s.r)
        ops.wkv4(s.k, s.v, L["att.time_first"], L["att.time_decay"], st, s.y)
        ops.mul_sigmoid(s.y, s.r)
        ops.matmul(L["att.output.weight"], s.y, s.out)

    def _time_mix_v5(self, L, s, st) -> None:
        ops, C, H = self.ops, self.shape.n_embd, self.shape.n_head
        v52 = self.shape.arch == "v5.2"
        ops.lerp_mix(s.a, s.prev, L["att.time_mix_k"], s.mix0)
        ops.lerp_mix(s.a, s.prev, L["att.time_mix_v"], s.mix1)
        ops.lerp_mix(s.a, s.prev, L["att.time_mix_r"], s.mix2)
        ops.matmul(L["att.key.weight"], s.mix0, s.k)
        ops.matmul(L["att.value.weight"], s.mix1, s.v)
        ops.matmul(L["att.receptance.weight"], s.mix2, s.r)
        u = L["att.time_faaaa" if v52 else "att.time_first"]
        ops.wkv5(s.r, s.k, s.v, u, L["att.time_decay"], ops.flat(st, 2 * C, st.shape[0]), s.y, H)
        ops.group_norm(s.y, s.y, L["att.ln_x.weight"], L["att.ln_x.bias"], H, self.group_norm_eps)
        if v52:
            ops.lerp_mix(s.a, s.prev, L["att.time_mix_g"], s.mix3)
            ops.matmul(L["att.gate.weight"], s.mix3, s.g)
            ops.mul_silu(s.y, s.g)
        ops.matmul(L["att.output.weight"], s.y, s.out)

    def _time_mix_v6(self, L, s, st) -> None:
        ops, C, H = self.ops, self.shape.n_embd, self.shape.n_head
        w1 = L["att.time_maa_w1"]
        D = w1.n_rows // 5
        ops.delta_mix(s.a, s.prev, L["att.time_maa_x"], s.out)
        h = self.scratch.hidden(s.a.shape[0], 5 * D)
        ops.matmul(w1, s.out, h)
        ops.tanh(h)
        w2 = L["att.time_maa_w2"]  # 5 slabs of C rows, D inputs each, in the order w, k, v, r, g
        mixes = (s.mix0, s.mix1, s.mix2, s.mix3, s.mix4)
        for c, (name, xc) in enumerate(zip("wkvrg", mixes)):
            ops.matmul(w2.rows(c * C, (c + 1) * C), h, xc, x_col=c * D)
            ops.delta_mix(s.a, s.prev, L[f"att.time_maa_{name}"], xc, m=xc)
        xw, xk, xv, xr, xg = mixes
        ops.matmul(L["att.receptance.weight"], xr, s.r)
        ops.matmul(L["att.key.weight"], xk, s.k)
        ops.matmul(L["att.value.weight"], xv, s.v)
        ops.matmul(L["att.gate.weight"], xg, s.g)
        d1 = L["att.time_decay_w1"]
        h2 = self.scratch.hidden(s.a.shape[0], d1.n_rows, slot=1)
        ops.matmul(d1, xw, h2)
        ops.tanh(h2)
        ops.matmul(L["att.time_decay_w2"], h2, s.w)
        ops.decay_v6(s.w, L["att.time_decay"])
        ops.wkv5(s.r, s.k, s.v, L["att.time_faaaa"], s.w, ops.flat(st, 2 * C, st.shape[0]), s.y, H)
        ops.group_norm(s.y, s.y, L["att.ln_x.weight"], L["att.ln_x.bias"], H, self.group_norm_eps)
        ops.mul_silu(s.y, s.g)
        ops.matmul(L["att.output.weight"], s.y, s.out)

    def _lora(self, L, prefix: str, x, y, activation) -> None:
        """y = W2 f(W1 x) for the pair att.<prefix>1 / att.<prefix>2."""
        w1 = L[f"att.{prefix}1"]
        h = self.scratch.hidden(x.shape[0], w1.n_rows)
        self.ops.matmul(w1, x, h)
        if activation is not None:
            activation(h)
        self.ops.matmul(L[f"att.{prefix}2"], h, y)

    def _time_mix_v7(self, L, s, st, layer: int, v_first) -> None:
        ops, C, H = self.ops, self.shape.n_embd, self.shape.n_head
        mu = L["att.x_rwkvag"]
        mixes = (s.mix0, s.mix1, s.mix2, s.mix3, s.mix4, s.mix5)
        for c, xc in enumerate(mixes):
            ops.delta_mix(s.a, s.prev, ops.flat(mu, c * C, (c + 1) * C), xc)
        xr, xw, xk, xv, xa, xg = mixes
        ops.matmul(L["att.receptance.weight"], xr, s.r)
        ops.matmul(L["att.key.weight"], xk, s.k)
        ops.matmul(L["att.value.weight"], xv, s.v)
        self._lora(L, "w", xw, s.w, ops.tanh)
        ops.decay_v7(s.w, L["att.w0"])
        self._lora(L, "a", xa, s.alpha, None)
        ops.sigmoid_bias(s.alpha, L["att.a0"])
        self._lora(L, "g", xg, s.g, ops.sigmoid)
        a, b = s.mix0, s.mix1  # the mixes are consumed: reuse them for the WKV's a and b
        ops.v7_keys(s.k, s.alpha, L["att.k_k"], L["att.k_a"], a, b, H)
        if layer == 0:
            ops.copy(v_first, s.v)
        else:
            self._lora(L, "v", xv, s.out, None)
            ops.value_residual(s.v, v_first, s.out, L["att.v0"])
        ops.wkv7(s.r, s.w, s.k, s.v, a, b, ops.flat(st, 2 * C, st.shape[0]), s.y, H)
        ops.group_norm(s.y, s.y, L["att.ln_x.weight"], L["att.ln_x.bias"], H, self.group_norm_eps)
        ops.v7_bonus_gate(s.y, s.r, s.k, s.v, s.g, L["att.r_k"], H)
        ops.matmul(L["att.output.weight"], s.y, s.out)


class DeviceHead:
    """ln_out + head on a device: x [T, C] -> logits [T, n_vocab] (a device buffer)."""

    def __init__(self, ops, model, max_tokens: int):
        self.ops = ops
        t = upload_tensors(ops, model, ["ln_out.weight", "ln_out.bias", "head.weight"])
        self.ln_w, self.ln_b, self.head = t["ln_out.weight"], t["ln_out.bias"], t["head.weight"]
        self.normed = ops.empty((max_tokens, model.shape.n_embd))
        self.logits = ops.empty((max_tokens, model.shape.n_vocab))

    def run(self, x):
        T = x.shape[0]
        normed, logits = self.ops.rows(self.normed, 0, T), self.ops.rows(self.logits, 0, T)
        self.ops.layer_norm(x, normed, self.ln_w, self.ln_b, LN_EPS)
        self.ops.matmul(self.head, normed, logits)
        return logits

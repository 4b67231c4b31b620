"""Which RWKV architecture a set of tensors is, its shapes, and the tensors it must have.

Detection follows rwkv.cpp's loader: v4 unless `ln_x` exists (v5; v5.2 if it
also has a gate), `time_maa_x` (v6), or `r_k` (v7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .errors import ArgumentError, MissingTensorError, ModelFormatError

ARCHITECTURES = ("v4", "v5.1", "v5.2", "v6", "v7")

# Layer-local names of the tensors the kernels read as weight matrices (straight from the
# mapped file, in their stored type); every other tensor is a small vector of floats.
MATRIX_TENSORS = frozenset({
    "emb.weight", "head.weight",
    "att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight", "att.gate.weight",
    "att.time_maa_w1", "att.time_maa_w2", "att.time_decay_w1", "att.time_decay_w2",
    "att.w1", "att.w2", "att.a1", "att.a2", "att.v1", "att.v2", "att.g1", "att.g2",
    "ffn.key.weight", "ffn.value.weight", "ffn.receptance.weight",
})


# Epsilon of the per-head group norm on the WKV output (att.ln_x). The official implementation (the
# RWKV-LM training code and the `rwkv` package) uses 64e-5 for v5.x, v6 and v7. rwkv.cpp uses 1e-5 for
# v5.x; files made for it, and its published test logits, carry that convention.
GROUP_NORM_EPS_OFFICIAL = 64e-5
GROUP_NORM_EPS_RWKV_CPP_V5 = 1e-5
CONVENTIONS = ("official", "rwkv.cpp")


def default_group_norm_eps(arch: str, convention: str) -> float:
    """The ln_x epsilon a model runs with by default: as the implementation its file was made for."""
    if convention not in CONVENTIONS:
        raise ArgumentError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "rwkv.cpp" and arch in ("v5.1", "v5.2"):
        return GROUP_NORM_EPS_RWKV_CPP_V5
    return GROUP_NORM_EPS_OFFICIAL


def layer_local_name(name: str) -> str:
    """'blocks.3.att.key.weight' -> 'att.key.weight'; global names (emb, ln0, ln_out, head) unchanged."""
    if name.startswith("blocks.") and not name.startswith("blocks.0.ln0."):
        return name.split(".", 2)[2]
    return name


def canonical_vector(name: str, array: np.ndarray, shape: "ModelShape") -> np.ndarray:
    """Flatten a parameter vector to the per-channel float32 form the kernels read.

    v5.1 stores time_first and time_decay once per head: repeat them over the head's channels.
    """
    vector = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    if shape.arch == "v5.1" and layer_local_name(name) in ("att.time_first", "att.time_decay"):
        vector = np.repeat(vector, shape.head_size)
    expected = 6 * shape.n_embd if name.endswith("att.x_rwkvag") else shape.n_embd
    if vector.size != expected:
        raise ModelFormatError(f"tensor {name!r} has {vector.size} values, expected {expected}")
    return vector


def detect_arch(names) -> str:
    names = set(names)
    arch = "v4"
    if "blocks.0.att.ln_x.weight" in names:
        arch = "v5.2" if "blocks.0.att.gate.weight" in names else "v5.1"
    if "blocks.0.att.time_maa_x" in names:
        arch = "v6"
    if "blocks.0.att.r_k" in names:
        arch = "v7"
    return arch


@dataclass(frozen=True)
class ModelShape:
    """Everything about a model's size that the kernels and the state need."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ffn: int
    n_head: int  # 1 for v4 (no heads)
    head_size: int  # n_embd for v4
    lora_dims: tuple[tuple[str, int], ...] = ()  # v6/v7 low-rank sizes, by tensor suffix

    @property
    def state_floats_per_layer(self) -> int:
        return 5 * self.n_embd if self.arch == "v4" else (2 + self.head_size) * self.n_embd

    @property
    def state_len(self) -> int:
        return self.state_floats_per_layer * self.n_layer


def _shape_of(shapes: Mapping[str, tuple[int, ...]], path: str, name: str, rank: int | None = None
              ) -> tuple[int, ...]:
    """The tensor's shape; with rank, it must have that many axes (the dimensions read from it)."""
    try:
        shape = shapes[name]
    except KeyError:
        raise MissingTensorError(f"{path}: tensor {name!r} is missing") from None
    if rank is not None and len(shape) != rank:
        raise ModelFormatError(f"{path}: tensor {name!r} has shape {tuple(shape)}, expected {rank} axes")
    return shape


def _first_dim(shapes: Mapping[str, tuple[int, ...]], path: str, name: str) -> int:
    shape = _shape_of(shapes, path, name)
    if not shape:
        raise ModelFormatError(f"{path}: tensor {name!r} is a scalar, expected at least one axis")
    return shape[0]


def infer_shape(shapes: Mapping[str, tuple[int, ...]], path: str = "<model>") -> ModelShape:
    """Derive the model's shape from its tensors' NumPy shapes, then check every tensor."""
    arch = detect_arch(shapes)
    n_vocab, n_embd = _shape_of(shapes, path, "emb.weight", rank=2)
    n_layer = 0
    while f"blocks.{n_layer}.ln1.weight" in shapes:
        n_layer += 1
    if n_layer == 0:
        raise MissingTensorError(f"{path}: tensor 'blocks.0.ln1.weight' is missing (no layers)")
    n_ffn = _first_dim(shapes, path, "blocks.0.ffn.key.weight")
    lora: dict[str, int] = {}
    if arch == "v4":
        n_head, head_size = 1, n_embd
    elif arch == "v7":
        n_head, head_size = _shape_of(shapes, path, "blocks.0.att.r_k", rank=2)
        for name in ("w1", "a1", "g1"):
            lora[name] = _first_dim(shapes, path, f"blocks.0.att.{name}")
        if n_layer > 1:
            lora["v1"] = _first_dim(shapes, path, "blocks.1.att.v1")
    else:
        n_head = _first_dim(shapes, path, "blocks.0.att.time_decay")
        if n_head == 0 or n_embd % n_head:
            raise ModelFormatError(f"{path}: time_decay has {n_head} heads, which does not divide n_embd {n_embd}")
        head_size = n_embd // n_head
        if arch == "v6":
            lora["time_maa_w1"] = _first_dim(shapes, path, "blocks.0.att.time_maa_w1") // 5
            lora["time_decay_w1"] = _first_dim(shapes, path, "blocks.0.att.time_decay_w1")
    if n_head * head_size != n_embd:
        raise ModelFormatError(f"{path}: {n_head} heads of size {head_size} do not make n_embd {n_embd}")
    shape = ModelShape(arch, n_vocab, n_embd, n_layer, n_ffn, n_head, head_size, tuple(sorted(lora.items())))
    for name, expected in expected_tensors(shape).items():
        actual = _shape_of(shapes, path, name)
        # Files disagree on singleton axes of vectors ((C,) vs (1, 1, C)); compare those without them. A
        # matrix must have its shape exactly: its last axis is the products' row length, so a singleton
        # axis in the wrong place would make every row one weight long over the same bytes.
        exact = layer_local_name(name) in MATRIX_TENSORS
        if (tuple(actual) != tuple(expected)) if exact else (_squeeze(actual) != _squeeze(expected)):
            raise ModelFormatError(
                f"{path}: tensor {name!r} has shape {tuple(actual)}, expected {expected} for an RWKV "
                f"{arch} model with n_embd={n_embd}, n_vocab={n_vocab}, n_ffn={n_ffn}"
            )
    return shape


def _squeeze(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def expected_tensors(s: ModelShape) -> dict[str, tuple[int, ...]]:
    """Name -> NumPy shape of every tensor the architecture reads."""
    C, V, F, H, S = s.n_embd, s.n_vocab, s.n_ffn, s.n_head, s.head_size
    lora = dict(s.lora_dims)
    out = {
        "emb.weight": (V, C),
        "blocks.0.ln0.weight": (C,),
        "blocks.0.ln0.bias": (C,),
        "ln_out.weight": (C,),
        "ln_out.bias": (C,),
        "head.weight": (V, C),
    }
    per_layer: Callable[[int], dict[str, tuple[int, ...]]] = {
        "v4": lambda i: _v4_layer(C, F),
        "v5.1": lambda i: _v5_layer(C, F, H, S, v52=False),
        "v5.2": lambda i: _v5_layer(C, F, H, S, v52=True),
        "v6": lambda i: _v6_layer(C, F, H, S, lora["time_maa_w1"], lora["time_decay_w1"]),
        "v7": lambda i: _v7_layer(C, F, H, S, lora, first=(i == 0)),
    }[s.arch]
    for i in range(s.n_layer):
        common = {"ln1.weight": (C,), "ln1.bias": (C,), "ln2.weight": (C,), "ln2.bias": (C,),
                  "att.key.weight": (C, C), "att.value.weight": (C, C),
                  "att.receptance.weight": (C, C), "att.output.weight": (C, C),
                  "ffn.key.weight": (F, C), "ffn.value.weight": (C, F)}
        common.update(per_layer(i))
        out.update({f"blocks.{i}.{k}": v for k, v in common.items()})
    return out


def _v4_layer(C, F):
    return {"att.time_mix_k": (1, 1, C), "att.time_mix_v": (1, 1, C), "att.time_mix_r": (1, 1, C),
            "att.time_first": (C,), "att.time_decay": (C,),
            "ffn.time_mix_k": (1, 1, C), "ffn.time_mix_r": (1, 1, C), "ffn.receptance.weight": (C, C)}


def _v5_layer(C, F, H, S, v52):
    t = {"att.time_mix_k": (1, 1, C), "att.time_mix_v": (1, 1, C), "att.time_mix_r": (1, 1, C),
         "att.ln_x.weight": (C,), "att.ln_x.bias": (C,),
         "ffn.time_mix_k": (1, 1, C), "ffn.time_mix_r": (1, 1, C), "ffn.receptance.weight": (C, C)}
    if v52:
        t.update({"att.time_decay": (H, S, 1), "att.time_faaaa": (H, S, 1),
                  "att.time_mix_g": (1, 1, C), "att.gate.weight": (C, C)})
    else:
        t.update({"att.time_decay": (H, 1, 1), "att.time_first": (H, 1, 1)})
    return t


def _v6_layer(C, F, H, S, D, D2):
    t = {f"att.time_maa_{c}": (1, 1, C) for c in "xwkvrg"}
    t.update({"att.time_maa_w1": (5 * D, C), "att.time_maa_w2": (5, C, D),
              "att.time_decay": (H, S, 1), "att.time_decay_w1": (D2, C), "att.time_decay_w2": (C, D2),
              "att.time_faaaa": (H, S, 1), "att.gate.weight": (C, C),
              "att.ln_x.weight": (C,), "att.ln_x.bias": (C,),
              "ffn.time_maa_k": (1, 1, C), "ffn.time_maa_r": (1, 1, C), "ffn.receptance.weight": (C, C)})
    return t


def _v7_layer(C, F, H, S, lora, first):
    t = {"att.x_rwkvag": (6, 1, C), "att.w0": (1, 1, C), "att.a0": (1, 1, C),
         "att.k_k": (1, 1, C), "att.k_a": (1, 1, C), "att.r_k": (H, S),
         "att.ln_x.weight": (C,), "att.ln_x.bias": (C,), "ffn.x_k": (1, 1, C)}
    for name in ("w", "a", "g"):
        t[f"att.{name}1"] = (lora[f"{name}1"], C)
        t[f"att.{name}2"] = (C, lora[f"{name}1"])
    if not first:
        t.update({"att.v0": (1, 1, C), "att.v1": (lora["v1"], C), "att.v2": (C, lora["v1"])})
    return t

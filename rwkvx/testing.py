"""Random-weight RWKV checkpoints with real shapes and official key names, for tests and benchmarks.

    from rwkvx.testing import RandomCheckpoint
    ckpt = RandomCheckpoint.of("v7", "0.1B")            # 12 layers x 768, vocab 65536
    ckpt.write_pth("rwkv7-0.1B-random.pth", dtype="bfloat16")
    small = RandomCheckpoint.of("v5.2", n_layer=2, n_embd=64, n_vocab=256, head_size=16)
    weights = small.arrays()                             # {official name: float32 array}

Values are drawn so that the forward pass behaves like a trained model's in magnitude (finite,
non-trivial logits, decays inside (0, 1)), not to mean anything: mixes in [0, 1], layer-norm
weights near 1, matrices scaled by 1/sqrt(fan-in), decay parameters in the ranges trained models use.
Every tensor is generated from (seed, its name) alone, so a model can be written one tensor at a
time, and twice the same.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from .architecture import ARCHITECTURES
from .formats.pytorch import write_pth
from .formats.safetensors import write_safetensors

WORLD_VOCAB = 65536  # RWKV World tokenizer (v5+ releases)
PILE_VOCAB = 50277  # GPT-NeoX 20B tokenizer (v4 Pile releases)
HEAD_SIZE = 64  # every released v5/v6/v7 model

# (n_layer, n_embd) of released model sizes.
SIZES = {
    "v4": {"169M": (12, 768), "430M": (24, 1024), "1.5B": (24, 2048), "3B": (32, 2560), "7B": (32, 4096)},
    "v5.1": {"0.1B": (12, 768)},
    "v5.2": {"0.4B": (24, 1024), "1.5B": (24, 2048), "3B": (32, 2560), "7B": (32, 4096)},
    "v6": {"1.6B": (24, 2048), "3B": (32, 2560), "7B": (32, 4096)},
    "v7": {"0.1B": (12, 768), "0.4B": (24, 1024), "1.5B": (24, 2048), "2.9B": (32, 2560)},
}


def _round32(x: float) -> int:
    return max(32, int(round(x / 32)) * 32)


@dataclass(frozen=True)
class CheckpointShape:
    """The sizes of a checkpoint. lora: low-rank sizes by name (v6: mix, decay; v7: w, a, v, g)."""

    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int
    head_size: int
    lora: dict = field(default_factory=dict)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def of(cls, arch: str, size: str | None = None, *, n_layer: int | None = None, n_embd: int | None = None,
           n_vocab: int | None = None, n_ffn: int | None = None, head_size: int | None = None) -> "CheckpointShape":
        """A released size by name (SIZES), or any sizes; unspecified ones follow the official recipes."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        if size is not None:
            if size not in SIZES[arch]:
                raise ValueError(f"unknown {arch} size {size!r}; known: {', '.join(SIZES[arch])}")
            n_layer, n_embd = (n_layer or SIZES[arch][size][0]), (n_embd or SIZES[arch][size][1])
        if n_layer is None or n_embd is None:
            raise ValueError("give a size name or both n_layer and n_embd")
        C = n_embd
        n_vocab = n_vocab or (PILE_VOCAB if arch == "v4" else WORLD_VOCAB)
        if n_ffn is None:  # the training code's recipes
            n_ffn = 4 * C if arch in ("v4", "v7") else int(3.5 * C) // 32 * 32
        head_size = head_size or (C if arch == "v4" else min(HEAD_SIZE, C))
        if C % head_size:
            raise ValueError(f"head_size {head_size} does not divide n_embd {C}")
        lora = {}
        if arch == "v6":
            lora = {"mix": 64 if C >= 4096 else 32, "decay": 128 if C >= 4096 else 64}
        elif arch == "v7":
            lora = {"w": _round32(1.8 * C**0.5), "a": _round32(1.8 * C**0.5), "v": _round32(1.3 * C**0.5),
                    "g": _round32(0.6 * C**0.8)}
        return cls(arch, n_layer, C, n_vocab, n_ffn, head_size, lora)


def official_shapes(s: CheckpointShape) -> dict[str, tuple[int, ...]]:
    """Official key name -> shape, in the order the training code's state dict has them."""
    C, F, V, H, S = s.n_embd, s.n_ffn, s.n_vocab, s.n_head, s.head_size
    vec = (1, 1, C)
    out = {"emb.weight": (V, C)}
    for i in range(s.n_layer):
        layer = {"ln1.weight": (C,), "ln1.bias": (C,), "ln2.weight": (C,), "ln2.bias": (C,)}
        if i == 0:
            layer.update({"ln0.weight": (C,), "ln0.bias": (C,)})
        square = {f"att.{m}.weight": (C, C) for m in ("receptance", "key", "value", "output")}
        if s.arch == "v4":
            layer.update({"att.time_decay": (C,), "att.time_first": (C,), "att.time_mix_k": vec,
                          "att.time_mix_v": vec, "att.time_mix_r": vec})
            layer.update(square)
        elif s.arch == "v5.1":
            layer.update({"att.time_mix_k": vec, "att.time_mix_v": vec, "att.time_mix_r": vec,
                          "att.time_decay": (H,), "att.time_first": (H,)})
            layer.update(square)
            layer.update({"att.ln_x.weight": (C,), "att.ln_x.bias": (C,)})
        elif s.arch == "v5.2":
            layer.update({f"att.time_mix_{c}": vec for c in "kvrg"})
            layer.update({"att.time_decay": (H, S), "att.time_faaaa": (H, S)})
            layer.update(square)
            layer.update({"att.gate.weight": (C, C), "att.ln_x.weight": (C,), "att.ln_x.bias": (C,)})
        elif s.arch == "v6":
            D, D2 = s.lora["mix"], s.lora["decay"]
            layer.update({f"att.time_maa_{c}": vec for c in "xwkvrg"})
            layer.update({"att.time_maa_w1": (C, 5 * D), "att.time_maa_w2": (5, D, C), "att.time_decay": vec,
                          "att.time_decay_w1": (C, D2), "att.time_decay_w2": (D2, C), "att.time_faaaa": (H, S)})
            layer.update(square)
            layer.update({"att.gate.weight": (C, C), "att.ln_x.weight": (C,), "att.ln_x.bias": (C,)})
        else:  # v7; layer 0 carries v0/v1/v2 too, though it never uses them
            layer.update({f"att.x_{c}": vec for c in "rwkvag"})
            for name in "wavg":
                if name != "g":
                    layer[f"att.{name}0"] = vec
                layer[f"att.{name}1"] = (C, s.lora[name])
                layer[f"att.{name}2"] = (s.lora[name], C)
            layer.update({"att.k_k": vec, "att.k_a": vec, "att.r_k": (H, S)})
            layer.update(square)
            layer.update({"att.ln_x.weight": (C,), "att.ln_x.bias": (C,)})
        if s.arch == "v7":
            layer.update({"ffn.x_k": vec, "ffn.key.weight": (F, C), "ffn.value.weight": (C, F)})
        else:
            mix = "time_maa" if s.arch == "v6" else "time_mix"
            layer.update({f"ffn.{mix}_k": vec, f"ffn.{mix}_r": vec, "ffn.key.weight": (F, C),
                          "ffn.receptance.weight": (C, C), "ffn.value.weight": (C, F)})
        out.update({f"blocks.{i}.{k}": v for k, v in layer.items()})
    out.update({"ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)})
    return out


# Per local tensor name: how its values are drawn. ("uniform", lo, hi) or ("normal", std) where a std
# ("fan_in", factor): normal with std factor/sqrt(fan-in); ("around_one", std): 1 + normal.
_LOCAL_INIT = {
    "att.time_decay": ("uniform", -2.0, 0.5), "att.time_first": ("uniform", -1.0, 0.5),
    "att.time_faaaa": ("uniform", -1.0, 1.0),
    "att.w0": ("uniform", -3.0, 0.0), "att.a0": ("uniform", -1.0, 1.0), "att.v0": ("uniform", -1.0, 1.0),
    "att.k_k": ("uniform", 0.5, 1.2), "att.k_a": ("uniform", 0.5, 1.2), "att.r_k": ("normal", 0.3),
    "att.w2": ("fan_in", 0.2), "att.a2": ("fan_in", 0.5), "att.v2": ("fan_in", 0.5), "att.g2": ("fan_in", 1.0),
    "att.time_maa_w2": ("fan_in", 0.1), "att.time_decay_w2": ("fan_in", 0.2),
    "head.weight": ("fan_in", 4.0), "emb.weight": ("normal", 1.0),
}


def _init_rule(name: str):
    local = name.split(".", 2)[2] if name.startswith("blocks.") else name
    if local in _LOCAL_INIT:
        return _LOCAL_INIT[local]
    if "time_mix" in local or ("time_maa_" in local and local[-1] in "xwkvrg") or ("." + local).count(".x_"):
        return ("uniform", 0.0, 1.0)  # token-shift mixes
    if local.endswith(".bias"):
        return ("normal", 0.1)
    if local.startswith(("ln", "att.ln_x")) and local.endswith(".weight"):
        return ("around_one", 0.1)
    return ("fan_in", 1.0)  # matrices and LoRA down-projections


class RandomCheckpoint:
    """Random weights of a CheckpointShape under official names; nothing is generated until asked."""

    def __init__(self, shape: CheckpointShape, seed: int = 0):
        self.shape = shape
        self.seed = seed
        self.shapes = official_shapes(shape)

    @classmethod
    def of(cls, arch: str, size: str | None = None, seed: int = 0, **sizes) -> "RandomCheckpoint":
        """RandomCheckpoint.of("v7", "1.5B") or RandomCheckpoint.of("v6", n_layer=2, n_embd=128, n_vocab=512)."""
        return cls(CheckpointShape.of(arch, size, **sizes), seed=seed)

    def array(self, name: str) -> np.ndarray:
        """The float32 tensor `name`, the same on every call."""
        shape = self.shapes[name]
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        rule = _init_rule(name)
        if rule[0] == "uniform":
            return rng.uniform(rule[1], rule[2], size=shape).astype(np.float32)
        values = rng.standard_normal(size=shape, dtype=np.float32)
        if rule[0] == "around_one":
            return 1.0 + rule[1] * values
        if rule[0] == "normal":
            return values * np.float32(rule[1])
        # nn.Linear weights are (out, in); LoRA parameters are used as x @ W, so (in, out).
        fan_in = shape[-1] if name.endswith(".weight") else shape[-2]
        return values * np.float32(rule[1] / np.sqrt(fan_in))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name) for name in self.shapes}

    def write_pth(self, path: str | os.PathLike, dtype: str = "float32") -> str:
        """Write a torch.save-compatible .pth; dtype "float32", "float16" or "bfloat16". Returns the path."""
        write_pth(path, self.shapes, self.array, dtype)
        return os.fspath(path)

    def write_safetensors(self, path: str | os.PathLike, dtype: str = "F32") -> str:
        """Write a .safetensors file; dtype "F32", "F16" or "BF16". Returns the path."""
        write_safetensors(path, self.shapes, self.array, dtype)
        return os.fspath(path)

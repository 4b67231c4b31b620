"""Random-weight rwkv.cpp models with real shapes, generated on demand into bench/models/ (gitignored).

The values are random (matrices ~ N(0, 1/n_in), plausible vectors), so speed is that of a real
checkpoint of the same shape; the text they produce is meaningless. FP32 and FP16 files are written
directly; quantized ones are quantized from the FP16 file, as rwkv.cpp does (so the embedding,
head and v7 low-rank matrices stay FP16).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rwkvx.architecture import ModelShape, expected_tensors
from rwkvx.formats.quantize import quantize_file
from rwkvx.formats.writer import TensorRecord, write_rwkvcpp

MODELS_DIR = Path(__file__).parent / "models"

SHAPES = {
    "v4-169M": ModelShape("v4", 50277, 768, 12, 3072, 1, 768),
    "v6-1.6B": ModelShape("v6", 65536, 2048, 24, 7168, 32, 64, (("time_decay_w1", 64), ("time_maa_w1", 32))),
    "v7-0.1B": ModelShape("v7", 65536, 768, 12, 3072, 12, 64,
                          (("w1", 64), ("a1", 64), ("v1", 32), ("g1", 128))),
    "v7-1.5B": ModelShape("v7", 65536, 2048, 24, 8192, 32, 64,
                          (("w1", 96), ("a1", 96), ("v1", 64), ("g1", 256))),
}
DATA_TYPES = ("FP32", "FP16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")

# Vector values by name suffix (others: small random numbers).
_VECTOR_VALUES = {"ln1.weight": 1.0, "ln2.weight": 1.0, "ln0.weight": 1.0, "ln_out.weight": 1.0,
                  "ln_x.weight": 1.0, "k_k": 1.0, "k_a": 1.0, "time_decay": -1.0, "w0": -0.5}


def _tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    squeezed = [d for d in shape if d != 1]
    if len(squeezed) >= 2:  # a matrix (or v6's stacked maa_w2): rows of shape[-1] inputs
        scale = 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)
    for suffix, value in _VECTOR_VALUES.items():
        if name.endswith(suffix):
            return np.full(shape, value, dtype=np.float32)
    return rng.uniform(0.0, 0.5, size=shape).astype(np.float32)


def _records(shape: ModelShape, float_type: str, seed: int):
    rng = np.random.default_rng(seed)
    for name, tshape in expected_tensors(shape).items():
        data = _tensor(name, tshape, rng)
        is_matrix = len([d for d in tshape if d != 1]) >= 2 and not name.endswith("att.r_k")
        if float_type == "FP16" and is_matrix:
            yield TensorRecord(name, tshape, "FP16", data.astype(np.float16))
        else:
            yield TensorRecord(name, tshape, "FP32", data)


def model_path(model: str, data_type: str) -> Path:
    return MODELS_DIR / f"random-{model}-{data_type}.bin"


def ensure_model(model: str, data_type: str, log=print) -> Path:
    """Path of the random model file, generating it (and the FP16 file it derives from) if missing."""
    path = model_path(model, data_type)
    if path.exists():
        return path
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[model]
    if data_type in ("FP32", "FP16"):
        log(f"generating {path.name} ...")
        write_rwkvcpp(path, _records(shape, data_type, seed=0), n_vocab=shape.n_vocab, n_embd=shape.n_embd,
                      n_layer=shape.n_layer, data_type=data_type)
    else:
        source = ensure_model(model, "FP16", log)
        log(f"quantizing {path.name} ...")
        quantize_file(source, path, data_type)
    return path


def bytes_read_per_token(path: os.PathLike) -> int:
    """Weight bytes one token reads: the whole file except all but one row of the embedding."""
    from rwkvx.formats.rwkvcpp import RwkvCppFile

    f = RwkvCppFile(path)
    try:
        emb = f.tensors["emb.weight"]
        total = sum(info.nbytes for info in f.tensors.values())
        return total - emb.nbytes + emb.nbytes // f.header.n_vocab
    finally:
        f.close()

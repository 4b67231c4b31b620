"""Convert a PyTorch (.pth) or safetensors RWKV checkpoint to an rwkv.cpp .bin file (version 101).

    convert("RWKV-x070-World-0.1B.pth", "rwkv7-0.1B-FP16.bin", dtype="FP16")

The tensors are those rwkv.cpp's convert_pytorch_to_ggml.py writes (see checkpoint.py), in
state-dict order. FP16 keeps the same tensors FP32 as that converter; a quantized dtype gives the
bytes `rwkvx quantize` would write from the FP32 file. The write is atomic: nothing appears at
`dst` unless the whole file was written, and `dst` may not be `src`.
"""
from __future__ import annotations

import os

from .checkpoint import CheckpointConverter, checked_dtype, open_checkpoint
from .writer import ProgressCallback, write_rwkvcpp


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "FP16",
            progress: ProgressCallback | None = None, head: str | None = None) -> None:
    """Write the checkpoint `src` as an rwkv.cpp model `dst`.

    dtype: "FP16" (default, like rwkv.cpp's converter), "FP32", or Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0.
    head: with a quantized dtype, also quantize head.weight to this type.
    progress: called as progress(done, total, tensor_name) after each tensor is written.
    Raises ValueError for an unknown dtype, ModelFormatError (MissingTensorError) for a source that
    is not a loadable RWKV checkpoint or for dst == src; OSError from the file system.
    """
    dtype = checked_dtype(dtype)
    reader = open_checkpoint(src)
    try:
        converter = CheckpointConverter(reader)
        header = converter.header(dtype)
        write_rwkvcpp(dst, converter.records(dtype, head), n_vocab=header.n_vocab, n_embd=header.n_embd,
                      n_layer=header.n_layer, data_type=dtype, version=header.version,
                      n_tensors=converter.n_tensors, progress=progress, protect=[reader.path])
    finally:
        reader.close()

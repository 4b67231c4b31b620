"""The `rwkvx convert` and `rwkvx quantize` commands (registered in rwkvx.cli when imported).

    rwkvx convert RWKV-x070-World-0.1B.pth rwkv7-0.1B-FP16.bin --dtype FP16
    rwkvx quantize rwkv7-0.1B-FP16.bin rwkv7-0.1B-Q5_1.bin Q5_1 [--head Q8_0]
"""
from __future__ import annotations

import os

from .cli import command
from .formats.checkpoint import DTYPES
from .formats.ggml_types import QUANTIZED_TYPES
from .progress import ProgressBar


class _TensorProgress:
    """The writer's progress(done, total, name) callback, drawn as a ProgressBar over tensors."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def __call__(self, done: int, total: int | None, name: str) -> None:
        if self.bar is None:
            self.bar = ProgressBar(total=total or 0, label=self.label, unit="tensors")
        self.bar.update(done - self.bar.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(dst: str) -> None:
    print(f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MiB)")


def _convert_arguments(p):
    p.add_argument("src", metavar="SRC", help="PyTorch .pth or .safetensors RWKV checkpoint")
    p.add_argument("dst", metavar="DST", help="rwkv.cpp .bin file to write")
    p.add_argument("--dtype", choices=DTYPES, default="FP16", help="weight type (default FP16, as rwkv.cpp)")
    p.add_argument("--head", choices=QUANTIZED_TYPES, default=None,
                   help="with a quantized --dtype, also quantize head.weight to this type")


@command("convert", "convert a .pth/.safetensors checkpoint to an rwkv.cpp .bin file", _convert_arguments)
def convert_command(args) -> int:
    from .formats.convert import convert

    progress = _TensorProgress("convert")
    try:
        convert(args.src, args.dst, dtype=args.dtype, progress=progress, head=args.head)
    finally:
        progress.close()
    _report(args.dst)
    return 0


def _quantize_arguments(p):
    p.add_argument("src", metavar="SRC", help="FP32 or FP16 rwkv.cpp .bin file")
    p.add_argument("dst", metavar="DST", help="quantized .bin file to write")
    p.add_argument("type", metavar="TYPE", choices=QUANTIZED_TYPES, help=" | ".join(QUANTIZED_TYPES))
    p.add_argument("--head", choices=QUANTIZED_TYPES, default=None,
                   help="also quantize head.weight to this type (rwkv.cpp keeps it unquantized)")


@command("quantize", "quantize an FP32/FP16 rwkv.cpp .bin file (ggml rounding, rwkv.cpp-compatible)",
         _quantize_arguments)
def quantize_command(args) -> int:
    from .formats.quantize import quantize_file

    progress = _TensorProgress("quantize")
    try:
        quantize_file(args.src, args.dst, args.type, progress=progress, head=args.head)
    finally:
        progress.close()
    _report(args.dst)
    return 0

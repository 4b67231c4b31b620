"""rwkvx: fast RWKV language model inference (v4, v5.1, v5.2, v6, v7) on CPU.

    import rwkvx
    model = rwkvx.load("model.bin")
    logits, state = model.forward([1, 2, 3])
"""
from .errors import (
    BackendError,
    MissingTensorError,
    ModelFormatError,
    RWKVError,
    StateError,
    SamplingError,
    TokenError,
)
from .perplexity import perplexity  # eager: `rwkvx.perplexity` must stay the function, not the submodule

__version__ = "0.1.0"


def _cpu_info() -> dict:
    """What rwkvx can run on here: CPU kernels compiled / supported / active, and "gpu": the CUDA
    devices found for offload, or why none (asking may import PyCUDA; `import rwkvx` never does)."""
    from .cpu import cpu_info
    from .cuda import gpu_info

    return {**cpu_info(), "gpu": gpu_info()}


def __getattr__(name):
    # The compiled core is imported on first use, so tools that only need the
    # pure-Python parts (file reader, reference) work without a build.
    if name in ("load", "Model"):
        from . import model

        return getattr(model, name)
    if name == "State":
        from .state import State

        return State
    if name == "cpu_info":
        return _cpu_info
    if name == "Offload":
        from .offload import Offload

        return Offload
    if name == "GPUUnavailableError":
        from .cuda.errors import GPUUnavailableError

        return GPUUnavailableError
    if name == "convert":
        from .formats.convert import convert

        return convert
    if name == "quantize":
        from .formats.quantize import quantize_file

        return quantize_file
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    if name == "Sampler":
        from .sampling import Sampler

        return Sampler
    if name == "generate":
        from .generation import generate

        return generate
    if name in ("save_state", "load_state"):
        from . import state_io

        return getattr(state_io, name)
    raise AttributeError(f"module 'rwkvx' has no attribute {name!r}")


__all__ = ["BackendError", "GPUUnavailableError", "MissingTensorError", "Model", "ModelFormatError", "Offload",
           "RWKVError", "Sampler", "SamplingError", "State", "StateError", "TokenError", "Tokenizer", "convert",
           "cpu_info", "generate", "load", "load_state", "perplexity", "quantize", "save_state"]

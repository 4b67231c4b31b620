"""rwkvx: fast RWKV language model inference (v4, v5.1, v5.2, v6, v7) on CPU.

    import rwkvx
    model = rwkvx.load("model.bin")
    logits, state = model.forward([1, 2, 3])
"""
from .errors import (
    ArgumentError,
    BackendError,
    MissingDependencyError,
    MissingTensorError,
    ModelFormatError,
    RWKVError,
    StateError,
    SamplingError,
    TokenError,
    VocabError,
)
from .perplexity import perplexity  # eager: `rwkvx.perplexity` must stay the function, not the submodule

__version__ = "0.1.0"


def _cpu_info() -> dict:
    """What rwkvx can run on here: CPU kernels compiled / supported / active, and "gpu": the CUDA
    devices found for offload, or why none (asking may import PyCUDA; `import rwkvx` never does)."""
    from .cpu import cpu_info
    from .cuda import gpu_info

    return {**cpu_info(), "gpu": gpu_info()}


# Public names imported on first use (module, attribute), so `import rwkvx` stays light and the
# pure-Python parts (file reader, reference) work before the compiled core is built.
_LAZY = {
    "load": (".model", "load"),
    "Model": (".model", "Model"),
    "State": (".state", "State"),
    "Offload": (".offload", "Offload"),
    "GPUUnavailableError": (".cuda.errors", "GPUUnavailableError"),
    "convert": (".formats.convert", "convert"),
    "quantize": (".formats.quantize", "quantize_file"),
    "Tokenizer": (".tokenizer", "Tokenizer"),
    "Sampler": (".sampling", "Sampler"),
    "generate": (".generation", "generate"),
    "save_state": (".state_io", "save_state"),
    "load_state": (".state_io", "load_state"),
}


def __getattr__(name):
    if name == "cpu_info":
        return _cpu_info
    if name not in _LAZY:
        raise AttributeError(f"module 'rwkvx' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module, __name__), attribute)


__all__ = ["ArgumentError", "BackendError", "GPUUnavailableError", "MissingDependencyError", "MissingTensorError", "Model",
           "ModelFormatError", "Offload", "RWKVError", "Sampler", "SamplingError", "State", "StateError",
           "TokenError", "Tokenizer", "VocabError", "convert", "cpu_info", "generate", "load", "load_state",
           "perplexity", "quantize", "save_state"]

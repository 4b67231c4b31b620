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
    TokenError,
)

__version__ = "0.1.0"


def __getattr__(name):
    # The compiled core is imported on first use, so tools that only need the
    # pure-Python parts (file reader, reference) work without a build.
    if name in ("load", "Model"):
        from . import model

        return getattr(model, name)
    if name == "State":
        from .state import State

        return State
    raise AttributeError(f"module 'rwkvx' has no attribute {name!r}")


__all__ = ["BackendError", "MissingTensorError", "Model", "ModelFormatError", "RWKVError", "State",
           "StateError", "TokenError", "load"]

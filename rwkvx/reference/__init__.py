"""The readable NumPy reference forward pass of RWKV v4, v5.1, v5.2, v6 and v7: the oracle every fast path
is tested against. Float64 throughout, one token at a time; see SPEC.md §2 for the math."""
from .model import ReferenceModel

__all__ = ["ReferenceModel"]

"""Exceptions raised by rwkvx. Every one derives from RWKVError."""


class RWKVError(Exception):
    """Base class of every error rwkvx raises on purpose."""


class ModelFormatError(RWKVError, ValueError):
    """A model file is corrupt, truncated, of an unknown version or type, or lies about shapes."""


class MissingTensorError(ModelFormatError):
    """A tensor the architecture needs is not in the file."""


class TokenError(RWKVError, ValueError):
    """A token id is not an integer or is outside [0, n_vocab), or a text cannot be tokenized."""


class VocabError(RWKVError, ValueError):
    """A tokenizer vocabulary file is unreadable or malformed, or no tokenizer fits a vocabulary size."""


class MissingDependencyError(RWKVError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


class StateError(RWKVError, ValueError):
    """A state does not belong to this model (other architecture or shapes), or is malformed."""


class SamplingError(RWKVError, ValueError):
    """A sampling setting is out of range, or the logits leave nothing to sample."""


class ArgumentError(RWKVError, ValueError):
    """An argument is of the wrong kind or out of its range (logits="ALL", threads=0, ...)."""


class BackendError(RWKVError, RuntimeError):
    """A compute backend (CPU kernels, GPU) is unavailable or failed."""

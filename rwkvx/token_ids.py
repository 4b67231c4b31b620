"""Validation of token ids, shared by everything that feeds or scores tokens (Model.forward, generate,
perplexity), so that each refuses the same inputs with the same TokenError."""
from __future__ import annotations

import numpy as np

from .errors import TokenError


def checked_token_ids(tokens, n_vocab: int) -> np.ndarray:
    """tokens (an int or a 1-D sequence of ints) as a C-contiguous int32 array, each in [0, n_vocab).

    Floats, bools, strings and other kinds are refused rather than converted: 65.9 silently read as 65
    would be a wrong answer, not an error."""
    ids = np.atleast_1d(np.asarray(tokens))
    if ids.ndim != 1 or ids.size == 0:
        raise TokenError(f"tokens must be an int or a non-empty sequence of ints, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise TokenError(f"tokens must be integers, got {ids.dtype}")
    bad = np.flatnonzero((ids < 0) | (ids >= n_vocab))
    if bad.size:
        i = int(bad[0])
        raise TokenError(f"token {int(ids[i])} at position {i} is out of range [0, {n_vocab})")
    return np.ascontiguousarray(ids, dtype=np.int32)

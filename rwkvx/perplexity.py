"""Perplexity of a model on a text: exp of the mean negative log-likelihood of each next token.

The text is fed from the initial state in sequence-mode chunks of `chunk` tokens with
logits="all"; the logits at position i predict token i + 1, so a text of n tokens
gives n - 1 predictions (the first token has no context to be predicted from).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import ArgumentError, TokenError
from .token_ids import checked_token_ids

DEFAULT_CHUNK = 256


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float       # natural log, per predicted token
    n_predicted: int      # number of tokens scored (n_tokens - 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of float logits [..., n_vocab], computed in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def evaluate(model, text_or_tokens: str | bytes | Sequence[int], chunk: int = DEFAULT_CHUNK, tokenizer=None,
             progress: Callable[[int], None] | None = None) -> PerplexityResult:
    """Like perplexity(), returning the mean NLL and the number of scored tokens as well.

    progress(n) is called after each chunk with the number of tokens it fed.
    """
    tokens = _tokens(model, text_or_tokens, tokenizer)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ArgumentError(f"chunk must be an int >= 1, got {chunk!r}")
    # The last token is never fed: nothing after it is predicted.
    fed = tokens[:-1]
    targets = tokens[1:]
    total_nll = 0.0
    state = None
    for start in range(0, fed.size, chunk):
        piece = fed[start:start + chunk]
        logits, state = model.forward(piece, state, logits="all", inplace=state is not None)
        logp = log_softmax(logits)
        total_nll -= float(logp[np.arange(piece.size), targets[start:start + piece.size]].sum())
        if progress is not None:
            progress(int(piece.size))
    mean_nll = total_nll / targets.size
    return PerplexityResult(float(np.exp(mean_nll)), mean_nll, int(targets.size))


def perplexity(model, text_or_tokens: str | bytes | Sequence[int], chunk: int = DEFAULT_CHUNK, tokenizer=None,
               progress: Callable[[int], None] | None = None) -> float:
    """Perplexity (float) of `model` on a text (str/bytes, encoded with `tokenizer`, default: the
    one for model.n_vocab) or on token ids. Needs at least 2 tokens. Fed in chunks of `chunk`
    tokens; progress(n), if given, is called after each chunk with the number of tokens fed.
    """
    return evaluate(model, text_or_tokens, chunk=chunk, tokenizer=tokenizer, progress=progress).perplexity


def _tokens(model, text_or_tokens, tokenizer) -> np.ndarray:
    if isinstance(text_or_tokens, (str, bytes, bytearray)):
        if tokenizer is None:
            from .tokenizer import Tokenizer

            tokenizer = Tokenizer.for_vocab_size(model.n_vocab)
        ids = tokenizer.encode(text_or_tokens)
    else:
        ids = text_or_tokens
    if np.size(ids) < 2:
        raise TokenError(f"perplexity needs at least 2 tokens (one to predict from, one to predict); "
                         f"got {np.size(ids)}")
    # every token, the last one too: it is only ever a target, and -1 would score the vocabulary's last id
    return checked_token_ids(ids, model.n_vocab)

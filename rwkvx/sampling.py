"""Sampler: turns a logits vector into the next token id.

Order of operations for one step (the same order ChatRWKV and llama.cpp use):

1. adjusted logits = logits + logit_bias - penalties, where the penalty of a token
   seen before is `alpha_presence + alpha_frequency * count` and `count` is the
   token's occurrence count, multiplied by `alpha_decay` after every step (as
   ChatRWKV's `alpha_presence`, `alpha_frequency`, `alpha_decay`);
2. temperature 0: the argmax of the adjusted logits (greedy, no randomness);
3. otherwise filters on the softmax of the adjusted logits, each keeping a subset:
   top_k (the k most probable), top_p (the nucleus: the fewest most probable tokens
   whose probabilities sum to at least top_p), min_p (tokens with probability at
   least min_p times the best one's);
4. temperature: the kept tokens' logits are divided by it, then renormalized;
5. one draw from a NumPy Generator seeded with `seed` (None: fresh entropy).

The sampler remembers the tokens it produced (for the penalties); `accept(token)`
records a token chosen by someone else, `reset()` forgets them.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import SamplingError

# Probabilities are summed in float64; a nucleus whose sum falls short of top_p by
# rounding alone must still count as reaching it.
NUCLEUS_ROUNDING = 1e-12


class Sampler:
    """Sampling controls plus the state they need (occurrence counts, random generator).

    temperature: >= 0; 0 means greedy (argmax). top_p: in [0, 1]; 1 keeps everything, 0 only the best.
    top_k: >= 0; 0 keeps everything. min_p: in [0, 1]; 0 keeps everything.
    alpha_presence, alpha_frequency: penalties subtracted from the logits of tokens
    already produced. alpha_decay: in [0, 1]; occurrence counts are multiplied by it
    after each step (1: never forget). logit_bias: {token id: value added to its logit}
    (-inf bans a token). seed: int or None.
    Bad values raise SamplingError (an rwkvx.RWKVError and a ValueError).
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
                 alpha_presence: float = 0.0, alpha_frequency: float = 0.0, alpha_decay: float = 1.0,
                 logit_bias: Mapping[int, float] | None = None, seed: int | None = None):
        _check_range("temperature", temperature, 0.0, float("inf"))
        _check_range("top_p", top_p, 0.0, 1.0)
        _check_range("min_p", min_p, 0.0, 1.0)
        _check_range("alpha_decay", alpha_decay, 0.0, 1.0)
        _check_range("alpha_presence", alpha_presence, -float("inf"), float("inf"))
        _check_range("alpha_frequency", alpha_frequency, -float("inf"), float("inf"))
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
            raise SamplingError(f"top_k must be an int >= 0 (0 keeps every token), got {top_k!r}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.min_p = float(min_p)
        self.alpha_presence = float(alpha_presence)
        self.alpha_frequency = float(alpha_frequency)
        self.alpha_decay = float(alpha_decay)
        self.logit_bias = _checked_logit_bias(logit_bias)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise SamplingError(f"seed must be an int >= 0 or None, got {seed!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.occurrence: dict[int, float] = {}  # token id -> decayed count

    def __repr__(self) -> str:
        fields = ("temperature", "top_p", "top_k", "min_p", "alpha_presence", "alpha_frequency", "alpha_decay",
                  "seed")
        return "Sampler(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in fields) + ")"

    def reset(self) -> None:
        """Forget produced tokens and restart the random generator from the seed."""
        self.occurrence.clear()
        self._rng = np.random.default_rng(self.seed)

    def accept(self, token: int) -> None:
        """Record that `token` was produced: decay every count, then count it once more."""
        for t in self.occurrence:
            self.occurrence[t] *= self.alpha_decay
        self.occurrence[token] = self.occurrence.get(token, 0.0) + 1.0

    def adjusted_logits(self, logits: np.ndarray) -> np.ndarray:
        """logits (float [n_vocab]) + logit_bias - penalties, as float64 [n_vocab] (a new array)."""
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.size == 0:
            raise SamplingError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
        if logits.dtype.kind not in "fiu":
            raise SamplingError(f"logits must be numbers, got {logits.dtype}")
        out = logits.astype(np.float64)  # always a copy
        n_vocab = out.size
        for token, bias in self.logit_bias.items():
            if not 0 <= token < n_vocab:
                raise SamplingError(f"logit_bias names token {token}, outside [0, {n_vocab})")
            out[token] += bias
        for token, count in self.occurrence.items():
            if 0 <= token < n_vocab:
                out[token] -= self.alpha_presence + self.alpha_frequency * count
        if np.isnan(out).any():
            raise SamplingError("logits contain NaN")
        if not np.isfinite(out.max()):
            raise SamplingError("every token is banned (all adjusted logits are -inf) or a logit is +inf")
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution the next token is drawn from: float64 [n_vocab], zero outside the kept set.

        For temperature 0 this is one-hot at the argmax of the adjusted logits.
        """
        adjusted = self.adjusted_logits(logits)
        probs = np.zeros_like(adjusted)
        if self.temperature == 0.0:
            probs[int(np.argmax(adjusted))] = 1.0
            return probs
        if not self.top_k and self.top_p >= 1.0 and self.min_p <= 0.0:
            kept = np.flatnonzero(_softmax(adjusted) > 0.0)  # nothing is cut: no need to order tokens
        else:
            kept = self._kept_tokens(_softmax(adjusted))
        # the largest logit subtracted before dividing: a temperature so small that logit / temperature
        # overflows (1e-310) would otherwise give inf - inf = NaN and sample garbage
        top = adjusted[kept]
        with np.errstate(over="ignore"):  # far below the largest logit, -inf is the right limit
            probs[kept] = _softmax((top - top.max()) / self.temperature)
        return probs

    def _kept_tokens(self, probs: np.ndarray) -> np.ndarray:
        """Indices surviving top_k, top_p and min_p, most probable first (ties: lower id first)."""
        # Sorting a 65536-token vocabulary costs milliseconds per token, as much as a small model's
        # forward pass: sort only the most probable candidates, widening until they provably hold
        # the whole kept set (the result equals a full stable sort's prefix).
        limit = min(self.top_k, probs.size) if self.top_k else probs.size
        if self.top_p < 1.0:  # the nucleus: widen until the candidates' mass reaches top_p
            width = min(limit, CANDIDATES)
        elif self.top_k:
            width = limit
        else:  # min_p alone keeps exactly the tokens above its threshold
            width = int(np.count_nonzero(probs >= self.min_p * probs.max()))
        while True:
            order = _most_probable_first(probs, width)
            if width >= limit or self.top_p >= 1.0 or np.cumsum(probs[order])[-1] >= self.top_p - NUCLEUS_ROUNDING:
                break
            width = min(limit, width * 8)
        order = order[probs[order] > 0.0]
        if self.top_k:
            order = order[: self.top_k]
        if self.top_p < 1.0:
            cumulative = np.cumsum(probs[order])
            n_nucleus = int(np.searchsorted(cumulative, self.top_p - NUCLEUS_ROUNDING, side="left")) + 1
            order = order[:n_nucleus]
        if self.min_p > 0.0:
            order = order[probs[order] >= self.min_p * probs[order[0]]]
        return order

    def sample(self, logits: np.ndarray) -> int:
        """Draw the next token from logits (float [n_vocab]) and record it (see accept)."""
        probs = self.probabilities(logits)
        if self.temperature == 0.0:
            token = int(np.argmax(probs))
        else:
            # Inverse CDF over the kept tokens in id order: reproducible for a given seed.
            kept = np.flatnonzero(probs)
            cumulative = np.cumsum(probs[kept])
            u = self._rng.random() * cumulative[-1]
            token = int(kept[min(int(np.searchsorted(cumulative, u, side="right")), kept.size - 1)])
        self.accept(token)
        return token


def _most_probable_first(probs: np.ndarray, width: int) -> np.ndarray:
    """Every token at least as probable as the width-th most probable one, by decreasing probability
    and then increasing id: exactly the first tokens of a full stable sort (possibly more than width,
    when several tie at the boundary)."""
    if width >= probs.size:
        return np.argsort(-probs, kind="stable")
    threshold = np.partition(probs, probs.size - width)[probs.size - width]
    candidates = np.flatnonzero(probs >= threshold)
    return candidates[np.lexsort((candidates, -probs[candidates]))]


def _checked_logit_bias(logit_bias) -> dict[int, float]:
    if logit_bias is None:
        return {}
    if not isinstance(logit_bias, Mapping):
        raise SamplingError(f"logit_bias must be a mapping {{token id: value}}, got {type(logit_bias).__name__}")
    out = {}
    for token, bias in logit_bias.items():
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise SamplingError(f"logit_bias keys must be token ids (ints), got {token!r}")
        try:
            out[int(token)] = float(bias)
        except (TypeError, ValueError):
            raise SamplingError(f"logit_bias[{token}] must be a number, got {bias!r}") from None
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _check_range(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SamplingError(f"{name} must be a number, got {value!r}") from None
    too_low = value <= low if low_open else value < low
    if np.isnan(value) or too_low or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise SamplingError(f"{name} must be in {interval}, got {value!r}")


CANDIDATES = 256  # tokens sorted first when only the head of the distribution is kept

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "alpha_presence", "alpha_frequency", "alpha_decay",
                 "logit_bias", "seed")

"""generate(): stream text from a model, one piece per sampled token.

    for piece in rwkvx.generate(model, "The sky", max_tokens=50, temperature=0.8, top_p=0.9, seed=1):
        print(piece, end="", flush=True)

The prompt is fed in one sequence-mode call that computes logits for its last
token only; each sampled token is then fed back one at a time, updating a private
copy of the state in place. Pieces are always whole characters: a UTF-8 character
split across tokens comes out when its last byte has been sampled.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from .errors import TokenError
from .token_ids import checked_token_ids
from .sampling import SAMPLING_KEYS, Sampler, SamplingError

DEFAULT_MAX_TOKENS = 200


class Generation(Iterator[str]):
    """The iterator generate() returns. Besides the text pieces it exposes:

    state: the State after the prompt and every sampled token (including a stop
           token or the token that completed a stop string), ready to continue from;
           the state passed to generate() is never modified.
    tokens: the sampled token ids (list[int]).
    stop_reason: None while running, then "max_tokens", "stop_token" or "stop_string".
    """

    def __init__(self, model, prompt_ids: list[int], max_tokens: int, tokenizer, state, sampler: Sampler,
                 stop_tokens: Iterable[int], stop_strings: Sequence[str]):
        self.model = model
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.state = state
        self.tokens: list[int] = []
        self.stop_reason: str | None = None
        self._prompt_ids = prompt_ids
        self._max_tokens = max_tokens
        self._stop_tokens = frozenset(int(t) for t in stop_tokens)
        self._stop_strings = [s for s in stop_strings if s]
        self._pieces = self._run()

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def text(self) -> str:
        """Run to the end and return the whole generated text (what the pieces would join to)."""
        return "".join(self)

    def _run(self) -> Iterator[str]:
        logits, self.state = self.model.forward(self._prompt_ids, self.state, logits="last")
        decoder = self.tokenizer.stream_decoder()
        pending = ""  # decoded text held back because it may be the start of a stop string
        for step in range(self._max_tokens):
            token = self.sampler.sample(logits)
            self.tokens.append(token)
            last = step == self._max_tokens - 1
            if token in self._stop_tokens:
                self.stop_reason = "stop_token"
            if last or self.stop_reason:
                # Keep the state complete (it has seen every sampled token) without computing a head.
                _, self.state = self.model.forward(token, self.state, logits=None, inplace=True)
            else:
                logits, self.state = self.model.forward(token, self.state, logits="last", inplace=True)
            if self.stop_reason:
                break
            pending += decoder.push(token)
            cut = _first_stop(pending, self._stop_strings)
            if cut is not None:
                self.stop_reason = "stop_string"
                if cut:
                    yield pending[:cut]
                return
            safe = len(pending) - _held_back(pending, self._stop_strings)
            if safe:
                yield pending[:safe]
                pending = pending[safe:]
        if self.stop_reason is None:
            self.stop_reason = "max_tokens"
        pending += decoder.flush()
        cut = _first_stop(pending, self._stop_strings)
        if cut is not None:
            self.stop_reason, pending = "stop_string", pending[:cut]
        if pending:
            yield pending


def _first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    found = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _checked_stop_strings(stop) -> list[str]:
    if stop is None:
        return []
    strings = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, Iterable) else None
    if strings is None or not all(isinstance(s, str) and s for s in strings):
        raise SamplingError(f"stop must be a non-empty string or a sequence of them, got {stop!r}")
    return strings


def _checked_stop_tokens(stop_tokens, n_vocab: int) -> list[int]:
    tokens = list(stop_tokens) if isinstance(stop_tokens, Iterable) else None
    if tokens is None:
        raise TokenError(f"stop_tokens must be a sequence of token ids, got {stop_tokens!r}")
    return checked_token_ids(tokens, n_vocab).tolist() if tokens else []


def generate(model, prompt: str | bytes | Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS, tokenizer=None,
             state=None, stop: str | Sequence[str] | None = None, stop_tokens: Iterable[int] = (),
             sampler: Sampler | None = None, **sampling) -> Generation:
    """Stream text from `model` after `prompt`; returns a Generation (an iterator of str pieces).

    prompt: text (str, or bytes for byte-level and World tokenizers) or token ids; must not be empty.
    max_tokens: how many tokens to sample at most (>= 1).
    tokenizer: an rwkvx.Tokenizer; None picks one from model.n_vocab.
    state: an rwkvx.State to continue from (not modified); None: the initial state.
    stop: a string or strings; generation ends before the first occurrence (not emitted).
    stop_tokens: token ids that end generation (not emitted).
    sampler: an rwkvx.Sampler to use (keeps its penalties' memory across calls), or
    **sampling: keyword arguments for a new Sampler (temperature, top_p, top_k, min_p,
    alpha_presence, alpha_frequency, alpha_decay, logit_bias, seed).
    """
    if tokenizer is None:
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.for_vocab_size(model.n_vocab)
    if sampler is not None and sampling:
        raise SamplingError(f"pass either sampler= or sampling keywords, not both (got {sorted(sampling)})")
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"generate() got unknown keyword arguments {unknown}; sampling keywords are "
                        f"{', '.join(SAMPLING_KEYS)}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise SamplingError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if isinstance(prompt, (str, bytes, bytearray)):
        prompt_ids = list(tokenizer.encode(prompt))
    else:
        prompt_ids = list(prompt)
    if not prompt_ids:
        raise TokenError("the prompt is empty: generation needs at least one token to start from")
    prompt_ids = checked_token_ids(prompt_ids, model.n_vocab).tolist()
    stop_strings = _checked_stop_strings(stop)
    stop_tokens = _checked_stop_tokens(stop_tokens, model.n_vocab)
    return Generation(model, prompt_ids, max_tokens, tokenizer, state, sampler or Sampler(**sampling),
                      stop_tokens, stop_strings)

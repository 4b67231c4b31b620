"""perplexity(): chunked sequence-mode scoring equals an independent whole-text computation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import rwkvx
from rwkvx.errors import TokenError
from rwkvx.perplexity import evaluate, perplexity

TINY = Path(__file__).parent / "data" / "tiny"
TEXT = (Path(__file__).parent / "data" / "tiny" / "README.md").read_bytes() * 2
# Chunking changes only how rows are grouped; per-token logits may differ in the last float32 bits.
PPL_RTOL = 1e-6


def independent_perplexity(model, tokens) -> float:
    """One forward(..., logits="all") over the whole text; float64 log-softmax written out here."""
    logits, _ = model.forward(tokens[:-1], logits="all")
    x = logits.astype(np.float64)
    nll = []
    for row, target in zip(x, tokens[1:]):
        m = row.max()
        nll.append(m + math.log(np.exp(row - m).sum()) - row[target])
    return math.exp(sum(nll) / len(nll))


# The tiny v6 models were trained on UTF-16-LE bytes (greedy output alternates characters and NULs);
# on UTF-8 bytes their perplexity exceeds that of a uniform guess.
MODEL_ENCODINGS = [("4v0-660K-FP32", "utf-8"), ("6v0-1m-FP32", "utf-16-le"), ("7v0-834K-Q5_1", "utf-8")]


@pytest.mark.parametrize("name, encoding", MODEL_ENCODINGS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 100000])
def test_chunked_perplexity_equals_independent_computation(name, encoding, chunk):
    model = rwkvx.load(TINY / f"tiny-rwkv-{name}.bin", threads=1)
    tokens = list(TEXT.decode("utf-8")[:200].encode(encoding))
    got = perplexity(model, tokens, chunk=chunk)
    assert math.isfinite(got) and 1.0 < got < 256.0
    assert got == pytest.approx(independent_perplexity(model, tokens), rel=PPL_RTOL)


class UniformModel:
    """A stand-in model whose logits are all equal: every token has probability 1/n_vocab."""

    n_vocab = 256

    def forward(self, tokens, state=None, logits="last", inplace=False):
        return np.zeros((len(tokens), self.n_vocab), dtype=np.float32), state


def test_uniform_model_has_perplexity_n_vocab():
    assert perplexity(UniformModel(), list(range(50)), chunk=8) == pytest.approx(256.0, rel=1e-12)


def test_text_tokens_and_progress():
    model = rwkvx.load(TINY / "tiny-rwkv-4v0-660K-FP32.bin", threads=1)
    text = TEXT[:300]
    reported = []
    result = evaluate(model, text, chunk=64, progress=reported.append)
    assert result.n_predicted == 299
    assert reported == [64, 64, 64, 64, 43]
    assert result.perplexity == perplexity(model, list(text), chunk=64)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll), rel=1e-12)
    assert perplexity(model, text.decode("utf-8"), chunk=64) == result.perplexity


def test_model_predicts_its_text_better_than_noise():
    model = rwkvx.load(TINY / "tiny-rwkv-4v0-660K-FP32.bin", threads=1)
    noise = np.random.default_rng(0).integers(0, 256, 300).tolist()
    assert perplexity(model, TEXT[:300]) < perplexity(model, noise)


def test_too_short_or_bad_input():
    model = UniformModel()
    with pytest.raises(TokenError, match="at least 2 tokens"):
        perplexity(model, [5])
    with pytest.raises(TokenError, match="integers"):
        perplexity(model, [0.5, 1.5])
    with pytest.raises(ValueError, match="chunk"):
        perplexity(model, [1, 2, 3], chunk=0)


@pytest.mark.parametrize("tokens", [[1, 2, -1], [1, 2, 256], [-1, 1, 2], [1, 300, 2]])
def test_every_token_is_range_checked_the_last_one_too(tokens):
    """The last token is only ever a target: -1 would silently score the vocabulary's last id."""
    model = UniformModel()
    with pytest.raises(TokenError, match="out of range"):
        perplexity(model, tokens)

"""generate(): prompt in sequence mode, sampling loop, stop tokens/strings, streaming UTF-8, seeds, states."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rwkvx
from rwkvx.errors import TokenError
from rwkvx.generation import generate
from rwkvx.sampling import Sampler
from rwkvx.tokenizer import Tokenizer

TINY = Path(__file__).parent / "data" / "tiny"
MODEL_PATH = TINY / "tiny-rwkv-4v0-660K-FP32.bin"  # the tiny model whose greedy text is most readable
PROMPT = "The "


@pytest.fixture(scope="module")
def model():
    return rwkvx.load(MODEL_PATH, threads=1)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.bytes()


def greedy_by_hand(model, prompt_ids, n):
    """Independent greedy loop on model.forward: (tokens, final state)."""
    logits, state = model.forward(prompt_ids, logits="last")
    tokens = []
    for _ in range(n):
        token = int(np.argmax(logits))
        tokens.append(token)
        logits, state = model.forward(token, state, logits="last")
    return tokens, state


class SpyModel:
    """Delegates to a model and records every forward call as (tokens, logits mode)."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.n_vocab = model.n_vocab

    def forward(self, tokens, state=None, logits="last", inplace=False):
        self.calls.append((np.atleast_1d(tokens).tolist(), logits))
        return self.model.forward(tokens, state, logits=logits, inplace=inplace)


class ScriptedSampler:
    """Returns the given token ids in order, whatever the logits."""

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def sample(self, logits):
        return self.tokens.pop(0)


def test_greedy_generation_equals_a_hand_written_loop(model, tokenizer):
    n = 40
    gen = generate(model, PROMPT, max_tokens=n, tokenizer=tokenizer, temperature=0)
    text = gen.text()
    expected_tokens, expected_state = greedy_by_hand(model, list(PROMPT.encode()), n)
    assert gen.tokens == expected_tokens
    assert text == bytes(expected_tokens).decode("utf-8", errors="replace")
    assert gen.stop_reason == "max_tokens"
    # The final state has seen every sampled token, fed exactly as the hand-written loop feeds them.
    assert np.array_equal(gen.state.data, expected_state.data)


def test_prompt_is_fed_in_one_call_with_logits_for_the_last_token_only(model, tokenizer):
    spy = SpyModel(model)
    prompt = "A longer prompt, fed at once."
    gen = generate(spy, prompt, max_tokens=5, tokenizer=tokenizer, temperature=0)
    gen.text()
    assert spy.calls[0] == (list(prompt.encode()), "last")
    assert [len(tokens) for tokens, _ in spy.calls[1:]] == [1] * 5
    # The last sampled token is fed only to complete the state: no head.
    assert [mode for _, mode in spy.calls[1:]] == ["last"] * 4 + [None]


def test_default_tokenizer_comes_from_the_vocabulary_size(model):
    a = generate(model, PROMPT, max_tokens=10, temperature=0).text()
    b = generate(model, PROMPT, max_tokens=10, temperature=0, tokenizer=Tokenizer.bytes()).text()
    assert a == b


def test_same_seed_same_text_other_seed_other_text(model, tokenizer):
    run = lambda seed: generate(model, PROMPT, max_tokens=60, tokenizer=tokenizer, temperature=1.0, top_p=0.9,
                                seed=seed).text()
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sampling_keywords_reach_the_sampler(model, tokenizer):
    # Banning the greedy choice with logit_bias must change the first token.
    greedy = generate(model, PROMPT, max_tokens=1, tokenizer=tokenizer, temperature=0)
    greedy.text()
    banned = generate(model, PROMPT, max_tokens=1, tokenizer=tokenizer, temperature=0,
                      logit_bias={greedy.tokens[0]: -np.inf})
    banned.text()
    assert banned.tokens[0] != greedy.tokens[0]


def test_stop_token_ends_generation_and_is_not_emitted(model, tokenizer):
    tokens, _ = greedy_by_hand(model, list(PROMPT.encode()), 40)
    stop_at = 5
    stop_token = tokens[stop_at]
    first = tokens.index(stop_token)
    gen = generate(model, PROMPT, max_tokens=40, tokenizer=tokenizer, temperature=0, stop_tokens=[stop_token])
    assert gen.text() == bytes(tokens[:first]).decode()
    assert gen.tokens == tokens[: first + 1]
    assert gen.stop_reason == "stop_token"


def test_stop_string_ends_generation_before_it(model, tokenizer):
    full = generate(model, PROMPT, max_tokens=60, tokenizer=tokenizer, temperature=0).text()
    stop = full[20:24]
    gen = generate(model, PROMPT, max_tokens=60, tokenizer=tokenizer, temperature=0, stop=["never here", stop])
    assert gen.text() == full[: full.index(stop)]
    assert gen.stop_reason == "stop_string"
    # Generation stopped at the token that completed the stop string.
    assert len(gen.tokens) == len(full[: full.index(stop) + len(stop)].encode())


def test_partial_stop_string_is_released_when_it_does_not_complete(model, tokenizer):
    script = list(b"ab\ncd\n\nef")
    gen = generate(model, "x", max_tokens=len(script), tokenizer=tokenizer, stop="\n\n",
                   sampler=ScriptedSampler(script))
    # "a", "b" stream at once (they cannot start "\n\n"); the first "\n" waits until "c" shows it is
    # not a stop; "d" streams; the second "\n" waits, and the third completes the stop string.
    assert list(gen) == ["a", "b", "\nc", "d"]


def test_stream_never_emits_half_a_character(model, tokenizer):
    text = "aé€😀b"
    gen = generate(model, "x", max_tokens=len(text.encode()), tokenizer=tokenizer,
                   sampler=ScriptedSampler(text.encode()))
    assert list(gen) == ["a", "é", "€", "😀", "b"]


def test_stream_of_random_bytes_joins_to_the_decoded_tokens(model, tokenizer):
    # High temperature makes invalid UTF-8 likely; pieces must still be what decode() gives, in order.
    gen = generate(model, PROMPT, max_tokens=300, tokenizer=tokenizer, temperature=3.0, seed=5)
    pieces = list(gen)
    assert any(t >= 0x80 for t in gen.tokens)
    assert "".join(pieces) == tokenizer.decode(gen.tokens)
    assert all(p for p in pieces)


def test_state_argument_is_continued_and_not_modified(model, tokenizer):
    first, second = "The cat", " sat on"
    _, state = model.forward(list(first.encode()), logits=None)
    before = state.data.copy()
    continued = generate(model, second, max_tokens=30, tokenizer=tokenizer, temperature=0, state=state).text()
    whole = generate(model, first + second, max_tokens=30, tokenizer=tokenizer, temperature=0).text()
    assert continued == whole
    assert np.array_equal(state.data, before)


def test_generation_state_continues_a_conversation(model, tokenizer):
    one = generate(model, PROMPT, max_tokens=20, tokenizer=tokenizer, temperature=0)
    one.text()
    two = generate(model, "and", max_tokens=20, tokenizer=tokenizer, temperature=0, state=one.state)
    two.text()
    tokens, _ = greedy_by_hand(model, list(PROMPT.encode()) + one.tokens + list(b"and"), 20)
    assert two.tokens == tokens


def test_bad_arguments(model, tokenizer):
    with pytest.raises(TokenError, match="empty"):
        generate(model, "", tokenizer=tokenizer)
    with pytest.raises(TypeError, match="unknown keyword"):
        generate(model, "x", tokenizer=tokenizer, temprature=1.0)
    with pytest.raises(rwkvx.RWKVError, match="max_tokens"):
        generate(model, "x", tokenizer=tokenizer, max_tokens=0)
    with pytest.raises(rwkvx.RWKVError, match="either sampler"):
        generate(model, "x", tokenizer=tokenizer, sampler=Sampler(), temperature=0.5)
    with pytest.raises(TokenError):
        generate(model, [300], tokenizer=tokenizer).text()


@pytest.mark.parametrize("kwargs, error", [
    ({"stop": 5}, rwkvx.SamplingError), ({"stop": [""]}, rwkvx.SamplingError), ({"stop": ["ok", 3]}, rwkvx.SamplingError),
    ({"stop_tokens": ["x"]}, TokenError), ({"stop_tokens": [300]}, TokenError), ({"stop_tokens": 5}, TokenError),
])
def test_bad_stop_conditions(model, tokenizer, kwargs, error):
    with pytest.raises(error):
        generate(model, "x", tokenizer=tokenizer, **kwargs)


@pytest.mark.parametrize("prompt", [[65.9, 66.9], ["65", "66"], np.array([65.7, 66.2]), [True, False],
                                    [[65, 66]]])
def test_prompt_ids_are_refused_as_forward_refuses_them(model, tokenizer, prompt):
    """Not converted: 65.9 read as 65 would be a wrong prompt, not an error."""
    with pytest.raises(TokenError):
        generate(model, prompt, tokenizer=tokenizer)
    with pytest.raises(TokenError):
        model.forward(prompt)

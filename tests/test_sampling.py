"""Sampler: each control changes the distribution exactly as documented in rwkvx/sampling.py."""
from __future__ import annotations

import numpy as np
import pytest

from rwkvx.errors import RWKVError
from rwkvx.sampling import Sampler, SamplingError

N_VOCAB = 256
# Probabilities are computed in float64 from float32 logits; comparisons allow float64 rounding.
PROB_TOLERANCE = 1e-12
# Empirical frequencies of N_DRAWS samples: 6 standard deviations of a binomial at p = 0.5.
N_DRAWS = 20000
FREQ_TOLERANCE = 6 * 0.5 / np.sqrt(N_DRAWS)


def random_logits(seed: int, n: int = N_VOCAB) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 3).astype(np.float32)


def softmax64(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def logits_for(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


@pytest.mark.parametrize("seed", range(20))
def test_top_k_1_equals_argmax(seed):
    logits = random_logits(seed)
    sampler = Sampler(temperature=1.5, top_k=1, seed=seed)
    assert [sampler.sample(logits) for _ in range(10)] == [int(np.argmax(logits))] * 10


def test_temperature_0_is_greedy_even_with_other_filters():
    logits = random_logits(1)
    sampler = Sampler(temperature=0, top_p=0.5, min_p=0.1, seed=3)
    assert sampler.sample(logits) == int(np.argmax(logits))
    probs = sampler.probabilities(logits)
    assert probs[int(np.argmax(logits))] == 1.0 and probs.sum() == 1.0


@pytest.mark.parametrize("temperature", [1e-300, 1e-310, 5e-324])
def test_a_tiny_temperature_is_greedy_not_nan(temperature):
    """logit / temperature overflows to inf below ~1e-308; the distribution must still be one-hot."""
    logits = random_logits(2)
    sampler = Sampler(temperature=temperature, seed=1)
    probs = sampler.probabilities(logits)
    assert np.isfinite(probs).all() and probs[int(np.argmax(logits))] == 1.0
    assert sampler.sample(logits) == int(np.argmax(logits))


@pytest.mark.parametrize("k", [2, 5, 40, N_VOCAB])
def test_top_k_keeps_the_k_most_likely_renormalized(k):
    logits = random_logits(k)
    probs = Sampler(top_k=k).probabilities(logits)
    expected_kept = set(np.argsort(-logits)[:k].tolist())
    assert set(np.flatnonzero(probs).tolist()) == expected_kept
    full = softmax64(logits)
    kept = sorted(expected_kept)
    np.testing.assert_allclose(probs[kept], full[kept] / full[kept].sum(), rtol=0, atol=PROB_TOLERANCE)


def nucleus(probs: np.ndarray, top_p: float) -> set[int]:
    """Straightforward nucleus: add tokens, most likely first, until their sum reaches top_p."""
    kept, total = set(), 0.0
    for token in sorted(range(probs.size), key=lambda t: -probs[t]):
        kept.add(token)
        total += probs[token]
        if total >= top_p - 1e-12:
            break
    return kept


@pytest.mark.parametrize("top_p, expected", [
    (0.0, {2}),            # only the best token
    (0.35, {2}),           # 0.4 alone reaches 0.35
    (0.4, {2}),            # exactly reached by the best token alone
    (0.65, {2, 0}),        # 0.4 + 0.3 = 0.7 >= 0.65
    (0.7, {2, 0}),         # exactly the sum of the two best
    (0.71, {2, 0, 3}),
    (0.95, {2, 0, 3, 1}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_exactly_the_nucleus(top_p, expected):
    probs = np.array([0.3, 0.1, 0.4, 0.2])
    got = Sampler(top_p=top_p).probabilities(logits_for(probs))
    assert set(np.flatnonzero(got).tolist()) == expected
    kept = sorted(expected)
    np.testing.assert_allclose(got[kept], probs[kept] / probs[kept].sum(), atol=PROB_TOLERANCE)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_a_plain_loop(seed, top_p):
    logits = random_logits(100 + seed)
    got = Sampler(top_p=top_p).probabilities(logits)
    assert set(np.flatnonzero(got).tolist()) == nucleus(softmax64(logits), top_p)


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 1.0])
def test_min_p_keeps_tokens_above_the_fraction_of_the_best(min_p):
    logits = random_logits(7)
    full = softmax64(logits)
    got = Sampler(min_p=min_p).probabilities(logits)
    assert set(np.flatnonzero(got).tolist()) == set(np.flatnonzero(full >= min_p * full.max()).tolist())


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_scales_logits(temperature):
    logits = random_logits(11)
    got = Sampler(temperature=temperature).probabilities(logits)
    np.testing.assert_allclose(got, softmax64(logits.astype(np.float64) / temperature), atol=PROB_TOLERANCE)


def test_temperature_applies_after_the_filters():
    # The nucleus is chosen on the untempered distribution (as ChatRWKV and llama.cpp do):
    # at temperature 10 the distribution is nearly flat, yet top_p=0.65 still keeps 2 tokens.
    probs = np.array([0.3, 0.1, 0.4, 0.2])
    got = Sampler(temperature=10.0, top_p=0.65).probabilities(logits_for(probs))
    assert set(np.flatnonzero(got).tolist()) == {0, 2}
    np.testing.assert_allclose(got[[0, 2]], softmax64(logits_for(probs[[0, 2]]) / 10.0), atol=PROB_TOLERANCE)


def test_presence_and_frequency_penalties_lower_logits_by_the_stated_amount():
    presence, frequency, decay = 0.7, 0.25, 0.9
    logits = random_logits(5)
    sampler = Sampler(alpha_presence=presence, alpha_frequency=frequency, alpha_decay=decay)
    sampler.accept(10)
    delta = sampler.adjusted_logits(logits) - logits.astype(np.float64)
    assert delta[10] == pytest.approx(-(presence + frequency * 1.0), abs=PROB_TOLERANCE)
    assert np.count_nonzero(delta) == 1
    sampler.accept(10)   # count of 10: 1 * decay + 1
    sampler.accept(20)   # count of 10: (1 * decay + 1) * decay; count of 20: 1
    delta = sampler.adjusted_logits(logits) - logits.astype(np.float64)
    assert delta[10] == pytest.approx(-(presence + frequency * (decay + 1) * decay), abs=PROB_TOLERANCE)
    assert delta[20] == pytest.approx(-(presence + frequency), abs=PROB_TOLERANCE)
    assert np.count_nonzero(delta) == 2


def test_sample_records_the_token_it_returns():
    logits = random_logits(9)
    sampler = Sampler(temperature=0, alpha_frequency=100.0)
    first = sampler.sample(logits)
    second = sampler.sample(logits)
    assert first == int(np.argmax(logits))
    assert second != first  # a penalty of 100 pushes the repeated token below the others
    sampler.reset()
    assert sampler.sample(logits) == first


def test_penalty_changes_the_probability_by_the_stated_factor():
    # Lowering one logit by d multiplies its odds against any other token by exp(-d).
    penalty = 1.3
    logits = random_logits(13)
    sampler = Sampler(alpha_presence=penalty)
    before = sampler.probabilities(logits)
    sampler.accept(3)
    after = sampler.probabilities(logits)
    assert (after[3] / after[4]) == pytest.approx(before[3] / before[4] * np.exp(-penalty), rel=1e-12)


def test_logit_bias_adds_and_bans():
    logits = random_logits(17)
    best = int(np.argmax(logits))
    sampler = Sampler(logit_bias={5: 2.0, best: -np.inf}, seed=0)
    adjusted = sampler.adjusted_logits(logits)
    assert adjusted[5] == pytest.approx(float(logits[5]) + 2.0, abs=PROB_TOLERANCE)
    assert adjusted[best] == -np.inf
    assert best not in {sampler.sample(logits) for _ in range(300)}
    assert Sampler(temperature=0, logit_bias={best: -np.inf}).sample(logits) == int(np.argsort(-logits)[1])


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = random_logits(21)

    def draws(seed):
        sampler = Sampler(seed=seed)
        return [sampler.sample(logits) for _ in range(50)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_samples_follow_the_distribution():
    probs = np.array([0.5, 0.25, 0.15, 0.1])
    sampler = Sampler(seed=1234)
    counts = np.bincount([sampler.sample(logits_for(probs)) for _ in range(N_DRAWS)], minlength=4)
    np.testing.assert_allclose(counts / N_DRAWS, probs, atol=FREQ_TOLERANCE)


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1}, {"top_p": 1.5}, {"top_p": float("nan")}, {"top_k": -1}, {"top_k": 1.5},
    {"min_p": 2.0}, {"alpha_decay": 1.5}, {"temperature": "hot"},
    {"logit_bias": {"a": 1}}, {"logit_bias": {1: "x"}}, {"logit_bias": [1, 2]}, {"logit_bias": {True: 1.0}},
    {"seed": -1}, {"seed": 1.5}, {"seed": "7"},
])
def test_bad_controls_raise_a_clear_error(kwargs):
    with pytest.raises(SamplingError) as info:
        Sampler(**kwargs)
    assert isinstance(info.value, RWKVError)
    assert next(iter(kwargs)) in str(info.value)


def test_bad_logits_raise_a_clear_error():
    with pytest.raises(SamplingError, match="NaN"):
        Sampler().sample(np.array([0.0, np.nan]))
    with pytest.raises(SamplingError, match="banned"):
        Sampler(logit_bias={0: -np.inf, 1: -np.inf}).sample(np.zeros(2))
    with pytest.raises(SamplingError, match="outside"):
        Sampler(logit_bias={300: 1.0}).sample(np.zeros(N_VOCAB))
    with pytest.raises(SamplingError, match="1-D"):
        Sampler().sample(np.zeros((2, 3)))
    with pytest.raises(SamplingError, match="numbers"):
        Sampler().sample(np.array(["a", "b"]))


def _kept_by_full_sort(sampler, probs):
    """The kept set the plain way: one full stable sort, then top_k, top_p and min_p."""
    order = np.argsort(-probs, kind="stable")
    order = order[probs[order] > 0.0]
    if sampler.top_k:
        order = order[: sampler.top_k]
    if sampler.top_p < 1.0:
        cumulative = np.cumsum(probs[order])
        order = order[: int(np.searchsorted(cumulative, sampler.top_p - 1e-12, side="left")) + 1]
    if sampler.min_p > 0.0:
        order = order[probs[order] >= sampler.min_p * probs[order[0]]]
    return order


@pytest.mark.parametrize("seed", range(40))
def test_partial_sort_keeps_exactly_what_a_full_sort_keeps(seed):
    """The candidate-widening shortcut must give the full sort's kept tokens in the same order,
    including ties at the candidate boundary (quantized logits make many equal probabilities)."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([300, 5000, 65536]))
    logits = np.round(rng.normal(size=n) * rng.choice([0.5, 3.0, 12.0]), int(rng.integers(0, 3)))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    sampler = Sampler(top_k=int(rng.choice([0, 1, 40, 300, 10000])), top_p=float(rng.choice([1.0, 0.3, 0.9, 0.999])),
                      min_p=float(rng.choice([0.0, 0.0, 0.05])))
    np.testing.assert_array_equal(sampler._kept_tokens(probs), _kept_by_full_sort(sampler, probs))

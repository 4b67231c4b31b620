"""The per-model thread pool: same results as one thread, bit for bit; safe under concurrent use."""
import threading

import numpy as np
import pytest

import rwkvx
from conftest import TINY

MODELS = ("tiny-rwkv-7v0-834K-FP32.bin", "tiny-rwkv-6v0-3m-Q5_1.bin", "tiny-rwkv-4v0-660K-FP16.bin",
          "tiny-rwkv-5v2-730K-Q5_0.bin")
TOKENS = np.array([72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33], dtype=np.int32)


def load(name, threads):
    model = rwkvx.load(TINY / name)
    # tiny matrices: split even the smallest product, so the pool is really exercised
    model._core.set_threads(threads, parallel_min_bytes=0)
    return model


def run(model, tokens=TOKENS):
    logits, state = model.forward(tokens, logits="all")
    return logits, state.data


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("threads", (2, 3, 5))
def test_threads_give_identical_results(name, threads):
    one_logits, one_state = run(load(name, 1))
    many = load(name, threads)
    assert many._core.threads == threads
    for _ in range(2):  # the pool is reused across calls
        logits, state = run(many)
        np.testing.assert_array_equal(logits, one_logits)
        np.testing.assert_array_equal(state, one_state)


def test_one_token_calls_with_threads_match_one_sequence_call():
    model = load(MODELS[0], 2)
    seq_logits, seq_state = run(model)
    state = model.new_state()
    for t, token in enumerate(TOKENS):
        logits, state = model.forward(int(token), state, logits="last", inplace=True)
        np.testing.assert_array_equal(logits, seq_logits[t])
    np.testing.assert_array_equal(state.data, seq_state)


def run_concurrently(jobs):
    """Run each job in its own Python thread, several times over; return each job's results."""
    results = [[] for _ in jobs]
    errors = []

    def worker(i, job):
        try:
            for _ in range(5):
                results[i].append(job())
        except Exception as e:  # reported below: an exception in a thread would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads), "a thread did not finish"
    return results


def test_two_models_in_two_python_threads():
    a, b = load(MODELS[0], 2), load(MODELS[1], 2)
    expected_a, expected_b = run(load(MODELS[0], 1)), run(load(MODELS[1], 1))
    got_a, got_b = run_concurrently([lambda: run(a), lambda: run(b)])
    for (logits, state) in got_a:
        np.testing.assert_array_equal(logits, expected_a[0])
        np.testing.assert_array_equal(state, expected_a[1])
    for (logits, state) in got_b:
        np.testing.assert_array_equal(logits, expected_b[0])
        np.testing.assert_array_equal(state, expected_b[1])


def test_two_states_of_one_model_in_two_python_threads():
    model = load(MODELS[0], 2)
    other_tokens = TOKENS[::-1].copy()
    expected_1, expected_2 = run(model), run(model, other_tokens)
    got_1, got_2 = run_concurrently([lambda: run(model), lambda: run(model, other_tokens)])
    for got, expected in ((got_1, expected_1), (got_2, expected_2)):
        for logits, state in got:
            np.testing.assert_array_equal(logits, expected[0])
            np.testing.assert_array_equal(state, expected[1])


@pytest.mark.parametrize("bad", (0, -1, 1.5, "2"))
def test_bad_thread_counts_are_refused(bad):
    model = rwkvx.load(TINY / MODELS[0])
    with pytest.raises(ValueError, match="threads"):
        model._core.set_threads(bad)

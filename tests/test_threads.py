"""The per-model thread pool: same results as one thread, bit for bit; safe under concurrent use."""
import threading

import numpy as np
import pytest

import rwkvx
from conftest import TINY
from rwkvx.architecture import ModelShape, expected_tensors
from rwkvx.formats.quantize import quantize_file
from rwkvx.formats.writer import TensorRecord, write_rwkvcpp
from rwkvx.reference import ReferenceModel

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


# v7 with several heads: the tiny v7 model has one, so threads never split its heads
MULTI_HEAD_V7 = ModelShape("v7", 256, 256, 2, 512, 4, 64, (("w1", 32), ("a1", 32), ("v1", 32), ("g1", 32)))
# low-rank widths that are not multiples of the 16-row share grain: the products that run together in one
# pool run (r, k, v and the four first low-rank ones) then have slices that end inside a unit
ODD_LOW_RANK_V7 = ModelShape("v7", 256, 128, 2, 256, 2, 64, (("w1", 24), ("a1", 40), ("v1", 8), ("g1", 56)))


def write_random(model_shape, directory, data_type):
    """A random model file (matrices ~ N(0, 1/n_in), vectors as in bench/models.py) of data_type in
    directory."""
    rng = np.random.default_rng(7)
    records = []
    for name, shape in expected_tensors(model_shape).items():
        if len([d for d in shape if d != 1]) >= 2:
            data = rng.standard_normal(shape).astype(np.float32) / np.float32(np.sqrt(shape[-1]))
            records.append(TensorRecord(name, shape, "FP32" if name.endswith("r_k") else "FP16",
                                        data.astype(np.float32 if name.endswith("r_k") else np.float16)))
        else:
            value = {"weight": 1.0, "k_k": 1.0, "k_a": 1.0, "w0": -0.5}.get(name.rsplit(".", 1)[-1])
            data = np.full(shape, value, np.float32) if value is not None else rng.uniform(0, 0.5, shape)
            records.append(TensorRecord(name, shape, "FP32", data.astype(np.float32)))
    fp16 = directory / "FP16.bin"
    write_rwkvcpp(fp16, records, n_vocab=model_shape.n_vocab, n_embd=model_shape.n_embd,
                  n_layer=model_shape.n_layer, data_type="FP16")
    if data_type == "FP16":
        return fp16
    path = directory / f"{data_type}.bin"
    quantize_file(fp16, path, data_type)
    return path


@pytest.fixture(scope="module", params=[(MULTI_HEAD_V7, "Q5_1"), (MULTI_HEAD_V7, "Q4_0"), (MULTI_HEAD_V7, "FP16"),
                                        (ODD_LOW_RANK_V7, "FP16"), (ODD_LOW_RANK_V7, "Q8_0")],
                ids=["Q5_1", "Q4_0", "FP16", "odd-low-rank-FP16", "odd-low-rank-Q8_0"])
def multi_head_v7(request, tmp_path_factory):
    model_shape, data_type = request.param
    return write_random(model_shape, tmp_path_factory.mktemp("multi_head_v7"), data_type)


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_odd_low_rank_v7_matches_reference(tmp_path, threads):
    """The products of a v7 layer that run together (slices of each ending inside a 16-row unit) give the
    reference's logits and state, on one thread and split between several."""
    path = write_random(ODD_LOW_RANK_V7, tmp_path, "FP16")
    model = rwkvx.load(path)
    model._core.set_threads(threads, parallel_min_bytes=0)
    expected_logits, expected_state = ReferenceModel.from_file(path).forward(list(TOKENS))
    logits, state = run(model)
    assert np.ptp(expected_logits) > 1  # a model that computes something
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(state, expected_state, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", (2, 3))
def test_threads_split_heads_of_v7_identically(multi_head_v7, threads):
    """Heads (and the output product's activations each thread quantizes for its heads) split between
    threads: the same logits and state as one thread, in sequence mode and one token at a time."""
    def one_tokens(model):
        state, rows = model.new_state(), []
        for token in TOKENS:
            logits, state = model.forward(int(token), state, logits="last", inplace=True)
            rows.append(logits)
        return np.stack(rows), state.data

    one = rwkvx.load(multi_head_v7, threads=1)
    many = rwkvx.load(multi_head_v7)
    many._core.set_threads(threads, parallel_min_bytes=0)
    expected = run(one)
    assert np.all(np.isfinite(expected[0])) and np.ptp(expected[0]) > 0  # a model that computes something
    for got in (run(many), one_tokens(many)):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


# v4 to v6 layers wide enough that their recurrence is split between threads: v4 by 64 channels (4 units),
# v5 and v6 by heads (4 of them)
WIDE_V4_TO_V6 = {
    "v4": ModelShape("v4", 256, 256, 2, 512, 1, 256),
    "v5.1": ModelShape("v5.1", 256, 256, 2, 512, 4, 64),
    "v5.2": ModelShape("v5.2", 256, 256, 2, 512, 4, 64),
    "v6": ModelShape("v6", 256, 256, 2, 512, 4, 64, (("time_decay_w1", 16), ("time_maa_w1", 8))),
}


@pytest.mark.parametrize("arch", WIDE_V4_TO_V6)
def test_threads_split_the_recurrence_of_v4_to_v6_identically(tmp_path, arch):
    """The recurrence, group norm and gate split between threads by channels or heads: the reference's
    logits and state on one thread, and the same bits on 2 and 3, in sequence mode and one token at a
    time."""
    path = write_random(WIDE_V4_TO_V6[arch], tmp_path, "FP16")
    one = rwkvx.load(path, threads=1)
    assert one.arch == arch
    expected = run(one)
    reference_logits, reference_state = ReferenceModel.from_file(path).forward(list(TOKENS))
    assert np.ptp(reference_logits) > 1  # a model that computes something
    np.testing.assert_allclose(expected[0], reference_logits, rtol=0, atol=1e-4)
    # the random v5.2 layers build head states up to ~1e6, where float32 rounding alone is ~0.05
    np.testing.assert_allclose(expected[1], reference_state, rtol=1e-5, atol=1e-6 * np.abs(reference_state).max())
    for threads in (2, 3):
        many = rwkvx.load(path)
        many._core.set_threads(threads, parallel_min_bytes=0)
        state, rows = many.new_state(), []
        for token in TOKENS:
            logits, state = many.forward(int(token), state, logits="last", inplace=True)
            rows.append(logits)
        for got in (run(many), (np.stack(rows), state.data)):
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


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

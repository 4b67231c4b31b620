"""Model.forward_batch: B sequences advanced one token each in one call.

The products run over all B rows at once, but each row's recurrences use its own state, so every
output must equal decoding that sequence alone with Model.forward, bit for bit (no tolerance)."""
import numpy as np
import pytest

import rwkvx
from rwkvx.errors import BackendError, StateError, TokenError

from conftest import TINY, TINY_VERSIONS

FP32_FILES = [TINY / f"tiny-rwkv-{v}-FP32.bin" for v in TINY_VERSIONS if (TINY / f"tiny-rwkv-{v}-FP32.bin").exists()]
QUANTIZED_FILE = TINY / "tiny-rwkv-7v0-834K-Q5_1.bin"
BATCH_SIZES = (1, 2, 3, 8)
ROWS_PER_C_CHUNK = 128  # RWKVX_MAX_CHUNK in forward.c: a batch past it spans several chunks


def _histories(model, n_seq):
    """n_seq different prefixes (lengths 0, 1, 2, ... of different bytes) and the states after them."""
    prefixes = [[(17 * b + 5 * t + 1) % model.n_vocab for t in range(b % 5)] for b in range(n_seq)]
    states = [model.forward(p)[1] if p else None for p in prefixes]
    return states


def _next_tokens(model, n_seq):
    return [(31 * b + 7) % model.n_vocab for b in range(n_seq)]


def _assert_batch_equals_serial(model, n_seq, steps=2):
    states = _histories(model, n_seq)
    serial_states = list(states)
    for step in range(steps):  # a second step runs the batch on states the batch itself produced
        tokens = [(t + step) % model.n_vocab for t in _next_tokens(model, n_seq)]
        before = [None if s is None else s.data.copy() for s in states]
        logits, new_states = model.forward_batch(tokens, states)
        assert logits.dtype == np.float32 and logits.shape == (n_seq, model.n_vocab)
        assert len(new_states) == n_seq
        for b in range(n_seq):
            expected_logits, expected_state = model.forward(tokens[b], serial_states[b])
            np.testing.assert_array_equal(logits[b], expected_logits, err_msg=f"logits of sequence {b}")
            np.testing.assert_array_equal(new_states[b].data, expected_state.data, err_msg=f"state of sequence {b}")
            if states[b] is not None:  # not inplace: the caller's states are untouched
                np.testing.assert_array_equal(states[b].data, before[b])
            serial_states[b] = expected_state
        states = new_states


@pytest.mark.parametrize("path", FP32_FILES + [QUANTIZED_FILE], ids=lambda p: p.stem)
@pytest.mark.parametrize("n_seq", BATCH_SIZES)
def test_batch_equals_serial_decoding(path, n_seq):
    _assert_batch_equals_serial(rwkvx.load(path), n_seq)


def test_batch_across_chunks_equals_serial_decoding():
    model = rwkvx.load(TINY / "tiny-rwkv-7v0-834K-FP32.bin")
    _assert_batch_equals_serial(model, ROWS_PER_C_CHUNK + 3, steps=1)


@pytest.mark.parametrize("path", [TINY / "tiny-rwkv-4v0-660K-FP32.bin", QUANTIZED_FILE], ids=lambda p: p.stem)
def test_batch_with_one_thread_equals_serial_decoding(path):
    _assert_batch_equals_serial(rwkvx.load(path, threads=1), 8)


def test_inplace_updates_the_given_states():
    model = rwkvx.load(TINY / "tiny-rwkv-6v0-1m-FP32.bin")
    states = [model.forward([1, 2])[1], model.forward([3])[1]]
    expected = [model.forward(9, s)[1] for s in states]
    logits, returned = model.forward_batch([9, 9], states, inplace=True)
    for b in range(2):
        assert returned[b] is states[b]
        np.testing.assert_array_equal(states[b].data, expected[b].data)


def test_no_logits_skips_the_head_but_advances_states():
    model = rwkvx.load(TINY / "tiny-rwkv-5v2-730K-FP32.bin")
    states = _histories(model, 3)
    logits, new_states = model.forward_batch([4, 5, 6], states, logits=False)
    assert logits is None
    for b in range(3):
        np.testing.assert_array_equal(new_states[b].data, model.forward(4 + b, states[b])[1].data)


def test_bad_input_raises_rwkvx_errors():
    model = rwkvx.load(TINY / "tiny-rwkv-7v0-834K-FP32.bin")
    other = rwkvx.load(TINY / "tiny-rwkv-4v0-660K-FP32.bin")
    s = model.new_state()
    with pytest.raises(TokenError):
        model.forward_batch([1, model.n_vocab], [None, None])
    with pytest.raises(TokenError):
        model.forward_batch([1, -1], [None, None])
    with pytest.raises(TokenError):
        model.forward_batch([], [])
    with pytest.raises(TokenError):
        model.forward_batch([1.5], [None])
    with pytest.raises(TokenError):
        model.forward_batch(3, [None])
    with pytest.raises(StateError):
        model.forward_batch([1, 2], [None])
    with pytest.raises(StateError):
        model.forward_batch([1], [other.new_state()])
    with pytest.raises(StateError):
        model.forward_batch([1], [np.zeros(4, dtype=np.float32)])
    with pytest.raises(StateError):
        model.forward_batch([1, 2], [s, s], inplace=True)
    twin = rwkvx.State(s.data, s.shape)  # two State objects over one buffer
    with pytest.raises(StateError):
        model.forward_batch([1, 2], [s, twin], inplace=True)
    with pytest.raises(ValueError):
        model.forward_batch([1], [None], logits="last")


def test_gpu_offloaded_model_refuses_batching():
    model = rwkvx.load(TINY / "tiny-rwkv-7v0-834K-FP32.bin")
    model._runner = object()  # stands in for a GPU runner: batching must refuse before touching it
    with pytest.raises(BackendError, match="CPU only"):
        model.forward_batch([1], [None])

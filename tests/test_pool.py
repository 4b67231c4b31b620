"""The worker pool's runs: every item done exactly once, in ranges on the grain, whatever thread does
which; balanced runs let a thread that finishes first take over the end of another's share."""
import os
import threading

import numpy as np
import pytest

import rwkvx
from rwkvx import _core

TINY = os.path.join(os.path.dirname(__file__), "data", "tiny")


def assert_tiles(calls, n_items, grain):
    """The calls' ranges cover [0, n_items) exactly once, each starting on a multiple of grain."""
    ranges = sorted((int(b), int(e)) for b, e, _ in calls)
    assert ranges[0][0] == 0 and ranges[-1][1] == n_items
    for (b0, e0), (b1, e1) in zip(ranges, ranges[1:]):
        assert e0 == b1, f"gap or overlap between [{b0}, {e0}) and [{b1}, {e1})"
    for b, e in ranges:
        assert b < e and b % grain == 0 and (e % grain == 0 or e == n_items)


def static_shares(n_items, grain, threads):
    units = -(-n_items // grain)
    return {(units * i // threads * grain, min(units * (i + 1) // threads * grain, n_items))
            for i in range(threads)} - {(n_items, n_items)}


@pytest.mark.parametrize("balanced", (False, True))
@pytest.mark.parametrize("threads", (1, 2, 3, 4))
@pytest.mark.parametrize("n_items, grain", ((1, 1), (7, 1), (100, 16), (1000, 3), (4096, 16), (33, 64)))
def test_every_item_once_on_the_grain(balanced, threads, n_items, grain):
    for _ in range(3):
        calls = _core.pool_calls(threads, n_items, grain, balanced, spin_per_item=50)[0]
        assert_tiles(calls, n_items, grain)
        if not balanced:  # whole shares, whoever took them
            assert {(int(b), int(e)) for b, e, _ in calls} <= static_shares(n_items, grain, threads)


def test_plain_runs_hand_each_thread_one_share():
    calls = _core.pool_calls(2, 4096, 16, False, spin_per_item=200, slow_below=2048)[0]
    assert {(int(b), int(e)) for b, e, _ in calls} == {(0, 2048), (2048, 4096)}


def test_balanced_runs_share_the_end_of_a_slow_share():
    """Items of the first share cost three times as much: the thread with the second finishes first
    and takes over the end of the first, so the first share is done by both threads."""
    for attempt in range(20):
        calls = _core.pool_calls(2, 4096, 16, True, spin_per_item=2000, slow_below=2048)[0]
        assert_tiles(calls, 4096, 16)
        first_share = [(b, t) for b, e, t in calls if e <= 2048]
        if len({t for _, t in first_share}) == 2:
            # the owner starts at its front; the other thread's part of the share lies after that first piece
            # (the owner may then take back part of what was stolen: both ends are open to both)
            owner, first_end = next((t, e) for b, e, t in calls if b == 0)
            assert all(b >= first_end for b, e, t in calls if e <= 2048 and t != owner)
            return
    pytest.fail("in 20 runs the faster thread never took over part of the slower one's share")


@pytest.mark.parametrize("balanced", (False, True))
@pytest.mark.parametrize("threads", (2, 3))
def test_many_short_runs_back_to_back(balanced, threads):
    """A thread still finishing one run may take units of the next: none is lost or done twice (a lost
    one would leave the caller waiting forever, so the runs go on a thread of their own)."""
    result = []
    runner = threading.Thread(target=lambda: result.append(
        _core.pool_calls(threads, 64, 1, balanced, spin_per_item=20, runs=3000)), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "a run never finished: units were lost"
    for calls in result[0]:
        assert_tiles(calls, 64, 1)


@pytest.mark.parametrize("threads", (1, 2, 3))
@pytest.mark.parametrize("n_bytes", (1, 4095, 65535, 65536, 65537, 3 * 65536 + 5))
def test_copies_split_over_the_pool_copy_every_byte(threads, n_bytes):
    """CoreModel.copy_bytes (the load's copy of matrices that keep their layout) splits the bytes in
    64 KiB items over the threads: every byte arrives, and none past the end is written."""
    model = rwkvx.load(os.path.join(TINY, "tiny-rwkv-7v0-834K-FP32.bin"), threads=threads)
    src = np.random.default_rng(n_bytes).integers(0, 256, n_bytes + 7, dtype=np.uint8)
    out = np.zeros(n_bytes + 64, dtype=np.uint8)
    model._core.copy_bytes(src[7:], out[:n_bytes])  # an unaligned source
    assert np.array_equal(out[:n_bytes], src[7:])
    assert not out[n_bytes:].any()
    with pytest.raises(ValueError):
        model._core.copy_bytes(src[:10], out[:11])

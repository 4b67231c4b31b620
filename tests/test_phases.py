"""Step timing (phase_times.h) and bench/phases.py: absent from a normal build; in a build that times its
steps, every step of every layer is counted once per pass, and the table reports them."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY
from rwkvx import _core

BENCH = Path(__file__).resolve().parent.parent / "bench" / "phases.py"
spec = importlib.util.spec_from_file_location("phases", BENCH)
phases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(phases)

V7_LAYER_STEPS = ["layer norm, token shift, mixes (v7)", "first products: r, k, v and the low-rank inputs (v7)",
                  "low-rank second products (v7)", "heads: gates, recurrence, group norm (v7)",
                  "output product (v7)"]
FFN_STEPS = ["FFN layer norm, token shift, mix", "FFN key product, relu squared",
             "FFN value product (v4-v6: and receptance)"]

# In the timed copy: one token at a time without logits, then one call of 4 tokens with the last logits.
CHILD = r"""
import json, sys, time
import rwkvx
from rwkvx import _core
model = rwkvx.load(sys.argv[1], threads=2)
state = model.new_state()
_core.reset_phase_times()
start = time.perf_counter()
for token in (1, 2, 3):
    model.forward(token, state, logits=None, inplace=True)
one_at_a_time = time.perf_counter() - start, _core.phase_times()
_core.reset_phase_times()
model.forward([4, 5, 6, 7], state, logits="last", inplace=True)
print(json.dumps({"n_layer": model.n_layer, "decode": one_at_a_time, "call": _core.phase_times()}))
"""


def test_a_normal_build_does_not_time_its_steps():
    assert _core.phase_times() is None
    _core.reset_phase_times()  # nothing to reset, and no error


@pytest.fixture(scope="module")
def timed_copy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("timed")
    phases.build_timed_copy(directory)
    return directory


def run_timed(directory, model):
    out = subprocess.run([sys.executable, "-c", CHILD, str(model)], cwd=directory, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(directory)), check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("model, layer_steps", [
    ("tiny-rwkv-7v0-834K-Q5_1.bin", V7_LAYER_STEPS),
    ("tiny-rwkv-4v0-660K-FP32.bin", ["time mixing (v4, v5, v6: all of it)"]),
])
def test_every_step_of_every_layer_is_counted_once_a_pass(timed_copy, model, layer_steps):
    result = run_timed(timed_copy, TINY / model)
    n_layer = result["n_layer"]
    wall, steps = result["decode"]
    for step, (seconds, calls) in steps.items():
        if step in layer_steps + FFN_STEPS:
            assert calls == 3 * n_layer and seconds > 0, step
        elif step == "embedding":
            assert calls == 3, step
        else:  # another architecture's steps, and the head (no logits asked for)
            assert calls == 0 and seconds == 0, step
    assert sum(seconds for seconds, _ in steps.values()) <= wall
    call = result["call"]
    assert call["output layer norm and head"][1] == 1 and call["embedding"][1] == 1
    assert all(call[step][1] == n_layer for step in layer_steps + FFN_STEPS)


def layer_count(path):
    from rwkvx.formats import rwkvcpp

    f = rwkvcpp.open_bin(str(path))
    try:
        return 1 + max(int(name.split(".")[1]) for name in f.tensors if name.startswith("blocks."))
    finally:
        f.close()


def test_the_report_tables_the_steps(timed_copy):
    path = TINY / "tiny-rwkv-7v0-834K-Q5_1.bin"
    result = phases.measure(timed_copy, str(path), threads=2, tokens=3, calls=1, prefill_tokens=8)
    rows = {}
    for line in phases.report(str(path), result, 2, 3, 1, 8).splitlines():
        if line.startswith("| ") and "---" not in line:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    assert set(rows) == {"step", "embedding", *V7_LAYER_STEPS, *FFN_STEPS, "output layer norm and head"}
    decode_us, nolog_us, mb, rate, prefill_ms = rows["FFN key product, relu squared"]
    size = phases.weights_per_step(str(path), layer_count(path))["FFN key product, relu squared"]
    assert mb == f"{size / 1e6:.2f}"
    assert float(rate) == pytest.approx(size / (float(nolog_us) * 1e-6) / 1e9, rel=0.06)  # cells are rounded
    assert float(decode_us) > 0 and float(prefill_ms) > 0
    assert rows["embedding"][2] == rows["embedding"][3] == ""  # no weights, no rate


def test_weights_per_step_are_an_average_layer_s_matrices():
    path = TINY / "tiny-rwkv-7v0-834K-Q5_1.bin"
    from rwkvx.formats import rwkvcpp

    n_layer = layer_count(path)
    f = rwkvcpp.open_bin(str(path))
    try:
        key = sum(f.tensors[f"blocks.{i}.ffn.key.weight"].nbytes for i in range(n_layer)) / n_layer
        low_rank = sum(f.tensors[f"blocks.{i}.att.{n}"].nbytes for i in range(n_layer)
                       for n in ("w2", "a2", "g2", "v2") if f"blocks.{i}.att.{n}" in f.tensors) / n_layer
        head = f.tensors["head.weight"].nbytes
    finally:
        f.close()
    sizes = phases.weights_per_step(str(path), n_layer)
    assert sizes["FFN key product, relu squared"] == key
    assert sizes["low-rank second products (v7)"] == low_rank
    assert sizes["output layer norm and head"] == head
    assert phases.weights_per_step("model.safetensors", n_layer) == {}


def test_a_failing_child_is_reported(timed_copy, tmp_path):
    with pytest.raises(RuntimeError, match="the timed copy failed"):
        phases.measure(timed_copy, str(tmp_path / "missing.bin"), threads=2, tokens=1, calls=1, prefill_tokens=2)


def test_building_without_cython_says_what_is_missing(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "Cython" else real_find_spec(name, *args))
    with pytest.raises(RuntimeError, match="needs Cython"):
        phases.build_timed_copy(tmp_path)

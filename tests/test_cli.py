"""Every `rwkvx` command, run in a subprocess as a user would (`python -m rwkvx.cli ...`)."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import rwkvx
from rwkvx.cli import COMMANDS, DEMO_MODEL
from rwkvx.formats.rwkvcpp import RwkvCppFile
from rwkvx.generation import generate
from rwkvx.perplexity import perplexity
from rwkvx.state_io import load_state

TINY = Path(__file__).parent / "data" / "tiny"
V4 = TINY / "tiny-rwkv-4v0-660K-FP32.bin"
TIMEOUT_SECONDS = 120
# The CLI prints the perplexity with repr(), so it round-trips exactly; the independent
# computation feeds the text in one call instead of chunks (float32 rounding may differ).
PPL_RTOL = 1e-6
# SPEC.md §5: the World tokenizer's ids for this string.
WORLD_TEST_STRING = "I'll 'd test блабла 以下は、]) -> <|endoftext|><|padding|> int"
WORLD_TEST_IDS = [74, 5229, 274, 101, 32223, 5092, 27980, 2795, 27980, 33, 10399, 10258, 10139, 10079, 1682, 3463,
                  295, 125, 25258, 7588, 2318, 125, 790, 125, 49520, 125, 63, 21888]
CHAT_STOPS = ["\n\n", "\nUser:"]


def run(*args, stdin: str | None = None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    # Make the subprocess import the same rwkvx as this test process (installed or in-place build).
    env = dict(os.environ)
    package_parent = str(Path(rwkvx.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("RWKVX_PROGRESS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "rwkvx.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=TIMEOUT_SECONDS)


def assert_one_line_error(result, pattern: str):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rwkvx: error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_everywhere(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: rwkvx")


def test_every_documented_command_is_registered():
    assert {"generate", "chat", "info", "perplexity", "tokenize"} <= set(COMMANDS)


# ---- generate -----------------------------------------------------------------------------------


def test_generate_with_the_demo_model_prints_text_and_seed_reproduces_it():
    args = ["generate", "--tokens", 60, "--temperature", 1.0, "--top-p", 0.9]
    first = run(*args, "--seed", 3, "Once upon a time")
    again = run(*args, "--seed", 3, "Once upon a time")
    other = run(*args, "--seed", 4, "Once upon a time")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.strip()) > 0
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout


def test_generate_greedy_matches_the_library():
    model = rwkvx.load(V4, threads=1)
    expected = generate(model, "The ", max_tokens=50, temperature=0).text()
    result = run("generate", "--model", V4, "--tokens", 50, "--temperature", 0, "The ")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert run("generate", "-m", DEMO_MODEL, "-n", 5, "-t", 0, "x").stdout == \
        run("generate", "-n", 5, "-t", 0, "x").stdout


def test_generate_stop_string():
    model = rwkvx.load(V4, threads=1)
    full = generate(model, "The ", max_tokens=50, temperature=0).text()
    stop = full[10:13]
    result = run("generate", "-m", V4, "-n", 50, "-t", 0, "--stop", stop, "The ")
    assert result.stdout == full[: full.index(stop)] + "\n"


# ---- chat ---------------------------------------------------------------------------------------


def test_chat_keeps_state_across_turns_and_saves_resets_loads(tmp_path):
    s1, s2, s0, s3 = (tmp_path / f"{n}.state" for n in ("s1", "s2", "s0", "s3"))
    script = f"hello\n/save {s1}\nhow are you\n/save {s2}\n/reset\n/save {s0}\n/load {s1}\n/save {s3}\n" \
             f"/load {tmp_path / 'missing'}\n/nonsense\n/quit\nnever read\n"
    result = run("chat", "-m", V4, "-t", 0, "-n", 40, stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Assistant:") == 2
    assert "No such file" in result.stderr and "unknown command /nonsense" in result.stderr

    # The same conversation through the library, state carried by hand.
    model = rwkvx.load(V4, threads=1)
    turn1 = generate(model, "User: hello\n\nAssistant:", max_tokens=40, temperature=0, stop=CHAT_STOPS)
    reply1 = turn1.text()
    turn2 = generate(model, "User: how are you\n\nAssistant:", max_tokens=40, temperature=0, stop=CHAT_STOPS,
                     state=turn1.state)
    reply2 = turn2.text()
    assert result.stdout == f"Assistant:{reply1}\n\nAssistant:{reply2}\n\n"
    assert np.array_equal(load_state(s1, model).data, turn1.state.data)
    assert np.array_equal(load_state(s2, model).data, turn2.state.data)
    assert np.array_equal(load_state(s0, model).data, model.new_state().data)
    assert s3.read_bytes() == s1.read_bytes()


def test_chat_refuses_a_state_of_another_model_and_goes_on(tmp_path):
    state = tmp_path / "v4.state"
    run("chat", "-m", V4, stdin=f"/save {state}\n")
    result = run("chat", stdin=f"/load {state}\nhi\n")
    assert result.returncode == 0
    assert re.search(r"rwkvx: error: .*another model", result.stderr)
    assert "Assistant:" in result.stdout


# ---- info ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [DEMO_MODEL, V4, TINY / "tiny-rwkv-6v0-3m-Q5_0.bin"])
def test_info(path):
    result = run("info", path)
    assert result.returncode == 0, result.stderr
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines())
    source = RwkvCppFile(path)
    model = rwkvx.load(path)
    assert fields["arch"] == model.arch
    assert int(fields["n_vocab"]) == model.n_vocab and int(fields["n_embd"]) == model.n_embd
    assert int(fields["n_layer"]) == model.n_layer
    assert fields["size"].startswith(f"{os.path.getsize(path):,} bytes")
    types = Counter(t.type.name for t in source.tensors.values())
    for name, count in types.items():
        assert fields[name].startswith(f"{count} tensors"), fields
    assert int(fields["tensors"]) == sum(types.values())
    assert fields["state"].startswith(f"{4 * model.new_state().data.size:,} bytes")
    assert "memory" in fields


@pytest.mark.parametrize("layers,cpu_line,gpu_line", [("4", "layers 0-7", "layers 8-11"),
                                                        ("all", None, "layers 0-11"), ("0", "layers 0-11", None)])
def test_info_prints_the_offload_plan(layers, cpu_line, gpu_line):
    result = run("info", DEMO_MODEL, "--offload", layers, "--max-memory", "100")
    assert result.returncode == 0, result.stderr
    plan = result.stdout[result.stdout.index("offload plan"):]
    if cpu_line:
        assert re.search(rf"{cpu_line}\s+on cpu", plan), plan
    if gpu_line:
        assert re.search(rf"{gpu_line}\s+on cuda:0", plan), plan
    assert re.search(r"head\s+on " + ("cuda:0" if gpu_line else "cpu"), plan), plan
    assert "copies per call" in plan


def test_info_rejects_a_bad_offload_value():
    result = run("info", DEMO_MODEL, "--offload", "many")
    assert result.returncode == 2 and "layer count" in result.stderr and "Traceback" not in result.stderr


# ---- perplexity ---------------------------------------------------------------------------------


def independent_perplexity(model, tokens) -> float:
    logits, _ = model.forward(tokens[:-1], logits="all")
    x = logits.astype(np.float64)
    m = x.max(axis=1)
    nll = m + np.log(np.exp(x - m[:, None]).sum(axis=1)) - x[np.arange(len(tokens) - 1), tokens[1:]]
    return math.exp(nll.mean())


def test_perplexity_equals_the_library_and_an_independent_computation(tmp_path):
    text = (TINY / "README.md").read_bytes()
    path = tmp_path / "text.txt"
    path.write_bytes(text)
    result = run("perplexity", V4, path, "--chunk", 50)
    assert result.returncode == 0, result.stderr
    printed = float(re.search(r"^perplexity (\S+)$", result.stdout, re.M).group(1))
    assert math.isfinite(printed)
    assert re.search(r"tokens/s", result.stdout)
    model = rwkvx.load(V4, threads=1)
    assert printed == perplexity(model, text, chunk=50)
    assert printed == pytest.approx(independent_perplexity(model, list(text)), rel=PPL_RTOL)
    assert "[" not in result.stderr  # no progress bar when stderr is not a terminal


def test_perplexity_progress_bar_when_forced(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes((TINY / "README.md").read_bytes())
    result = run("perplexity", V4, path, "--chunk", 64, "--progress")
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr and "tok/s" in result.stderr
    limited = run("perplexity", V4, path, "--limit", 10)
    assert "tokens 10 (9 predicted)" in limited.stdout


def test_perplexity_errors(tmp_path):
    one = tmp_path / "one.txt"
    one.write_bytes(b"x")
    assert_one_line_error(run("perplexity", V4, one), "at least 2 tokens")
    assert_one_line_error(run("perplexity", V4, tmp_path / "absent.txt"), "No such file")


# ---- tokenize -----------------------------------------------------------------------------------


def test_tokenize():
    text = "héllo wörld"
    by_bytes = run("tokenize", "--tokenizer", "bytes", text)
    assert by_bytes.returncode == 0, by_bytes.stderr
    assert by_bytes.stdout.split() == [str(b) for b in text.encode("utf-8")]
    assert run("tokenize", "--model", V4, text).stdout == by_bytes.stdout
    world = run("tokenize", WORLD_TEST_STRING)
    assert world.stdout.split() == [str(i) for i in WORLD_TEST_IDS]
    pieces = run("tokenize", "--tokenizer", "bytes", "--pieces", "é").stdout.splitlines()
    assert pieces == ["195\tb'\\xc3'", "169\tb'\\xa9'"]


def test_tokenize_20b_matches_hugging_face():
    tokenizers = pytest.importorskip("tokenizers")
    from rwkvx.tokenizer import NEOX20B_PATH

    text = "Hello world, this is RWKV."
    expected = tokenizers.Tokenizer.from_file(str(NEOX20B_PATH)).encode(text).ids
    assert run("tokenize", "--tokenizer", "20b", text).stdout.split() == [str(i) for i in expected]


# ---- errors -------------------------------------------------------------------------------------


def test_errors_are_one_line_with_exit_status_2(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    assert_one_line_error(run("info", tmp_path / "absent.bin"), "absent.bin")
    assert_one_line_error(run("info", junk), "not an rwkv.cpp model file")
    assert_one_line_error(run("generate", "--model", junk, "hi"), "not an rwkv.cpp model file")
    assert_one_line_error(run("generate", "--top-p", 1.5, "hi"), "top_p")
    assert_one_line_error(run("generate", "--temperature", -1, "hi"), "temperature")
    bad_args = run("generate", "--tokens", 0, "hi")
    assert bad_args.returncode == 2 and "Traceback" not in bad_args.stderr

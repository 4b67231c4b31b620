"""Two builds of rwkvx on one model, timed in alternation: python bench/compare_builds.py MODEL A B

A and B are checkouts with their extensions built in place (`python setup.py build_ext --inplace`; a
second checkout is one `git worktree add`). Each runs in a process of its own that loads MODEL once and
then times a window of work whenever told to; the two take turns, window after window (ABBA...), and
the ratio B/A of each pair of neighbouring windows is kept. On a machine whose speed comes in phases of
seconds (a shared VM: the same build's decoding has measured 20-30% apart between runs a minute apart),
two separate runs compare the phases they happened to meet; pairs of windows a second apart meet the
same phase, and their median ratio is what a change is worth. It is not a benchmark of the machine: see
run.py for that.

Modes: `nolog` decodes one token per call without logits, `logits` with them, `prefill` runs calls of
--prefill-tokens tokens. Prints each build's median window and the median of the pair ratios with its
quartiles (below 1: B is faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

# The timed side: loads the model, then for each line n on stdin times n calls and prints ms per call.
CHILD = r"""
import sys, time
import rwkvx
path, mode, threads, prefill_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = rwkvx.load(path, threads=threads)
state = model.new_state()
prompt = [(7 * i + 100) % model.n_vocab for i in range(prefill_tokens)]
logits = "last" if mode == "logits" else None
def call(i):
    if mode == "prefill":
        model.forward(prompt, logits=None)
    else:
        model.forward(i % model.n_vocab, state, logits=logits, inplace=True)
for i in range(3):
    call(i)
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    start = time.perf_counter()
    for i in range(n):
        call(i)
    print((time.perf_counter() - start) / n * 1e3, flush=True)
"""


def start(checkout: Path, model: str, mode: str, threads: int, prefill_tokens: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    child = subprocess.Popen([sys.executable, "-c", CHILD, model, mode, str(threads), str(prefill_tokens)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if child.stdout.readline().strip() != "ready":
        child.kill()
        child.wait()
        raise SystemExit(f"{checkout}: the model did not load (its error is above; is the extension built there?)")
    return child


def window(child: subprocess.Popen, calls: int) -> float:
    child.stdin.write(f"{calls}\n")
    child.stdin.flush()
    return float(child.stdout.readline())


def compare(model: str, a: Path, b: Path, mode: str = "nolog", calls: int | None = None, rounds: int = 30,
            threads: int = 2, prefill_tokens: int = 128) -> tuple[int, list[float], list[float]]:
    """(calls per window, A's windows, B's windows) in ms per call, window i of A beside window i of B."""
    children = []
    try:
        children = [start(a, model, mode, threads, prefill_tokens)]
        children.append(start(b, model, mode, threads, prefill_tokens))
        calls = calls or max(1, round(1000.0 / window(children[0], 3)))
        times = ([], [])
        for r in range(rounds):
            for side in ((0, 1) if r % 2 == 0 else (1, 0)):  # ABBA: neither side always goes first
                times[side].append(window(children[side], calls))
    finally:
        for child in children:
            child.stdin.close()
            child.wait()
    return calls, times[0], times[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model file (.bin, .pth, .safetensors)")
    parser.add_argument("a", type=Path, help="checkout A (the baseline)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--mode", choices=("nolog", "logits", "prefill"), default="nolog")
    parser.add_argument("--calls", type=int, default=None,
                        help="calls per window (default: about a second of decoding or prefill)")
    parser.add_argument("--rounds", type=int, default=30, help="window pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    if args.rounds < 4:
        parser.error("--rounds must be at least 4 (the quartiles need them)")

    calls, times_a, times_b = compare(args.model, args.a, args.b, args.mode, args.calls, args.rounds, args.threads,
                                      args.prefill_tokens)
    ratios = [b / a for a, b in zip(times_a, times_b)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(f"{Path(args.model).name} {args.mode}, {args.rounds} pairs of {calls} calls: "
          f"A {statistics.median(times_a):.2f} ms, B {statistics.median(times_b):.2f} ms per call; "
          f"B/A median {statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a token's time goes, step by step: python bench/phases.py MODEL [MODEL ...]

Builds a copy of rwkvx whose forward pass times each step of a layer (rwkvx/_kernels/phase_times.h:
the products, the elementwise work between them, the head), by default in a temporary directory (about
a minute; --build DIR keeps and reuses it). Then, for each model, a fresh process of that copy decodes
--tokens tokens one at a time (with logits, then without) and runs --calls prefill calls of
--prefill-tokens tokens without logits, and this prints the wall time of each step: per layer for a
layer's steps (the calling thread's view: a step that runs on the pool lasts until its last thread is
done), per call for the embedding and the head. For product steps of an rwkv.cpp file it adds the
weights the step reads in an average layer and the rate it reads them at when decoding. With --build,
the copy is kept and rebuilt only where the sources changed.

A step's timer is one clock read (vDSO clock_gettime, tens of ns) where it ends: a few µs a token at
most; for figures against the bandwidth bound use run.py, which times the normal build.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout, if rwkvx is not installed
sys.path.insert(0, str(REPO / "bench"))
from build_copy import build_copy  # noqa: E402
from rwkvx.formats import rwkvcpp  # noqa: E402

HEAD_STEP = "output layer norm and head"

# Weights each product step reads, as tensor names within a layer (v7: the steps of time_mix_v7 and
# channel_mix; "head" is the model's head).
STEP_TENSORS = {
    "first products: r, k, v and the low-rank inputs (v7)":
        ["att.receptance.weight", "att.key.weight", "att.value.weight", "att.w1", "att.a1", "att.g1", "att.v1"],
    "low-rank second products (v7)": ["att.w2", "att.a2", "att.g2", "att.v2"],
    "output product (v7)": ["att.output.weight"],
    "FFN key product, relu squared": ["ffn.key.weight"],
    "FFN value product (v4-v6: and receptance)": ["ffn.value.weight", "ffn.receptance.weight"],
}

CHILD = r"""
import json, sys
import rwkvx
from rwkvx import _core
path = sys.argv[1]
threads, tokens, calls, prefill_tokens = map(int, sys.argv[2:6])
if _core.phase_times() is None:
    raise SystemExit("this build does not time its steps")
model = rwkvx.load(path, threads=threads)
state = model.new_state()
prompt = [(7 * i + 100) % model.n_vocab for i in range(prefill_tokens)]
result = {"n_layer": model.n_layer}
for name, logits in (("decode", "last"), ("decode_nolog", None)):
    for i in range(10):
        model.forward(i, state, logits=logits, inplace=True)
    _core.reset_phase_times()
    for i in range(tokens):
        model.forward((11 * i + 3) % model.n_vocab, state, logits=logits, inplace=True)
    result[name] = _core.phase_times()
model.forward(prompt, logits=None)
_core.reset_phase_times()
for i in range(calls):
    model.forward(prompt, logits=None)
result["prefill"] = _core.phase_times()
print(json.dumps(result))
"""


def build_timed_copy(directory: Path) -> None:
    """rwkvx copied to directory, its C core rebuilt there with the steps timed (build_copy.py)."""
    build_copy(directory, {"RWKVX_PHASE_TIMES": "1"})


def weights_per_step(path: str, n_layer: int) -> dict:
    """{step name: bytes an average layer's step reads}, for rwkv.cpp files; {} for other formats."""
    if not path.endswith(".bin"):
        return {}
    f = rwkvcpp.open_bin(path)
    try:
        sizes = {}
        for step, names in STEP_TENSORS.items():
            total = sum(f.tensors[f"blocks.{i}.{n}"].nbytes for i in range(n_layer) for n in names
                        if f"blocks.{i}.{n}" in f.tensors)
            if total:
                sizes[step] = total / n_layer
        sizes[HEAD_STEP] = f.tensors["head.weight"].nbytes
        return sizes
    finally:
        f.close()


RUNS = ("decode", "decode_nolog", "prefill")


def per_call(result: dict, run: str, step: str) -> float | None:
    seconds, calls = result[run][step]
    return seconds / calls if calls else None


def table(path: str, result: dict, prefill_tokens: int) -> str:
    """A markdown table of one model's steps: time per call of each step in each run, the weights a product
    step reads and how fast it reads them when decoding (the head with logits, the others without)."""
    weights = weights_per_step(path, result["n_layer"])
    rows = [f"| step | decode µs | without logits µs | weights MB | GB/s | prefill-{prefill_tokens} ms |",
            "|---|---|---|---|---|---|"]
    for step in result["decode"]:
        times = {run: per_call(result, run, step) for run in RUNS}
        if all(t is None for t in times.values()):
            continue  # a step of another architecture
        decoding = times["decode" if step == HEAD_STEP else "decode_nolog"]
        size = weights.get(step)
        rate = f"{size / decoding / 1e9:.1f}" if size and decoding else ""
        cells = [f"{times[run] * scale:.1f}" if times[run] is not None else ""
                 for run, scale in (("decode", 1e6), ("decode_nolog", 1e6))]
        prefill = f"{times['prefill'] * 1e3:.2f}" if times["prefill"] is not None else ""
        rows.append(f"| {step} | {cells[0]} | {cells[1]} | {f'{size / 1e6:.2f}' if size else ''} | {rate} | {prefill} |")
    return "\n".join(rows)


def total_seconds(result: dict, run: str) -> float:
    """All steps of a run: what its calls took, less the Python around them."""
    return sum(seconds for seconds, _ in result[run].values())


def measure(directory: Path, path: str, threads: int, tokens: int, calls: int, prefill_tokens: int) -> dict:
    """One model's step times, in a fresh process of the timed copy in directory (see CHILD). Raises
    RuntimeError with the child's error output if it fails."""
    # run in the copy's directory: `python -c` puts the working directory first on sys.path
    child = subprocess.run([sys.executable, "-c", CHILD, str(Path(path).resolve()), str(threads), str(tokens),
                            str(calls), str(prefill_tokens)],
                           cwd=directory, env=dict(os.environ, PYTHONPATH=str(directory)), capture_output=True,
                           text=True)
    if child.returncode != 0:
        raise RuntimeError(f"{path}: the timed copy failed:\n{child.stderr}")
    return json.loads(child.stdout)


def report(path: str, result: dict, threads: int, tokens: int, calls: int, prefill_tokens: int) -> str:
    return (f"{Path(path).name}, {threads} threads: the steps add up to "
            f"{total_seconds(result, 'decode') / tokens * 1e3:.2f} ms a token "
            f"({total_seconds(result, 'decode_nolog') / tokens * 1e3:.2f} without logits) and "
            f"{total_seconds(result, 'prefill') / calls * 1e3:.1f} ms a prefill call of {prefill_tokens} tokens; "
            "µs and ms below are per layer, the embedding's and the head's per call\n\n"
            + table(path, result, prefill_tokens))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--tokens", type=int, default=500, help="tokens decoded, with and without logits")
    parser.add_argument("--calls", type=int, default=10, help="prefill calls")
    parser.add_argument("--prefill-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", help="directory for the timed copy, kept and reused (default: a temporary one)")
    args = parser.parse_args(argv)

    directory = Path(args.build) if args.build else Path(tempfile.mkdtemp(prefix="rwkvx-phases-"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        print(f"building a copy of rwkvx that times its steps in {directory} ...", file=sys.stderr, flush=True)
        build_timed_copy(directory)
        for path in args.models:
            result = measure(directory, path, args.threads, args.tokens, args.calls, args.prefill_tokens)
            print("\n" + report(path, result, args.threads, args.tokens, args.calls, args.prefill_tokens))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        if not args.build:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

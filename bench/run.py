"""rwkvx speed benchmark: python bench/run.py [--models v7-0.1B,v7-1.5B] [--types FP16,Q8_0] [--threads N]

Generates (or reuses) random-weight models with real shapes in bench/models/ (see models.py), measures
memory read bandwidth in the same run, then for each model file, in a fresh process (so peak RSS and
load time are its own), times:
  decode   ms per token, one token per call, with and without logits (serial decoding)
  prefill  tokens/s for one call of 128 and of 512 tokens (the median call of at least PREFILL_MIN_SECONDS)
  8-seq    aggregate tokens/s of 8 sequences decoding together (Model.forward_batch, with logits)
  load     seconds of rwkvx.load with its defaults (on AVX2 and AVX-512: one pass packing the quantized
           weights, plus the disk reads of a file not in the page cache) and the
           process's peak RSS (VmHWM of the child itself: ru_maxrss would also count the parent's probe
           buffer, which Linux carries across exec)
  mmap     seconds of rwkvx.load(path, pack=False), which maps the file and reads only its tensor table
           and vectors, in another fresh process: first with the file's pages dropped from the page
           cache (posix_fadvise DONTNEED; "cold", first imports included), then again ("warm")
and prints them beside the bound: bytes read per token / bandwidth, and the ratio decode / bound
(1.00 = streaming weights at the measured bandwidth). The bandwidth is measured for each model on a
buffer as large as the bytes one token reads (capped at 1 GiB), streamed again and again as decoding
does: a CPU whose last-level cache holds part of a small model serves those bytes faster than DRAM,
and a probe on one huge buffer would then call decoding faster than possible. It is measured before
and after each model's run and, in the model's process, in turns with more decoding windows; the best
figure is kept: on a shared machine a probe that happens to run in a busy moment would otherwise
understate the bandwidth and flatter the ratio. The 'paired' column is a second ratio, taken where the
machine's bandwidth comes in phases: the median over PAIRED_WINDOWS pairs of a decoding window and a
probe window of PAIR_SECONDS each, side by side, each pair's own ratio (see paired_ratios). Where the
bandwidth is steady both ratios agree; where it has fast phases shorter than the run, the best-of
ratio compares decoding's average with the probe's fastest moment and overstates the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the checkout, if rwkvx is not installed
from models import DATA_TYPES, SHAPES, bytes_read_per_token, ensure_model  # noqa: E402

BANDWIDTH_BUFFER_MAX_BYTES = 1 << 30  # beyond it, only DRAM bandwidth is measured anyway
PROBE_PASS_BYTES = 1 << 30  # bytes streamed per timed probe pass (the buffer, again and again)
PREFILL_LENGTHS = (128, 512)
PREFILL_MIN_SECONDS = 1.5  # of prefill calls per length, at least (see time_prefill)
# How the probe reads, taken in turn and the best kept: (bytes ahead prefetched into L1, into L2, 0 for
# not; parts of each thread's slice read side by side; bytes of the slice read that way at a time, 0 for
# all of it). A plain read, the products' own distances, longer ones, and 4 parts at once as the AVX2 float
# products read a matrix, over the whole slice or window by window as the products read one matrix after
# another: on one machine a plain read has read 21-23 GB/s while the same buffer read with prefetches read
# 26-29, on another (AMD EPYC, Zen 3) 4 parts side by side read faster than one stream, and faster again
# within windows of a few MB (see memprobe.c); a bound from a weaker reader than the products flatters.
PROBE_WINDOW = 4 << 20
PROBE_WAYS = ((0, 0, 1, 0), (2048, 4096, 1, 0), (4096, 8192, 1, 0), (0, 0, 4, 0), (256, 1024, 4, 0),
              (0, 0, 4, PROBE_WINDOW), (256, 1024, 4, PROBE_WINDOW))
PROBE_TURNS = 3  # bandwidth probes taken in turn with decoding, in the model's own process
WARMUP_TOKENS = 3
DECODE_WINDOWS = 4
BATCH_SEQUENCES = 8  # the "8-seq t/s" column
PAIRED_WINDOWS = 12  # decode / probe window pairs of the "paired" ratio
PAIR_SECONDS = 0.25


class ReadProbe:
    """`threads` threads each streaming its own contiguous slice of one buffer of n_bytes (capped at
    BANDWIDTH_BUFFER_MAX_BYTES), as decoding streams each matrix; the buffer is kept between readings."""

    def __init__(self, threads: int, n_bytes: int):
        n_bytes = min(n_bytes, BANDWIDTH_BUFFER_MAX_BYTES)
        self.buf = np.ones(n_bytes, dtype=np.uint8)  # ones: every page really allocated
        step = n_bytes // threads // 64 * 64
        self.slices = [self.buf[i * step:(i + 1) * step] for i in range(threads)]
        self.pass_bytes_per_sweep = step * threads
        # each thread streams its slice several times per timed pass, so that starting and joining the
        # threads (a fraction of a millisecond) stays far below 1% of what is timed even for small models
        self.sweeps = max(1, -(-PROBE_PASS_BYTES // self.pass_bytes_per_sweep))
        self.one_pass(PROBE_WAYS[0])  # brings the buffer to the state decoding sees

    def one_pass(self, way) -> float:
        """Seconds of one timed pass (every thread its slice, `sweeps` times)."""
        from rwkvx import _core

        def stream(part):
            for _ in range(self.sweeps):
                _core.read_bytes(part, *way)

        workers = [threading.Thread(target=stream, args=(s,)) for s in self.slices]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - start

    def best(self, repeats: int = 8, min_seconds: float = 0.25) -> float:
        """Best GB/s of single passes: at least `repeats` passes of each way of reading
        (PROBE_WAYS) and min_seconds of them (a small model's pass takes milliseconds, and one
        busy moment of the machine must not pass for its bandwidth)."""
        best, attempt, began = 0.0, 0, time.perf_counter()
        while attempt < repeats * len(PROBE_WAYS) or time.perf_counter() - began < min_seconds:
            seconds = self.one_pass(PROBE_WAYS[attempt % len(PROBE_WAYS)])
            best = max(best, self.sweeps * self.pass_bytes_per_sweep / seconds / 1e9)
            attempt += 1
        return best

    def window(self, seconds: float) -> float:
        """GB/s over passes for about `seconds`, the ways of reading (PROBE_WAYS) taken in turn
        pass by pass: the best way's total bytes over its total time."""
        elapsed = [0.0] * len(PROBE_WAYS)
        passes = [0] * len(PROBE_WAYS)
        while sum(elapsed) < seconds or min(passes) == 0:
            way = sum(passes) % len(PROBE_WAYS)
            elapsed[way] += self.one_pass(PROBE_WAYS[way])
            passes[way] += 1
        return max(n * self.sweeps * self.pass_bytes_per_sweep / t / 1e9 for n, t in zip(passes, elapsed))


def measure_read_bandwidth(threads: int, n_bytes: int, repeats: int = 8, min_seconds: float = 0.25) -> float:
    """Best GB/s of single probe passes over a buffer of n_bytes (ReadProbe.best)."""
    return ReadProbe(threads, n_bytes).best(repeats, min_seconds)


def peak_rss_mb() -> float:
    """This process's own peak resident set (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def time_decode(model, n_tokens: int, logits) -> float:
    """Seconds per token, one token per call, state updated in place: the best of DECODE_WINDOWS
    windows of n_tokens // DECODE_WINDOWS tokens (other processes on a shared machine only add time)."""
    state = model.new_state()
    for t in range(WARMUP_TOKENS):
        model.forward(t, state, logits=logits, inplace=True)
    per_window = max(1, n_tokens // DECODE_WINDOWS)
    best = float("inf")
    for w in range(DECODE_WINDOWS):
        start = time.perf_counter()
        for t in range(per_window):
            model.forward((w * per_window + t) % model.n_vocab, state, logits=logits, inplace=True)
        best = min(best, (time.perf_counter() - start) / per_window)
    return best


def time_batch_decode(model, n_tokens: int, n_seq: int = BATCH_SEQUENCES) -> float:
    """Aggregate tokens per second of n_seq sequences decoding together (one forward_batch call advances
    each by one token, logits included): the best of DECODE_WINDOWS windows of n_tokens // DECODE_WINDOWS
    steps each, after WARMUP_TOKENS steps, states updated in place."""
    states = [model.new_state() for _ in range(n_seq)]
    tokens = np.arange(n_seq) % model.n_vocab
    for _ in range(WARMUP_TOKENS):
        model.forward_batch(tokens, states, inplace=True)
    per_window = max(1, n_tokens // DECODE_WINDOWS)
    best = float("inf")
    for w in range(DECODE_WINDOWS):
        start = time.perf_counter()
        for t in range(per_window):
            step = (tokens + w * per_window + t) % model.n_vocab
            model.forward_batch(step, states, inplace=True)
        best = min(best, (time.perf_counter() - start) / per_window)
    return n_seq / best


def decode_for(model, state, seconds: float, logits="last") -> float:
    """Seconds per token of decoding (one token per call, state updated in place) for about `seconds`."""
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n == 0:
        model.forward(n % model.n_vocab, state, logits=logits, inplace=True)
        n += 1
    return (time.perf_counter() - start) / n


def paired_ratios(model, probe: ReadProbe, per_token: int) -> list[float]:
    """Ratios to the bound of decoding (with logits) and the bandwidth probe measured in alternate
    windows of PAIR_SECONDS each, one ratio per pair: this machine's bandwidth comes in phases (a
    plain 2-thread read here runs at ~33 GB/s for tens of seconds, then ~45-53 for about a second),
    and a best-of probe of short passes catches the fast phases that longer decoding windows average
    over; a pair measures both in the same moment. The order within a pair alternates."""
    state = model.new_state()
    decode_for(model, state, 0.05)  # warm
    ratios = []
    for pair in range(PAIRED_WINDOWS):
        if pair % 2 == 0:
            seconds_per_token = decode_for(model, state, PAIR_SECONDS)
            gbs = probe.window(PAIR_SECONDS)
        else:
            gbs = probe.window(PAIR_SECONDS)
            seconds_per_token = decode_for(model, state, PAIR_SECONDS)
        ratios.append(seconds_per_token / (per_token / (gbs * 1e9)))
    return ratios


def time_prefill(model, length: int, repeats: int = 3, min_seconds: float = PREFILL_MIN_SECONDS) -> float:
    """Tokens per second of one call with `length` tokens (logits of the last one): the median call of at
    least `repeats` and min_seconds of them. A v7 0.1B call takes ~0.1 s, and on a shared machine the speed
    of a few calls moves by more than a change is worth: the best of three gave 985-1267 tokens/s for v7
    0.1B Q4_0 in three runs of one afternoon, the best of 1.5 s of calls up to 1856 for Q8_0, a fast moment
    rather than the machine's speed."""
    tokens = np.arange(length, dtype=np.int32) % model.n_vocab
    model.forward(tokens[:8])  # warm the mapping and the pool
    seconds, began = [], time.perf_counter()
    while len(seconds) < repeats or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        model.forward(tokens)
        seconds.append(time.perf_counter() - start)
    return length / statistics.median(seconds)


def measure_one(path: str, threads: int, n_tokens: int) -> dict:
    """Everything about one model file; run in its own process."""
    import rwkvx
    from rwkvx import _core

    start = time.perf_counter()
    model = rwkvx.load(path, threads=threads)
    load_s = time.perf_counter() - start
    model._core.set_threads(threads)
    out = {
        "load_s": load_s,
        "isa": _core.active_isa(),
        "threads": model._core.threads,
        "ms_logits": time_decode(model, n_tokens, "last") * 1e3,
        "ms_no_logits": time_decode(model, n_tokens, None) * 1e3,
        "batch_tps": time_batch_decode(model, n_tokens),
    }
    for length in PREFILL_LENGTHS:
        out[f"prefill_{length}"] = time_prefill(model, length)
    out["peak_rss_mb"] = peak_rss_mb()  # before the probe's buffer below
    # decoding and the bandwidth probe in turns, each side's best kept: on a shared machine the memory
    # bandwidth changes from second to second, and the ratio should compare like moments
    per_token = bytes_read_per_token(path)
    reader = ReadProbe(threads, per_token)
    probe = 0.0
    for _ in range(PROBE_TURNS):
        probe = max(probe, reader.best(repeats=4, min_seconds=0.1))
        out["ms_logits"] = min(out["ms_logits"], time_decode(model, n_tokens, "last") * 1e3)
    out["probe_gbs"] = probe
    ratios = sorted(paired_ratios(model, reader, per_token))
    out["paired_ratio"] = ratios[len(ratios) // 2]  # the median (the upper one of an even count)
    return out


def measure_mmap_load(path: str) -> dict:
    """Seconds of rwkvx.load(path, pack=False) with the file not in the page cache, then in it; run in
    its own process. Cold is None where the OS cannot be asked to drop a file's pages."""
    import rwkvx

    cold = None
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean, unmapped pages: all of them here
        finally:
            os.close(fd)
        start = time.perf_counter()
        rwkvx.load(path, pack=False)
        cold = time.perf_counter() - start
    start = time.perf_counter()
    rwkvx.load(path, pack=False)
    return {"cold_s": cold, "warm_s": time.perf_counter() - start}


def run_child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)


def rwkv_pypi_note() -> str:
    import importlib.util

    if importlib.util.find_spec("rwkv") is None:
        return "rwkv (PyPI) not installed: no comparison run"
    return "rwkv (PyPI) installed, but it needs a .pth checkpoint; comparison not run on random .bin files"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="v4-169M,v7-0.1B,v7-1.5B", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--types", default=",".join(DATA_TYPES), help=f"of {', '.join(DATA_TYPES)}")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one file, print JSON
    parser.add_argument("--mmap-load", help=argparse.SUPPRESS)  # internal: time its mapped load, print JSON
    args = parser.parse_args(argv)

    from rwkvx.cpu import cpu_info, physical_cores

    threads = args.threads or physical_cores()
    if args.one:
        print(json.dumps(measure_one(args.one, threads, args.tokens)))
        return 0
    if args.mmap_load:
        print(json.dumps(measure_mmap_load(args.mmap_load)))
        return 0

    info = cpu_info()
    print(f"# {info['model_name']}, {info['physical_cores']} cores; kernels {info['active']}; threads {threads}")
    print(f"# memory read bandwidth: {threads} threads, measured per model on a buffer of its bytes per token "
          f"(at most {BANDWIDTH_BUFFER_MAX_BYTES >> 20} MiB); column 'probe GB/s'")
    print(f"# {rwkv_pypi_note()}")
    header = ("model", "type", "MB/tok", "load s", "RSS MB", "mmap s cold/warm", "ms/tok", "ms/tok nolog", "pf128 t/s", "pf512 t/s",
              "8-seq t/s", "GB/s", "probe GB/s", "bound ms", "ratio", "paired")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model in args.models.split(","):
        for data_type in args.types.split(","):
            path = ensure_model(model, data_type, log=lambda m: print(f"# {m}", file=sys.stderr))
            per_token = bytes_read_per_token(path)
            bandwidth_before = measure_read_bandwidth(threads, per_token)
            mapped = run_child("--mmap-load", str(path))
            result = run_child("--one", str(path), "--threads", str(threads), "--tokens", str(args.tokens))
            failed = next((r for r in (mapped, result) if r.returncode != 0), None)
            if failed is not None:
                print(f"| {model} | {data_type} | failed: {failed.stderr.strip().splitlines()[-1:]} |")
                continue
            r, m = json.loads(result.stdout), json.loads(mapped.stdout)
            cold = "n/a" if m["cold_s"] is None else f"{m['cold_s']:.3f}"
            # the best probe, before, during and after the model's run: the machine's bandwidth, not a busy
            # moment's
            bandwidth = max(bandwidth_before, r["probe_gbs"], measure_read_bandwidth(threads, per_token))
            bound_ms = per_token / (bandwidth * 1e9) * 1e3
            streamed = per_token / (r["ms_logits"] / 1e3) / 1e9  # GB/s of weights, logits included
            row = (model, data_type, f"{per_token / 1e6:.0f}", f"{r['load_s']:.3f}", f"{r['peak_rss_mb']:.0f}",
                   f"{cold}/{m['warm_s']:.3f}", f"{r['ms_logits']:.2f}", f"{r['ms_no_logits']:.2f}", f"{r['prefill_128']:.0f}",
                   f"{r['prefill_512']:.0f}", f"{r['batch_tps']:.0f}", f"{streamed:.1f}", f"{bandwidth:.1f}",
                   f"{bound_ms:.2f}", f"{r['ms_logits'] / bound_ms:.2f}", f"{r['paired_ratio']:.2f}")
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

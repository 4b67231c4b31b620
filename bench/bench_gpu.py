"""GPU offload benchmark: serial ms/token and prefill tokens/s, for offload none / layers only /
layers + head, with logits on and off.

    python bench/bench_gpu.py MODEL.bin [--threads N] [--tokens 64] [--prompt 512] [--device 0]

Prints each configuration's plan (bytes on the device, crossings per call), then a table. The time
floor of serial decoding is (bytes streamed per token) / (bandwidth); the table prints the GB/s of
weights streamed per token next to each time so runs on different GPUs compare.

Status: written without access to a GPU and NOT run yet; no figures exist for it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _configs():
    from rwkvx.offload import Offload

    return {"cpu only": None, "layers only": Offload(layers="all", head=False),
            "layers + head": Offload(layers="all", head=True)}


def _serial(model, n_tokens: int, logits):
    state = model.new_state()
    token = np.array([0], dtype=np.int32)
    model.forward(token, state, logits=logits, inplace=True)  # warm-up: uploads, kernel JIT
    start = time.perf_counter()
    for i in range(n_tokens):
        model.forward(np.array([i % model.n_vocab], dtype=np.int32), state, logits=logits, inplace=True)
    return (time.perf_counter() - start) / n_tokens


def _prefill(model, n_tokens: int, logits):
    tokens = (np.arange(n_tokens) % model.n_vocab).astype(np.int32)
    model.forward(tokens[:8], logits=logits)
    start = time.perf_counter()
    model.forward(tokens, logits=logits)
    return n_tokens / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=64, help="serial tokens timed")
    parser.add_argument("--prompt", type=int, default=512, help="prefill length")
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)

    import rwkvx
    from rwkvx.cuda import gpu_info

    info = gpu_info()
    print("GPU:", info["devices"] if info["available"] else info["reason"])
    rows = []
    for name, policy in _configs().items():
        if policy is not None:
            policy.device = args.device
        model = rwkvx.load(args.model, threads=args.threads, offload=policy)
        plan = getattr(model, "offload_plan", None)
        print(f"\n== {name}\n{plan.describe() if plan is not None else 'all on the CPU'}")
        layer_bytes = sum(t.nbytes for n, t in model.source.tensors.items() if n.startswith("blocks."))
        for logits in ("last", None):
            streamed = layer_bytes + (model.source.tensors["head.weight"].nbytes if logits else 0)
            ms = _serial(model, args.tokens, logits) * 1e3
            tps = _prefill(model, args.prompt, logits)
            rows.append((name, "on" if logits else "off", ms, streamed / (ms * 1e-3) / 1e9, tps))
    print(f"\n{'offload':<15}{'logits':<8}{'ms/token':>10}{'GB/s':>8}{'prefill tok/s':>15}")
    for name, logits, ms, gbs, tps in rows:
        print(f"{name:<15}{logits:<8}{ms:>10.2f}{gbs:>8.1f}{tps:>15.1f}")


if __name__ == "__main__":
    main()

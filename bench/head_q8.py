"""What storing the head in Q8_0 costs in accuracy: python bench/head_q8.py

For each tiny FP32 model: quantize it to Q5_1 twice (rwkvx.quantize), once keeping the head as it is
(FP32, as rwkv.cpp does) and once with head="Q8_0", then compare the two models' logits at every
position of a text: max |difference| of token probabilities, mean KL divergence of the softmax, how often the most likely
token agrees, and the perplexity of each on the text. The speed side (fewer bytes per token) is in
bench/run.py's table for the Q8_0-head files of the real-shape models.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, if rwkvx is not installed
import rwkvx  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny"
VERSIONS = ("4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K")
TEXT = (b"In the beginning was the Word, and the Word was with God. The quick brown fox jumps over the "
        b"lazy dog; RWKV is an RNN with transformer-level performance. ") * 4


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(version: str, body: str, workdir: Path) -> dict:
    src = TINY / f"tiny-rwkv-{version}-FP32.bin"
    plain, q8_head = workdir / f"{version}-{body}.bin", workdir / f"{version}-{body}-headQ8.bin"
    rwkvx.quantize(src, plain, body)
    rwkvx.quantize(src, q8_head, body, head="Q8_0")
    # The tiny v6 models were trained on UTF-16-LE bytes, the others on UTF-8.
    tokens = list(TEXT.decode().encode("utf-16-le") if version.startswith("6v0") else TEXT)
    a = log_softmax(rwkvx.load(plain).forward(tokens, logits="all")[0])
    b = log_softmax(rwkvx.load(q8_head).forward(tokens, logits="all")[0])
    targets = np.array(tokens[1:])
    nll = lambda lp: -lp[np.arange(len(targets)), targets].mean()  # noqa: E731
    return {
        "max_abs_prob_diff": float(np.abs(np.exp(a) - np.exp(b)).max()),
        "mean_kl": float((np.exp(a) * (a - b)).sum(axis=-1).mean()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        "ppl_head_fp32": float(np.exp(nll(a[:-1]))),
        "ppl_head_q8_0": float(np.exp(nll(b[:-1]))),
    }


def main() -> None:
    print(f"{'model':<10} {'body':<5} {'max |dp|':>9} {'mean KL':>9} {'top-1 same':>10} "
          f"{'ppl FP32 head':>13} {'ppl Q8_0 head':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for version in VERSIONS:
            for body in ("Q8_0", "Q5_1", "Q4_0"):
                r = compare(version, body, Path(tmp))
                print(f"{version:<10} {body:<5} {r['max_abs_prob_diff']:9.2e} {r['mean_kl']:9.2e} "
                      f"{r['top1_agreement']:10.1%} {r['ppl_head_fp32']:13.4f} {r['ppl_head_q8_0']:13.4f}")


if __name__ == "__main__":
    main()

"""World tokenizer speed: the C byte trie against a plain pure-Python greedy trie.

    python bench/bench_tokenizer.py [--mb 4] [--repeats 5]

Prints MB/s (of UTF-8 input) for encoding a few MB of mixed text (English, code,
Chinese, Japanese, Russian, emoji) with rwkvx's C encoder and with the
pure-Python greedy longest match, checks that both give the same ids, and prints
the ratio. Also prints decode speed and the one-off vocabulary load time.
"""
import argparse
import platform
import random
import time
from pathlib import Path

from rwkvx.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SEED = 0
SNIPPETS = [
    "The quick brown fox jumps over the lazy dog, and RWKV runs on your CPU at many tokens a second. ",
    "以下是一个关于人工智能的简短介绍。机器学习模型可以生成文本、翻译语言，并回答问题。",
    "以下は、日本語の文章です。東京は晴れ、カタカナとひらがなを混ぜて書きます。",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
    "😀 👍🏽 🇯🇵 👨‍👩‍👧‍👦 ❤️ 🎉 ✅ ",
    "    for (size_t i = 0; i < n; i++) {\n        y[i] += a * x[i];\n    }\n",
]


def mixed_text(n_bytes):
    """About n_bytes of UTF-8: repo sources and multilingual snippets, interleaved at random."""
    rng = random.Random(SEED)
    sources = [p.read_text(encoding="utf-8") for p in sorted((REPO / "rwkvx").rglob("*.py"))]
    sources += [p.read_text(encoding="utf-8") for p in sorted((REPO / "rwkvx").rglob("*.c"))]
    pieces, size = [], 0
    while size < n_bytes:
        if rng.random() < 0.5 and sources:
            source = rng.choice(sources)
            start = rng.randrange(len(source))
            piece = source[start:start + rng.randint(100, 3000)]
        else:
            piece = rng.choice(SNIPPETS) * rng.randint(1, 8)
        pieces.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(pieces)


def python_trie(token_bytes):
    root = {}
    for token_id, data in enumerate(token_bytes):
        if data:
            node = root
            for byte in data:
                node = node.setdefault(byte, {})
            node[-1] = token_id
    return root


def python_encode(root, data):
    """Greedy longest match, the straightforward way."""
    ids, pos, n = [], 0, len(data)
    while pos < n:
        node, best, i = root, None, pos
        while i < n:
            node = node.get(data[i])
            if node is None:
                break
            i += 1
            if -1 in node:
                best = (node[-1], i)
        ids.append(best[0])
        pos = best[1]
    return ids


def best_seconds(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="size of the test text in MB")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the C encoder (best is kept)")
    args = parser.parse_args()

    text = mixed_text(int(args.mb * 1e6))
    data = text.encode("utf-8")
    megabytes = len(data) / 1e6
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    print(f"text: {megabytes:.2f} MB of UTF-8, {len(text):,} characters")

    start = time.perf_counter()
    tok = Tokenizer.world()
    tok.encode("warm up")  # parses the vocabulary and builds the trie
    print(f"World vocabulary load (parse + build trie, once per process): {time.perf_counter() - start:.3f} s")

    vocab = tok._loaded()
    ids = tok.encode(text)
    c_seconds = best_seconds(lambda: tok.encode(text), args.repeats)
    decode_seconds = best_seconds(lambda: tok.decode(ids), args.repeats)

    root = python_trie(vocab.token_bytes)
    start = time.perf_counter()
    python_ids = python_encode(root, data)
    python_seconds = time.perf_counter() - start
    if python_ids != ids:
        raise SystemExit("MISMATCH: the C encoder and the pure-Python greedy encoder disagree")

    print(f"tokens: {len(ids):,} ({len(data) / len(ids):.2f} bytes/token)")
    print(f"encode, C trie (Tokenizer.encode):         {megabytes / c_seconds:8.2f} MB/s")
    print(f"encode, pure-Python greedy trie:             {megabytes / python_seconds:8.2f} MB/s")
    print(f"ratio C / Python:                            {python_seconds / c_seconds:8.1f}x")
    print(f"decode (ids -> str):                         {megabytes / decode_seconds:8.2f} MB/s")


if __name__ == "__main__":
    main()

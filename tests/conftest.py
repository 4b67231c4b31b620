import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny"

# (version, architecture) of every tiny model shipped in tests/data/tiny
TINY_VERSIONS = {
    "4v0-660K": "v4",
    "5v1-730K": "v5.1",
    "5v2-730K": "v5.2",
    "6v0-1m": "v6",
    "6v0-3m": "v6",
    "7v0-834K": "v7",
}


def tiny_model_files():
    """Every shipped tiny model file, as (version, format, path)."""
    out = []
    for path in sorted(TINY.glob("tiny-rwkv-*.bin")):
        version, fmt = path.stem[len("tiny-rwkv-"):].rsplit("-", 1)
        out.append((version, fmt, path))
    return out


def pytest_report_header(config):
    try:
        import rwkvx

        info = rwkvx.cpu_info()
        gpu = "yes" if info["gpu"]["available"] else "none"
        return (f"rwkvx kernels: active {info['active']}, supported {', '.join(info['supported'])}, "
                f"compiled {', '.join(info['compiled'])}; GPU: {gpu}")
    except Exception as e:  # the header must never break collection
        return f"rwkvx kernels: unavailable ({e})"

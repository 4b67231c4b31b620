"""`python -m rwkvx`: print what rwkvx can run on here.

Each entry of SECTIONS is (title, function returning text); other backends
(GPU, ...) add theirs to the list.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


def _cpu_section() -> str:
    from .cpu import format_cpu_info

    return format_cpu_info()


def _gpu_section() -> str:
    from .cuda import gpu_info

    info = gpu_info()
    if not info["available"]:
        return f"none: {info['reason']}"
    return "\n".join(f"cuda:{d['index']}  {d['name']}, compute capability {d['compute_capability'][0]}."
                     f"{d['compute_capability'][1]}, {d['total_memory'] / 2**30:.1f} GiB" for d in info["devices"])


SECTIONS: list[tuple[str, Callable[[], str]]] = [("CPU kernels", _cpu_section), ("GPU offload", _gpu_section)]


def main() -> int:
    from . import __version__

    print(f"rwkvx {__version__} (Python {sys.version.split()[0]})")
    for title, section in SECTIONS:
        print(f"\n[{title}]")
        try:
            print(section())
        except Exception as e:  # a broken backend must not hide the others
            print(f"unavailable: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

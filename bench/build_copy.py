"""A copy of rwkvx whose C core is rebuilt with one of setup.py's build switches (environment variables):
RWKVX_PHASE_TIMES=1 (bench/phases.py: a core that times each step of a layer) or RWKVX_EMULATE_AVX512=1
(tests/test_avx512_emulated.py: AVX-512 kernels that run on a CPU without AVX-512).

The copy holds rwkvx's Python files and the checkout's other extensions, which no switch changes; only
_core is compiled (about a minute). A copy directory that already holds a build is rebuilt only where
the sources changed.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_copy(directory: Path, switches: dict, extra_dirs: tuple = ()) -> None:
    """rwkvx copied to directory (with the checkout's extra_dirs, e.g. headers a switch needs), its C core
    rebuilt there with the environment variables in switches. Raises RuntimeError with the build's output
    if that fails."""
    if importlib.util.find_spec("Cython") is None:
        raise RuntimeError("building a copy of rwkvx needs Cython: pip install cython")
    directory = Path(directory)
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(REPO / name, directory / name)
    shutil.copytree(REPO / "rwkvx", directory / "rwkvx", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "_core*.so"))
    for extra in extra_dirs:
        shutil.copytree(REPO / extra, directory / extra, dirs_exist_ok=True)
    # the other extensions do not depend on the switches: the checkout's own builds serve, if it has them
    others_built = all(list((directory / "rwkvx").glob(f"{name}*.so")) for name in ("_quantize", "_tokenizer"))
    env = dict(os.environ, **switches, RWKVX_BUILD_ONLY="_core" if others_built else "")
    run = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=directory, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"building a copy of rwkvx in {directory} with {switches} failed:\n"
                           f"{run.stdout}{run.stderr}")

"""Build the rwkvx C core.

Kernel sources live in rwkvx/_kernels/. A file's ISA is its name suffix:
`*_ref.c` and other plain files are portable C built with baseline flags only;
`*_avx2.c`, `*_avx512.c`, `*_neon.c` are built each with its own flags (never
-march=native), so a wheel built here runs on any CPU of its architecture and
the dispatcher picks the variant at run time.
"""
import glob
import importlib.util
import os
import platform

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = os.path.join("rwkvx", "_kernels")
# -fno-trapping-math: nothing here reads floating-point exception flags, and without it GCC keeps
# loops with a comparison-and-select (exp_poly.h's range patches) scalar. It changes no result.
BASE_FLAGS = ["-O3", "-std=c11", "-fno-strict-aliasing", "-fno-trapping-math", "-Wall", "-Wno-unused-function"]

# Per-ISA flags, applied to one file family each. Only the families that make
# sense on the build machine's architecture are compiled.
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mavx512vnni"],
    "neon": [],  # NEON is baseline on aarch64
}
# Flags for single files, after their family's. GCC 12 schedules the AVX2 packed products' 4-token tiles
# (16 ymm registers for a column's codes, sums and broadcasts) without regard to register pressure and
# spills 60-70 vectors per block column; scheduling before allocation with an eye on pressure keeps
# them in registers. bench/compare_builds.py, v7 0.1B prefill of 128 tokens, 20 window pairs each:
# Q4_0 0.869 and 0.865 of the time without, Q8_0 0.949, Q5_1 0.968; decoding unchanged (0.99). Not
# for the whole family: there the float products lose (v7 0.1B FP16 prefill 579-630 -> 359-478 t/s).
FILE_FLAGS = {
    "matmul_packed_avx2.c": ["-fschedule-insns", "-fsched-pressure"],
}
# RWKVX_EMULATE_AVX512=1 builds a test copy whose AVX-512 files run on a CPU without AVX-512: compiled
# with the AVX2 family's flags against tests/avx512_emulation/immintrin.h, which implements the
# AVX-512 intrinsics with SIMDe (Debian's libsimde-dev), and dispatch.c counts the level as usable
# wherever AVX2 is (tests/test_avx512_emulated.py). Never for a build that is installed. -O1: SIMDe's
# expansion of matmul_avx512.c takes GCC 12 70 s at -O3, 10 s at -O1, and emulation checks what the
# kernels compute, not how fast.
EMULATE_AVX512 = os.environ.get("RWKVX_EMULATE_AVX512") == "1"
if EMULATE_AVX512:
    ISA_FLAGS["avx512"] = ISA_FLAGS["avx2"] + ["-O1", "-Wno-psabi", "-I" + os.path.join("tests", "avx512_emulation")]
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
IS_ARM64 = platform.machine().lower() in ("aarch64", "arm64")
ISA_ENABLED = {"avx2": IS_X86, "avx512": IS_X86, "neon": IS_ARM64}


ISA_SOURCES = {}  # extension name -> {isa: [C files]}, filled by kernel_extension()


def isa_of(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    suffix = stem.rsplit("_", 1)[-1]
    return suffix if suffix in ISA_FLAGS else None


class BuildExtWithIsaFiles(build_ext):
    """Compiles each ISA-specific C file with only its own flags, then links it in."""

    def build_extension(self, ext):
        isa_sources = ISA_SOURCES.get(ext.name, {})  # by name: cythonize() returns new Extension objects
        objects = []
        for isa, sources in isa_sources.items():
            for source in sources:
                objects += self.compiler.compile(
                    [source],
                    output_dir=self.build_temp,
                    include_dirs=ext.include_dirs,
                    macros=[("RWKVX_BUILD_" + isa.upper(), "1")],
                    extra_postargs=BASE_FLAGS + ["-fPIC"] + ISA_FLAGS[isa]
                    + FILE_FLAGS.get(os.path.basename(source), []),
                    depends=ext.depends,
                )
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def kernel_extension(name, pyx, c_glob):
    """An extension module: a Cython wrapper plus the C files matching c_glob under rwkvx/_kernels/."""
    portable, by_isa = [], {}
    for path in sorted(glob.glob(os.path.join(KERNELS, c_glob))):
        isa = isa_of(path)
        if isa is None:
            portable.append(path)
        elif ISA_ENABLED[isa]:
            by_isa.setdefault(isa, []).append(path)
    compiled = [isa for isa in by_isa]
    # RWKVX_PHASE_TIMES=1 builds a copy that times each step of a layer (phase_times.h; bench/phases.py)
    timed = [("RWKVX_PHASE_TIMES", "1")] if os.environ.get("RWKVX_PHASE_TIMES") == "1" else []
    emulated = [("RWKVX_AVX512_EMULATED", "1")] if EMULATE_AVX512 and "avx512" in by_isa else []
    ext = Extension(
        name,
        sources=[pyx] + portable,
        include_dirs=[KERNELS, numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        + [("RWKVX_HAVE_" + isa.upper(), "1") for isa in compiled] + timed + emulated,
        extra_compile_args=BASE_FLAGS,
        extra_link_args=["-lpthread"],
        # ISA files are compiled outside `sources`; listing them here makes a change to one relink.
        depends=glob.glob(os.path.join(KERNELS, "**", "*.h"), recursive=True)
        + [path for paths in by_isa.values() for path in paths],
    )
    ISA_SOURCES[name] = by_isa
    return ext


# rwkvx/_core.pyx wraps the C files directly in rwkvx/_kernels/; any other
# rwkvx/_<name>.pyx wraps the C files of rwkvx/_kernels/<name>/.
extensions = []
for pyx in sorted(glob.glob(os.path.join("rwkvx", "_*.pyx"))):
    module = os.path.splitext(os.path.basename(pyx))[0]
    c_glob = "*.c" if module == "_core" else os.path.join(module[1:], "*.c")
    extensions.append(kernel_extension("rwkvx." + module, pyx, c_glob))
# RWKVX_BUILD_ONLY=_tokenizer,_quantize builds just those modules (handy while developing one).
only = [m for m in os.environ.get("RWKVX_BUILD_ONLY", "").split(",") if m]
if only:
    extensions = [e for e in extensions if e.name.split(".")[-1] in only]


def build_cuda_kernels():
    """Ship the CUDA sources and, when nvcc exists, their PTX (GPU offload is optional: never fatal)."""
    spec = importlib.util.spec_from_file_location("build_ptx", os.path.join("rwkvx", "cuda", "build_ptx.py"))
    build_ptx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_ptx)  # by path: importing the rwkvx package here would need it built
    try:
        build_ptx.build()
    except (RuntimeError, OSError) as e:
        print(f"rwkvx: warning: CUDA kernels not compiled to PTX ({e}); PyCUDA will compile them at first use")


build_cuda_kernels()

setup(
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"boundscheck": False, "wraparound": False}),
    cmdclass={"build_ext": BuildExtWithIsaFiles},
)

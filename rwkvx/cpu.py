"""What the CPU kernels can use here: cpu_info() and the physical core count.

cpu_info() separates what this build compiled, what the CPU and OS support,
and what is active (chosen once at import; RWKVX_ISA=scalar|avx2|avx512|neon
forces a level and an unknown or unsupported value fails the import).
"""
from __future__ import annotations

import os
import platform


def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); at least 1.

    Counts distinct (package, core) pairs of the allowed CPUs in Linux sysfs; elsewhere,
    or if sysfs is unreadable, falls back to the number of logical CPUs.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as f:
                package = f.read().strip()
            with open(base + "core_id") as f:
                core = f.read().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores))


def _model_name() -> str:
    for line in _cpuinfo_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """A dict describing the CPU kernels:

    machine, model_name, logical_cpus, physical_cores,
    features: {name: bool} (CPUID + XCR0 on x86, HWCAP on aarch64),
    compiled: levels this build has kernels for, best first,
    supported: levels compiled and runnable here, best first,
    active: the level in use, forced: the RWKVX_ISA value that forced it (None: automatic),
    emulated: levels whose kernels run through emulation (only in a test build; empty otherwise).
    """
    from . import _core

    return {
        "machine": platform.machine(),
        "model_name": _model_name(),
        "logical_cpus": os.cpu_count() or 1,
        "physical_cores": physical_cores(),
        "features": _core.cpu_features(),
        "compiled": _core.compiled_isas(),
        "supported": _core.supported_isas(),
        "active": _core.active_isa(),
        "forced": _core.FORCED_ISA,
        "emulated": _core.emulated_isas(),
    }


def format_cpu_info(info: dict | None = None) -> str:
    """cpu_info() as a few human-readable lines."""
    info = cpu_info() if info is None else info
    present = [name for name, has in info["features"].items() if has]
    emulated = info["emulated"]

    def levels(names):
        return ", ".join(f"{name} (emulated: a test build)" if name in emulated else name for name in names)

    return "\n".join([
        f"cpu:       {info['model_name']} ({info['machine']}, {info['physical_cores']} physical cores, "
        f"{info['logical_cpus']} logical CPUs)",
        f"features:  {' '.join(present) or '(none detected)'}",
        f"compiled:  {levels(info['compiled'])}",
        f"supported: {levels(info['supported'])}",
        f"active:    {info['active']}" + (f" (forced by RWKVX_ISA={info['forced']})" if info["forced"] else ""),
    ])

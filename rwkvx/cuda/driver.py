"""Finding PyCUDA, the driver and a device: the only place the GPU backend imports pycuda.

Every function imports pycuda when called, never at module import, so `import rwkvx` (and even
`import rwkvx.cuda.driver`) works on machines without it.
"""
from __future__ import annotations

from .errors import GPUUnavailableError


def import_pycuda_driver():
    """pycuda.driver, initialised; GPUUnavailableError says whether PyCUDA or the driver is missing."""
    try:
        import pycuda  # noqa: F401
    except ImportError as exc:
        raise GPUUnavailableError("pycuda", f"PyCUDA is not installed ({exc})") from None
    try:
        import pycuda.driver as drv
    except ImportError as exc:  # pycuda._driver links libcuda.so.1, which the NVIDIA driver provides
        raise GPUUnavailableError("driver", f"PyCUDA is installed but cannot load the CUDA driver ({exc})") from None
    try:
        drv.init()
    except Exception as exc:  # pycuda.driver.Error subclasses; the driver explains (no device, too old, ...)
        text = str(exc)
        missing = "device" if "no CUDA-capable device" in text or "NO_DEVICE" in text else "driver"
        raise GPUUnavailableError(missing, f"cuInit failed: {text}") from None
    return drv


def device(index: int):
    """pycuda.driver.Device(index), after checking it exists."""
    drv = import_pycuda_driver()
    count = drv.Device.count()
    if count == 0:
        raise GPUUnavailableError("device", "the NVIDIA driver reports no CUDA device")
    if not 0 <= index < count:
        raise GPUUnavailableError("device", f"CUDA device {index} does not exist ({count} found: 0..{count - 1})")
    return drv.Device(index)


def free_memory(index: int) -> int:
    """Free bytes on device `index` (opens and closes a context)."""
    ctx = device(index).make_context()
    try:
        return int(import_pycuda_driver().mem_get_info()[0])
    finally:
        ctx.pop()


def gpu_info() -> dict:
    """What `rwkvx.cpu_info()` / `python -m rwkvx` report about GPUs; never raises.

    {"available": bool, "devices": [{"index", "name", "compute_capability", "total_memory"}], "reason": str}
    """
    try:
        drv = import_pycuda_driver()
        devices = []
        for i in range(drv.Device.count()):
            d = drv.Device(i)
            devices.append({"index": i, "name": d.name(), "compute_capability": d.compute_capability(),
                            "total_memory": d.total_memory()})
    except GPUUnavailableError as exc:
        return {"available": False, "devices": [], "reason": str(exc)}
    if not devices:
        return {"available": False, "devices": [], "reason": "the NVIDIA driver reports no CUDA device"}
    return {"available": True, "devices": devices, "reason": ""}

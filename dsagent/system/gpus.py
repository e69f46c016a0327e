"""The one place dsagent reads GPUs: nvidia-ml-py when importable, else nothing.

Honours ``CUDA_VISIBLE_DEVICES`` (``Settings.cuda_visible``: indices or ``GPU-`` UUIDs). On a
machine without NVIDIA GPUs or without nvidia-ml-py, ``visible_gpus()`` returns an empty tuple.
Nothing is imported at module load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import Settings

__all__ = ["Gpu", "GpuUnknown", "detect_device", "memory_holders", "ram_available", "visible_gpus"]

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    """One visible GPU, sizes in GiB (``total_gib`` as vLLM sees it)."""

    index: int
    name: str
    total_gib: float
    free_gib: float
    uuid: str = ""


def _filter(gpus: list[Gpu], visible: str | None) -> list[Gpu]:
    if visible is None:
        return gpus
    chosen: list[Gpu] = []
    for item in (v.strip() for v in visible.split(",")):
        if not item:
            continue
        if item.isdigit():
            chosen.extend(g for g in gpus if g.index == int(item))
        else:
            chosen.extend(g for g in gpus if g.uuid and g.uuid.startswith(item))
    return chosen


def _from_nvml(nvml: Any) -> list[Gpu]:
    nvml.nvmlInit()
    try:
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:  # v2 reports the driver's reservation; CUDA (and vLLM) see total - reserved
                mem = nvml.nvmlDeviceGetMemoryInfo(h, version=nvml.nvmlMemory_v2)
            except Exception:  # older driver or nvidia-ml-py, or a fake without v2
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
            total = mem.total - int(getattr(mem, "reserved", 0) or 0)
            name = nvml.nvmlDeviceGetName(h)
            uuid = nvml.nvmlDeviceGetUUID(h)
            out.append(Gpu(i, name.decode() if isinstance(name, bytes) else str(name), total / GIB,
                           mem.free / GIB, uuid.decode() if isinstance(uuid, bytes) else str(uuid)))
        return out
    finally:
        nvml.nvmlShutdown()


def detect_device(settings: Settings) -> str:
    """``cpu`` or ``gpu``: ``DSAGENT_DEVICE`` if set, else whether an NVIDIA device node exists."""
    forced = settings.device
    if forced:
        return forced
    return "gpu" if Path("/dev/nvidia0").exists() else "cpu"


def visible_gpus(loader: Callable[[], Any] | None = None, *, settings: Settings) -> tuple[Gpu, ...]:
    """The GPUs vLLM would see, renumbered from 0; empty when there are none or NVML is missing.

    ``loader`` returns the ``pynvml`` module (tests pass a fake).
    """
    try:
        nvml = loader() if loader else __import__("pynvml")
        gpus = _from_nvml(nvml)
    except Exception:  # no driver, no library, no GPU: all mean "nothing visible"
        return ()
    chosen = _filter(gpus, settings.cuda_visible)
    return tuple(Gpu(i, g.name, g.total_gib, g.free_gib, g.uuid) for i, g in enumerate(chosen))


class GpuUnknown(Exception):
    """NVML is there but did not answer: which process holds GPU memory is unknown (never "free")."""


_ABSENT = ("LibraryNotFound", "DriverNotLoaded", "NoPermission")


def memory_holders(loader: Callable[[], Any] | None = None) -> dict[int, float] | None:
    """GiB of GPU memory each process holds, over every GPU (compute and graphics contexts).

    ``None`` when this machine has no NVML to ask (no library, no driver): then nothing can be
    held. ``GpuUnknown`` when NVML is there but fails: the caller must not take that for free.
    ``loader`` returns the ``pynvml`` module (tests pass a fake)."""
    try:
        nvml = loader() if loader else __import__("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception as exc:
        if any(word in type(exc).__name__ for word in _ABSENT) or not Path("/dev/nvidia0").exists():
            return None
        raise GpuUnknown(f"NVML init failed: {type(exc).__name__}: {exc}") from None
    held: dict[int, float] = {}
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            for query in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
                for p in query(h):
                    used = getattr(p, "usedGpuMemory", None) or 0
                    held[p.pid] = held.get(p.pid, 0.0) + used / GIB
        return held
    except Exception as exc:
        raise GpuUnknown(f"NVML could not list the GPUs' processes: {type(exc).__name__}: {exc}") from None
    finally:
        nvml.nvmlShutdown()


def ram_available() -> int:
    """Bytes of RAM available now (what a CPU deployment may take)."""
    import psutil

    return int(psutil.virtual_memory().available)

"""gpus.py with a fake pynvml: counting, CUDA_VISIBLE_DEVICES, no-GPU machines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dsagent.settings import Settings
from dsagent.system.gpus import visible_gpus

pytestmark = pytest.mark.timeout(10)
GIB = 1024**3


class FakeNvml:
    def __init__(self, n: int = 3) -> None:
        self.n, self.shut = n, False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=int(79.18 * GIB), free=int((70 + h) * GIB))

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-aaaa-{h}"


def test_all_visible():
    fake = FakeNvml()
    gpus = visible_gpus(lambda: fake, settings=Settings.load(env={}))
    assert [g.index for g in gpus] == [0, 1, 2] and fake.shut
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].total_gib == pytest.approx(79.18)


def test_cuda_visible_devices_indices_and_uuids():
    gpus = visible_gpus(lambda: FakeNvml(), settings=Settings.load(env={"CUDA_VISIBLE_DEVICES": "2,0"}))
    assert [g.free_gib for g in gpus] == pytest.approx([72, 70]) and [g.index for g in gpus] == [0, 1]
    assert [g.uuid for g in visible_gpus(lambda: FakeNvml(), settings=Settings.load(env={"CUDA_VISIBLE_DEVICES": "GPU-aaaa-1"}))] == ["GPU-aaaa-1"]
    assert visible_gpus(lambda: FakeNvml(), settings=Settings.load(env={"CUDA_VISIBLE_DEVICES": ""})) == ()


def test_no_nvml_means_no_gpus():
    def missing():
        raise ImportError("No module named 'pynvml'")

    assert visible_gpus(missing, settings=Settings.load(env={})) == ()


class FakeNvmlV2(FakeNvml):
    """NVML's v2 memory info, as read on an H100 with driver 580: total 85520809984 bytes of which
    503316480 are reserved by the driver; CUDA (and vLLM) report 85017493504 = 79.18 GiB."""

    nvmlMemory_v2 = 2

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        if version != 2:
            return SimpleNamespace(total=85520809984, free=85520809984 - 483 * 2**20)
        return SimpleNamespace(total=85520809984, reserved=503316480, free=85017493504 - 3 * 2**20)


def test_total_is_what_cuda_sees_not_nvml_v1():
    g = visible_gpus(lambda: FakeNvmlV2(1), settings=Settings.load(env={}))[0]
    assert g.total_gib == pytest.approx(79.1787, abs=1e-4)
    assert g.free_gib == pytest.approx((85017493504 - 3 * 2**20) / GIB)  # v2's free, not v1's (which counts the reserve)

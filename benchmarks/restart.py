"""Supervised restarts on a real vLLM CPU server: kill to ready again vs a cold `up`, the time to
detect a stalled engine, and a fault run (N kills, N recoveries, orphans, lost requests).

Run: python benchmarks/restart.py [--kills 3] [--requests 3] [--home DIR] [--model NAME_OR_FOLDER]

One deployment of the embedded model (its own DSAGENT_HOME, default /tmp/dsagent-bench-restart,
so the converted model is reused between runs) under ``RestartPolicy(mode="on-failure")`` with
short checks (0.5 s interval, canary every 2 s with a 4 s deadline). Baseline, same run: the cold
`up` (model already fetched) from the call to ready. Each fault: SIGKILL of the API server while
``--requests`` LangChain calls (``local_deepseek()``, which rides through restarts) are sent
right after the kill; then the time until the deployment answers /health with a new pid, the
EngineCore processes of the old launch still alive (orphans: must be 0), and whether every
request got its answer. Last, SIGSTOP of the EngineCore (``/health`` keeps answering): the time
until the supervisor records the failure (detection), and until it is ready again.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsagent.clients.chat import local_deepseek
from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.record.store import load
from dsagent.deploy.supervise.policy import RestartPolicy
from dsagent.deploy.record.state import State
from dsagent.deploy.record.phase import live_state
from dsagent.deploy.stop import stop
from dsagent.deploy.up import up
from dsagent.settings import Settings

POLICY = RestartPolicy(mode="on-failure", backoff=0.5, max_failures=20, window=3600, interval=0.5, health_grace=5,
                       stall=6, canary_every=2, canary_deadline=4, start_timeout=600)
NAME = "bench-restart"


def _engines(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            if "EngineCore" in (p.info["name"] or "") and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return out


def _ready_again(settings: Settings, old_pid: int, bound: float = 600.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        dep = load(settings, NAME)
        if dep.pid and dep.pid != old_pid and live_state(dep) == State.READY:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit(f"not ready again within {bound} s")


def _fault(settings: Settings, llm, requests: int) -> dict:
    dep = load(settings, NAME)
    old_pid, old_pgid = dep.pid, dep.pgid
    os.kill(old_pid, signal.SIGKILL)
    t0 = time.monotonic()
    with ThreadPoolExecutor(requests) as pool:
        calls = [pool.submit(llm.invoke, "What is the capital of France?") for _ in range(requests)]
        took = _ready_again(settings, old_pid)
        answers = []
        for c in calls:
            try:
                answers.append(c.result(timeout=600).content)
            except Exception as exc:  # noqa: BLE001 - a lost request is what this counts
                answers.append(f"ERROR {type(exc).__name__}: {exc}")
    return {"ready_s": took, "orphans": len(_engines(old_pgid)), "sent": requests,
            "answered": sum(1 for a in answers if not a.startswith("ERROR")),
            "paris": sum(1 for a in answers if "Paris" in a), "wall_s": time.monotonic() - t0}


def _stall(settings: Settings) -> tuple[float, float, str]:
    dep = load(settings, NAME)
    engine = _engines(dep.pgid)[0]
    seen = len(dep.failures)
    os.kill(engine, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        while len(load(settings, NAME).failures) == seen:
            time.sleep(0.1)
        detected = time.monotonic() - t0
        ready = _ready_again(settings, dep.pid)
    finally:
        try:
            os.kill(engine, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return detected, detected + ready, load(settings, NAME).failures[-1]["reason"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3, help="LangChain calls sent right after each kill")
    ap.add_argument("--home", default="/tmp/dsagent-bench-restart")
    ap.add_argument("--model", default=None, help="default: the embedded model")
    args = ap.parse_args()
    settings = Settings.load(args.home)
    stop(all=True, settings=settings)
    from dsagent.weights.fetch import fetch

    model = args.model or str(fetch("smollm2-135m-instruct", settings=settings).path)
    t0 = time.monotonic()
    dep = up(model, options=ServeOptions(port=0, device="cpu"), name=NAME, settings=settings, restart=POLICY)
    cold = time.monotonic() - t0
    try:
        llm = local_deepseek(NAME, settings=settings, max_tokens=12, temperature=0)
        faults = [_fault(settings, llm, args.requests) for _ in range(args.kills)]
        detected, stall_back, reason = _stall(settings)
        final = load(settings, NAME)
    finally:
        stop(NAME, settings=settings)
    back = sorted(f["ready_s"] for f in faults)
    median = back[len(back) // 2]
    print(f"\nvLLM CPU, {dep.name} at {dep.base_url}; policy: check every {POLICY.interval} s, canary every "
          f"{POLICY.canary_every} s (deadline {POLICY.canary_deadline} s), backoff {POLICY.backoff} s\n")
    print(f"{'measure':52} {'value':>12} {'vs cold up':>11}")
    print(f"{'cold up (fetched model), call -> ready':52} {cold:>10.1f} s {1.0:>10.2f}x")
    for i, f in enumerate(faults, 1):
        print(f"{f'kill {i}: SIGKILL API server -> ready, new pid':52} {f['ready_s']:>10.1f} s "
              f"{f['ready_s'] / cold:>10.2f}x")
    print(f"{'kill -> ready again, median':52} {median:>10.1f} s {median / cold:>10.2f}x")
    print(f"{'stalled engine (SIGSTOP) -> failure recorded':52} {detected:>10.1f} s {detected / cold:>10.2f}x")
    print(f"{'stalled engine (SIGSTOP) -> ready again':52} {stall_back:>10.1f} s {stall_back / cold:>10.2f}x")
    sent, answered = sum(f["sent"] for f in faults), sum(f["answered"] for f in faults)
    print(f"\nfault run: {len(faults)} kills, {len(faults)} recoveries (restarts recorded: {final.restarts}), "
          f"{sum(f['orphans'] for f in faults)} orphaned engines, {sent} requests sent during restarts, "
          f"{answered} answered ({sum(f['paris'] for f in faults)} say Paris), {sent - answered} lost")
    print(f"stall detected by: {reason}")


if __name__ == "__main__":
    main()

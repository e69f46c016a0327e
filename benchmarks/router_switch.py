"""Model switch through `dsagent router` against a cold `dsagent up` of the same model, in one run.

Run: python benchmarks/router_switch.py [--rounds N] [--device cpu|gpu] [--model M]

A home of its own (the converted embedded model linked in) catalogues the model twice, as
``bench-a`` and ``bench-b``, with room for one at a time (CPU: ``--memory-gib``; GPU: the plan's
share of the card, each launched with vLLM's sleep mode). It times:

- cold up: ``dsagent up`` of the model until ready (the baseline), then ``dsagent stop``;
- first request: the router loads ``bench-a`` for its first request (time to the answer);
- switch: a request for the other name, which puts the current one away (CPU: stops it; GPU:
  sleep level 1) and loads or wakes the other; N rounds alternating;
- warm request: a request to the ready model through the router, and the same request sent
  straight to the model's vLLM server (the proxy's overhead).

Prints a table with each median and its ratio to the cold up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsagent.plan.catalog import DEFAULT_CPU_MODEL, resolve  # noqa: E402
from dsagent.router.serve import find  # noqa: E402
from dsagent.settings import Settings  # noqa: E402
from dsagent.weights.fetch import fetch  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def cli(env: dict[str, str], *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dsagent.cli", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ask(url: str, key: str, model: str) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=900,
                   json={"model": model, "messages": QUESTION, "max_tokens": 4, "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=DEFAULT_CPU_MODEL)
    ap.add_argument("--flags", default="", help="more `models add` / `up` flags, e.g. '--dummy-weights'")
    args = ap.parse_args()

    shared = Settings.load()
    home = Path(tempfile.mkdtemp(prefix="dsagent-bench-router-")) / "home"
    home.mkdir()
    if args.model == DEFAULT_CPU_MODEL:
        fetch(resolve(DEFAULT_CPU_MODEL), settings=shared)
        (home / "models").symlink_to(shared.models_dir)
    env = {**os.environ, "DSAGENT_HOME": str(home)}
    settings = Settings.load(home)
    flags = ["--device", args.device, *args.flags.split()]
    cold = []
    for _ in range(2):
        cold.append(cli(env, "up", args.model, "--name", "cold", "--port", "auto", *flags))
        cli(env, "stop", "cold")
    for name in ("bench-a", "bench-b"):
        cli(env, "models", "add", name, args.model, *flags, "--ttl", "0")
    route = ["--port", "auto", "--wait", "900"]
    if args.device == "cpu":
        from dsagent.router.catalogue import load
        from dsagent.router.engines import VllmEngines

        route += ["--memory-gib", str(round(VllmEngines(settings).need(load(settings)[0]).host * 1.5, 2))]
    cli(env, "router", "start", *route)
    info = find(settings)
    assert info is not None
    key = settings.api_key()
    try:
        first = ask(info.base_url, key, "bench-a")
        switches, names = [], ["bench-b", "bench-a"] * args.rounds
        for name in names:
            switches.append(ask(info.base_url, key, name))
        warm = [ask(info.base_url, key, names[-1]) for _ in range(5)]
        direct_url = httpx.get(f"{info.base_url}/models", headers={"Authorization": f"Bearer {key}"}).json()
        url = next(m["url"] for m in direct_url["data"] if m["id"] == names[-1])
        direct = [ask(f"{url}/v1", key, names[-1]) for _ in range(5)]
        loads = {m["id"]: (m["loads"], m["wakes"]) for m in direct_url["data"]}
    finally:
        cli(env, "router", "stop")

    base = statistics.median(cold)
    rows = [("cold `dsagent up` (baseline)", base), ("router: first request (load + answer)", first),
            ("router: switch (put away + load/wake + answer)", statistics.median(switches)),
            ("router: request to a ready model", statistics.median(warm)),
            ("same request straight to vLLM", statistics.median(direct))]
    print(f"\ndevice {args.device}, model {args.model}, {args.rounds * 2} switches; loads/wakes {loads}\n")
    print(f"{'what':50} {'median s':>10} {'vs cold up':>11}")
    for what, secs in rows:
        print(f"{what:50} {secs:>10.3f} {secs / base:>10.3f}x")


if __name__ == "__main__":
    main()

"""Launch-to-ready time: `dsagent up` vs a bare vLLM launch of the same model and flags.

Run: python benchmarks/startup.py [--repeat N]
Each round starts the embedded default with `dsagent up` (the whole command: estimate, store
check, engine check, launch, readiness), stops it, then launches the exact argv and environment
dsagent used, bare, polling /health. It also times attaching to a running deployment (a second
`dsagent up`, and `dsagent.attach()` in-process). Prints a table with ratios.
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

from dsagent.system.procs import all_processes, end_processes, spawn
from dsagent.deploy.record.store import load
from dsagent.settings import Settings  # noqa: E402


def cli(*args: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dsagent.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bare(argv: list[str], env: dict[str, str], port: int, log: Path) -> float:
    t0 = time.perf_counter()
    proc = spawn(argv, env, log)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"bare vLLM exited; see {log}")
            time.sleep(0.5)
    finally:
        end_processes([p for p in all_processes() if p.pgid == proc.pid])  # the bare server's own group


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dsagent-bench-"))
    env = {**os.environ, "DSAGENT_HOME": str(home), "DSAGENT_DEVICE": "cpu"}
    settings = Settings.load(home)
    cli("fetch", "smollm2-135m-instruct", env=env)  # conversion is not what is timed
    ups, bares, reattach, attach_lib = [], [], [], []
    for _ in range(args.repeat):
        ups.append(cli("up", "--port", "auto", env=env))
        dep = load(settings, "smollm2-135m-instruct")
        assert dep is not None
        reattach.append(cli("up", "--port", "auto", env=env))
        os.environ["DSAGENT_HOME"] = str(home)
        import dsagent

        t0 = time.perf_counter()
        dsagent.attach(settings=settings)
        attach_lib.append(time.perf_counter() - t0)
        cli("stop", dep.name, env=env)
        bare_env = {**os.environ, **dep.env, "DSAGENT_DEPLOYMENT": "bench-bare",
                    "VLLM_API_KEY": settings.api_key()}
        bares.append(bare(dep.argv, bare_env, dep.port, home / "bare.log"))
    up_s, bare_s = statistics.median(ups), statistics.median(bares)
    print(f"\nembedded default on CPU, {args.repeat} round(s), median seconds (vLLM {dep.vllm_version})\n")
    print(f"{'what':46} {'seconds':>8} {'ratio':>8}")
    print(f"{'bare vLLM launch -> /health 200 (baseline)':46} {bare_s:8.2f} {1.0:8.2f}")
    print(f"{'dsagent up (whole command) -> ready':46} {up_s:8.2f} {up_s / bare_s:8.2f}")
    print(f"{'dsagent up on a running deployment (attach)':46} {statistics.median(reattach):8.2f} "
          f"{statistics.median(reattach) / bare_s:8.3f}")
    print(f"{'dsagent.attach() in-process':46} {statistics.median(attach_lib):8.3f} "
          f"{statistics.median(attach_lib) / bare_s:8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

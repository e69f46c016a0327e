"""DP=2 over two CPU "nodes" of this machine: each node's worker in its engine process (dsagent)
against a worker process of its own beside each engine (vLLM-CPU's default).

Run: python benchmarks/cpu_dp_nodes_start.py [--repeat N]

The head is rank 0 at 127.0.0.1 on core 0, the other node rank 1 at 127.0.0.2 on core 1, each with
a home of its own, the embedded model; the node is started with the `dsagent join` command the head
printed, as in tests/test_multinode.py. Each round starts the deployment two ways:

- vLLM-CPU's default: `VLLM_ENABLE_V1_MULTIPROCESSING=1` in both nodes' environment (dsagent leaves
  a value the user set alone): each engine spawns a worker process that imports torch and vLLM once
  more and that the engine busy-polls;
- dsagent's choice (``argv.IN_PROCESS_WORKER``): one replica per node, so each node's one worker
  runs inside its engine process.

It measures seconds from `up` to ready (the join included), the processes and resident memory of
both nodes, the CPU seconds both nodes' processes used to get there, decoding speed (128 tokens
each, `ignore_eos`, 8 requests at once, spread over both replicas) and one greedy answer, then stops
the head (the node follows). Prints a table of medians with ratios to the default, so a faster start
that answers wrongly shows.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpu_single_start import ask as chat, print_table  # noqa: E402
import psutil  # noqa: E402

from dsagent.deploy.launch.options import ServeOptions  # noqa: E402
from dsagent.deploy.launch.spawn import wait  # noqa: E402
from dsagent.deploy.record.identity import processes_of  # noqa: E402
from dsagent.deploy.record.store import load  # noqa: E402
from dsagent.deploy.stop import stop  # noqa: E402
from dsagent.deploy.up import up  # noqa: E402
from dsagent.settings import Settings  # noqa: E402
from dsagent.system.ports import free_ports  # noqa: E402
from dsagent.weights.fetch import fetch  # noqa: E402

BASELINE = "a worker process per engine (vLLM-CPU's default)"
WAYS = [(BASELINE, "1"), ("worker in each engine (dsagent)", None)]
VAR = "VLLM_ENABLE_V1_MULTIPROCESSING"
CORES = sorted(os.sched_getaffinity(0))
HEAD_CORE, NODE_CORE = CORES[0], CORES[min(1, len(CORES) - 1)]


def cpu_seconds(deps) -> tuple[float, int, float]:
    """CPU seconds, process count and resident GiB of every process of ``deps``."""
    cpu = rss = 0.0
    n = 0
    for dep in deps:
        for p in processes_of(dep):
            try:
                proc = psutil.Process(p.pid)
                t = proc.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                rss += proc.memory_info().rss
                n += 1
            except psutil.Error:
                pass
    return cpu, n, rss / 2**30


def one_round(model: str, root: Path, value: str | None) -> dict[str, float | str]:
    if value is None:
        os.environ.pop(VAR, None)
    else:
        os.environ[VAR] = value
    head_home, node_home = Settings.load(root / "head"), Settings.load(root / "node")
    opts = ServeOptions(port=0, device="cpu", dp=2, nodes=2, node_ip="127.0.0.1", master_port=free_ports(count=3),
                        cpus=(HEAD_CORE,))
    t0 = time.perf_counter()
    head = up(model, options=opts, name="dpbench", settings=head_home, wait_ready=False, peers=("127.0.0.2",))
    try:
        argv = shlex.split(head.nodes[1]["join"])
        env = {**os.environ, "DSAGENT_HOME": str(node_home.home)}
        out = subprocess.run([sys.executable, "-m", "dsagent.cli", *argv[1:], "--cpus", str(NODE_CORE),
                              "--timeout", "600"], env=env, capture_output=True, text=True, timeout=700)
        if out.returncode != 0:
            raise RuntimeError(f"join failed:\n{out.stderr[-2000:]}")
        head = wait(head, head_home, timeout=600)
        ready = time.perf_counter() - t0
        node = load(node_home, "dpbench")
        cpu, procs, gib = cpu_seconds([head, node])
        chat(head, 4)  # the first request's one-time costs are not decoding
        t1 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            done = sum(n for n, _ in pool.map(lambda _: chat(head, 128), range(8)))
        tps = done / (time.perf_counter() - t1)
        answer = chat(head, 16, "What is the capital of France?")[1]
        return {"ready s": ready, "CPU s to ready": cpu, "procs": procs, "GiB": gib, "tok/s x8": tps,
                "answer": answer}
    finally:
        stop("dpbench", settings=head_home)
        deadline = time.monotonic() + 60
        while (node := load(node_home, "dpbench")) and processes_of(node) and time.monotonic() < deadline:
            time.sleep(0.5)
        if node and processes_of(node):
            stop("dpbench", settings=node_home)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND"):
        os.environ.pop(var, None)
    root = Path(tempfile.mkdtemp(prefix="dsagent-bench-dp-"))
    models = Settings.load(root / "models-home")
    model = str(fetch("smollm2-135m-instruct", settings=models).path)  # conversion is not part of any start
    cols = ("ready s", "CPU s to ready", "procs", "GiB", "tok/s x8")
    got: dict[str, dict[str, list[float]]] = {label: {c: [] for c in cols} for label, _ in WAYS}
    answers: dict[str, str] = {}
    for r in range(args.repeat):
        for i, (label, value) in enumerate(WAYS):
            row = one_round(model, root / f"r{r}w{i}", value)
            for c in cols:
                got[label][c].append(float(row[c]))
            answers[label] = str(row["answer"])
    print(f"{len(CORES)} cores; median of {args.repeat}; ratios against {BASELINE!r}")
    print_table(got, BASELINE, answers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

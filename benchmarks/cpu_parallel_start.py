"""Launch-to-ready time of PP=2 and DP=2 on CPU: dsagent's choices against vLLM's defaults.

Run: python benchmarks/cpu_parallel_start.py [--repeat N]
Each round runs `dsagent up` (the whole command, to ready) on the embedded model, four ways, then
asks it once ("What is the capital of France?", greedy) and stops it:

- PP=2 with vLLM's default compilation mode (3, piecewise) on Dynamo's eager backend: the
  baseline, what dsagent ran before;
- PP=2 as dsagent runs it now: the same backend traced once (mode 2);
- DP=2 with vLLM's default of one API server per replica: the baseline;
- DP=2 as dsagent runs it on CPU: one API server.

Prints a table: median seconds to ready, the ratio to its baseline, and the answer, so a faster
start that answers wrongly shows.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from dsagent.deploy.record.store import load  # noqa: E402
from dsagent.settings import Settings  # noqa: E402

MODE3 = '{"backend": "eager"}'
WAYS = [  # (label, baseline label or None, dsagent up flags)
    ("PP=2, compile mode 3 (vLLM's default)", None, ["--pp", "2", "--vllm-arg=--compilation-config",
                                                     f"--vllm-arg={MODE3}"]),
    ("PP=2, traced once (dsagent)", "PP=2, compile mode 3 (vLLM's default)", ["--pp", "2"]),
    ("DP=2, 2 API servers (vLLM's default)", None, ["--dp", "2", "--vllm-arg=--api-server-count=2"]),
    ("DP=2, 1 API server (dsagent)", "DP=2, 2 API servers (vLLM's default)", ["--dp", "2"]),
]


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dsagent.cli", *cmd], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dsagent {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def ask(settings: Settings, name: str) -> str:
    dep = load(settings, name)
    r = httpx.post(f"{dep.base_url}/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {Path(dep.api_key_file).read_text().strip()}"},
                   json={"model": name, "temperature": 0, "max_tokens": 16,
                         "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dsagent-bench-"))
    env = {**os.environ, "DSAGENT_HOME": str(home), "DSAGENT_DEVICE": "cpu"}
    settings = Settings.load(home)
    run(["fetch", "smollm2-135m-instruct"], env)  # conversion is not part of any start
    times: dict[str, list[float]] = {label: [] for label, _, _ in WAYS}
    answers: dict[str, str] = {}
    for _ in range(args.repeat):
        for i, (label, _, flags) in enumerate(WAYS):
            name = f"bench{i}"
            try:
                times[label].append(run(["up", "--name", name, "--port", "auto", *flags], env))
                answers[label] = ask(settings, name)
            finally:
                subprocess.run([sys.executable, "-m", "dsagent.cli", "stop", name], env=env, capture_output=True)
    print(f"{os.cpu_count()} cores; median of {args.repeat}; `dsagent up` to ready")
    print(f"| {'way':<40} | {'ready s':>8} | {'vs baseline':>11} | answer |")
    print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 12}:|--------|")
    for label, base, _ in WAYS:
        med = statistics.median(times[label])
        ratio = med / statistics.median(times[base]) if base else 1.0
        print(f"| {label:<40} | {med:8.1f} | {ratio:10.3f}x | {json.dumps(answers.get(label, ''))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

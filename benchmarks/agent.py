"""Agents on the deployed model: task success rate, and what the structured-output tool path costs.

Run (a deployment running, e.g. `dsagent up`): python benchmarks/agent.py [--runs 20] [--n 8]

1. Success rate: LangChain's ``create_agent(local_deepseek(), tools=[add, multiply])`` at the
   deployment's default sampling, ``--runs`` times per task (4 at a time; vLLM batches them).
   A run succeeds when the final answer holds the right number; each run's tool calls are
   counted too.
2. Latency: the same question answered plainly (``llm.invoke``) and through the tool path
   (``llm.bind_tools([add, multiply])``: tools hint + JSON-schema guided decoding), greedy,
   ``--n`` times each, sequential; the ratio is against the plain answer measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASKS = [
    ("Add 3 and 4, then multiply the result by 4. What is the final number?", "28"),
    ("Add 3 and 4, then multiply the result by 5. What is the final number?", "35"),
]


def _tools():
    from langchain_core.tools import tool

    from dsagent.clients import demo_tools

    return [tool(demo_tools.add), tool(demo_tools.multiply)]


def _run(task: str, want: str) -> tuple[bool, int, float]:
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langgraph.errors import GraphRecursionError

    from dsagent import local_deepseek

    agent = create_agent(local_deepseek(), tools=_tools())
    start = time.perf_counter()
    try:
        out = agent.invoke({"messages": [("user", task)]}, {"recursion_limit": 12})
    except GraphRecursionError:  # a run that loops to the recursion limit is a failure, not a crash
        return False, -1, time.perf_counter() - start
    last = out["messages"][-1]
    calls = sum(len(m.tool_calls) for m in out["messages"] if isinstance(m, AIMessage))
    ok = isinstance(last, AIMessage) and not last.tool_calls and want in str(last.content)
    return ok, calls, time.perf_counter() - start


def success(runs: int) -> None:
    print(f"agent task success at the default sampling, {runs} runs per task")
    print(f"{'task':74} {'success':>8} {'rate':>5} {'calls':>6} {'s/run':>6}")
    for task, want in TASKS:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(_run, [task] * runs, [want] * runs))
        wins = sum(ok for ok, _, _ in results)
        calls = statistics.mean(c for _, c, _ in results if c >= 0) if any(c >= 0 for _, c, _ in results) else 0
        secs = statistics.median(s for _, _, s in results)
        print(f"{task + ' (' + want + ')':74} {wins:>4}/{runs:<3} {wins / runs:5.2f} {calls:6.1f} {secs:6.1f}")


def latency(n: int) -> None:
    from dsagent import local_deepseek

    llm = local_deepseek(temperature=0, max_tokens=48)
    question = "What is 3 + 4?"
    paths = {
        "plain answer": llm,
        "tools, auto": llm.bind_tools(_tools()),
        "tools, required": llm.bind_tools(_tools(), tool_choice="required"),
    }
    rows = []
    for label, runnable in paths.items():
        runnable.invoke(question)  # warm: the grammar compile of a new schema is cached by vLLM
        times, tokens = [], []
        for _ in range(n):
            start = time.perf_counter()
            msg = runnable.invoke(question)
            times.append(time.perf_counter() - start)
            tokens.append((msg.usage_metadata or {}).get("output_tokens", 0))
        rows.append((label, statistics.median(times), statistics.median(tokens)))
    base = rows[0][1]
    print(f"\nlatency per answer, greedy, median of {n}: {question!r}")
    print(f"{'path':18} {'s/answer':>9} {'out tokens':>10} {'ms/token':>9} {'vs plain':>9}")
    for label, secs, toks in rows:
        per = 1000 * secs / toks if toks else 0.0
        print(f"{label:18} {secs:9.2f} {toks:10.0f} {per:9.1f} {secs / base:9.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args(argv)
    latency(args.n)
    success(args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Recipe throughput: the same N `ask` calls sequentially, concurrently through the library,
and concurrently as raw HTTP, in one run against one deployment.

Run: python benchmarks/recipes.py [--n 32] [--tokens 48] [--rounds 3]
Uses the running deployment (or starts the embedded default). Every request generates exactly
--tokens tokens (ignore_eos), so tokens/s compare like with like. Targets: library >= 95% of raw
HTTP at equal concurrency; concurrent >= 4x sequential on the CPU default.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dsagent  # noqa: E402
from dsagent.clients import recipes  # noqa: E402

QUESTIONS = [f"In one sentence, what is {x}?" for x in (
    "the capital of France", "a prime number", "photosynthesis", "gravity", "an atom", "the moon",
    "a volcano", "rain", "a computer", "music", "a river", "the sun", "a tree", "an ocean",
    "a language", "a city", "bread", "a bridge", "a cloud", "a star", "an island", "a forest",
    "a desert", "a mountain", "a planet", "electricity", "a book", "a school", "a garden",
    "a train", "a bicycle", "a library")]


async def raw_http(dep: dsagent.Deployment, key: str, qs: list[str], tokens: int) -> int:
    body = {"model": dep.name, "temperature": 0, "max_tokens": tokens, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=dep.base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=600, limits=httpx.Limits(max_connections=len(qs))) as client:
        async def one(q: str) -> int:
            r = await client.post("/chat/completions", json={**body, "messages": [{"role": "user", "content": q}]})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        counts = await asyncio.gather(*(one(q) for q in qs))
    assert all(c == tokens for c in counts), counts
    return sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="concurrent rounds per path (median)")
    args = parser.parse_args()
    dep = dsagent.up()
    key = Path(dep.api_key_file).read_text().strip()
    qs = (QUESTIONS * (args.n // len(QUESTIONS) + 1))[: args.n]
    llm = dsagent.local_deepseek(temperature=0, max_tokens=args.tokens, extra_body={"ignore_eos": True})
    total = args.n * args.tokens
    # Warm-up: open the connection pools and threads of both concurrent paths.
    recipes.ask_batch(qs, llm=llm, max_concurrency=args.n)
    asyncio.run(raw_http(dep, key, qs, args.tokens))

    t0 = time.perf_counter()
    for q in qs:
        recipes.ask(q, llm=llm)
    seq_s = time.perf_counter() - t0
    lib_runs, raw_runs = [], []
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
        t0 = time.perf_counter()
        recipes.ask_batch(qs, llm=llm, max_concurrency=args.n)
        lib_runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        asyncio.run(raw_http(dep, key, qs, args.tokens))
        raw_runs.append(time.perf_counter() - t0)
    rows = [
        ("sequential, library", seq_s),
        (f"concurrent ({args.n}), library ask_batch", statistics.median(lib_runs)),
        (f"concurrent ({args.n}), raw HTTP (baseline)", statistics.median(raw_runs)),
    ]
    rate = {name: total / secs for name, secs in rows}
    seq, lib, raw = (rate[name] for name, _ in rows)
    print(f"\n{args.n} `ask` calls x {args.tokens} generated tokens, {dep.name} on {dep.device} "
          f"(vLLM {dep.vllm_version})\n")
    print(f"{'mode':44} {'seconds':>8} {'tokens/s':>9}")
    for name, secs in rows:
        print(f"{name:44} {secs:8.2f} {total / secs:9.1f}")
    print(f"\nlibrary / raw HTTP at equal concurrency: {lib / raw:.3f}  (target >= 0.95)")
    print(f"concurrent / sequential (library):       {lib / seq:.2f}x (target >= 4x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

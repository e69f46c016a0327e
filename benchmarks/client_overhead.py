"""Client cost per response: dsagent's chat classes vs the stock LangChain classes they subclass.

Run: python benchmarks/client_overhead.py [--n 1000] [--concurrency 64] [--rounds 3]

On GPUs, 64 concurrent streams through local_deepseek() reached 0.83-0.99 of raw HTTP
(docs/gpu-rehearsal.md). This isolates the client: a loopback server in another process answers
every chat completion at once with the same canned 256-token reply (with a reasoning field), and
the same N requests go through stock ChatOpenAI / ChatDeepSeek and dsagent's LocalChatOpenAI /
LocalChatDeepSeek (`abatch`, max_concurrency). The ratio is Local / stock, measured in the same
run: what dsagent's reasoning normalisation and payload hooks add on top of LangChain. The server
shares this machine's cores, so absolute times are an upper bound on the client's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench",
    "choices": [{"index": 0, "finish_reason": "length", "logprobs": None,
                 "message": {"role": "assistant", "content": "word " * 256, "reasoning": "think " * 32}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 256, "total_tokens": 276},
}).encode()


def _serve(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": REPLY})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


async def _lc(llm: Any, n: int, conc: int) -> None:
    replies = await llm.abatch(["hi"] * n, config={"max_concurrency": conc})
    assert len(replies) == n and replies[0].content


def _clients(base: str) -> list[tuple[str, Any]]:
    from langchain_deepseek import ChatDeepSeek
    from langchain_openai import ChatOpenAI

    from dsagent.clients.chat import LocalChatDeepSeek, LocalChatOpenAI

    oa = {"model": "bench", "api_key": "k", "base_url": base, "max_retries": 0}
    ds = {"model": "bench", "api_key": "k", "api_base": base, "max_retries": 0}
    return [("ChatOpenAI", ChatOpenAI(**oa)), ("LocalChatOpenAI", LocalChatOpenAI(**oa)),
            ("ChatDeepSeek", ChatDeepSeek(**ds)), ("LocalChatDeepSeek", LocalChatDeepSeek(**ds))]


async def measure(base: str, n: int, conc: int, rounds: int) -> dict[str, float]:
    """Median seconds per response (ms) for each client, rounds interleaved."""
    runs: dict[str, list[float]] = {}
    clients = _clients(base)
    for label, llm in clients:  # warm-up: connections, imports, lazy clients
        await _lc(llm, 64, conc)
    for _ in range(rounds):
        for label, llm in clients:
            t0 = time.perf_counter()
            await _lc(llm, n, conc)
            runs.setdefault(label, []).append((time.perf_counter() - t0) / n * 1000)
    return {label: statistics.median(v) for label, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        ms = asyncio.run(measure(f"http://127.0.0.1:{port}/v1", args.n, args.concurrency, args.rounds))
    finally:
        server.terminate()
        server.join(5)
    print(f"{args.n} requests, {args.concurrency} concurrent, median of {args.rounds} rounds, canned 256-token reply")
    print(f"{'client':20} {'ms/response':>12} {'vs stock':>9}")
    stock = {"LocalChatOpenAI": "ChatOpenAI", "LocalChatDeepSeek": "ChatDeepSeek"}
    for label, v in ms.items():
        base = ms.get(stock.get(label, ""))
        print(f"{label:20} {v:12.2f} {(f'{v / base:.2f}' if base else '(baseline)'):>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

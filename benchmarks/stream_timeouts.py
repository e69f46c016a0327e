"""Stream timeouts: how soon dsagent's chat classes give up on a stalled stream, against a stock
LangChain class waiting out the same stall, in one run.

Run: python benchmarks/stream_timeouts.py [--stall 4] [--timeout 1] [--rounds 3]

A loopback server answers every streamed chat completion with R1-style chunks but holds the
stream for ``--stall`` seconds: before the first chunk ("first token"), or after two chunks
("idle"). dsagent's classes are given ``first_token_timeout`` / ``idle_timeout`` of ``--timeout``
seconds and should raise ``StreamTimeoutError`` about then; the baseline is the stock class
(no such timeouts) on the same stall, which returns only once the stall ends. The table shows
the median seconds to the error (or to the end, for the baseline), the overshoot past the
configured timeout, and the ratio to the baseline. tests/test_chat_reasoning.py checks that each
timeout fires while the server still holds the stream; the seconds live here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = "The user asks for France's capital. That is Paris.".split()


def serve(stall: float, hold_at: list[int]) -> ThreadingHTTPServer:
    """A streaming chat server that holds each stream ``stall`` s before chunk ``hold_at[0]``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            deltas = [{"role": "assistant", "content": ""}] + [{"reasoning": w + " "} for w in WORDS] + [
                {"content": "Paris."}]
            try:
                for i, delta in enumerate(deltas):
                    if i == hold_at[0]:
                        time.sleep(stall)
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd


def clients(url: str, timeout: float) -> dict[str, Any]:
    from langchain_deepseek import ChatDeepSeek
    from langchain_openai import ChatOpenAI

    from dsagent.clients.chat import LocalChatDeepSeek, LocalChatOpenAI

    common = {"model": "m", "api_key": "k", "max_retries": 0}
    ours = {"first_token_timeout": timeout, "idle_timeout": timeout}
    return {"stock ChatDeepSeek": ChatDeepSeek(**common, api_base=url, timeout=600),
            "stock ChatOpenAI": ChatOpenAI(**common, base_url=url, timeout=600),
            "LocalChatDeepSeek": LocalChatDeepSeek(**common, base_url=url, timeout=600, **ours),
            "LocalChatOpenAI": LocalChatOpenAI(**common, base_url=url, timeout=600, **ours)}


def seconds(llm: Any, sync: bool) -> tuple[float, str]:
    """Seconds until the stream ends or raises, and how it ended."""
    from dsagent.errors import StreamTimeoutError

    async def consume() -> None:
        async for _ in llm.astream("hi"):
            pass

    t0 = time.perf_counter()
    try:
        list(llm.stream("hi")) if sync else asyncio.run(consume())
        how = "ended"
    except StreamTimeoutError:
        how = "StreamTimeoutError"
    return time.perf_counter() - t0, how


CASES = [  # (label, chunk held before, sync stream?, stock client, dsagent client)
    ("first token, astream", 0, False, "stock ChatDeepSeek", "LocalChatDeepSeek"),
    ("idle, astream", 2, False, "stock ChatDeepSeek", "LocalChatDeepSeek"),
    ("first token, stream", 0, True, "stock ChatOpenAI", "LocalChatOpenAI"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stall", type=float, default=4.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    hold_at = [0]
    httpd = serve(args.stall, hold_at)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    llms = clients(url, args.timeout)
    runs: dict[tuple[str, str], list[float]] = {}
    ends: dict[tuple[str, str], set[str]] = {}
    try:
        for _ in range(args.rounds):
            for label, at, sync, stock, ours in CASES:
                hold_at[0] = at
                for who in (stock, ours):
                    took, how = seconds(llms[who], sync)
                    runs.setdefault((label, who), []).append(took)
                    ends.setdefault((label, who), set()).add(how)
    finally:
        httpd.shutdown()
    print(f"stall {args.stall:g} s, timeouts {args.timeout:g} s, median of {args.rounds} rounds")
    print(f"{'case':22} {'client':20} {'ends with':20} {'seconds':>8} {'overshoot':>9} {'vs stock':>8}")
    for label, _at, _sync, stock, ours in CASES:
        base = statistics.median(runs[(label, stock)])
        for who in (stock, ours):
            s = statistics.median(runs[(label, who)])
            over = f"{s - args.timeout:+.2f}" if who == ours else ""
            ratio = f"{s / base:.2f}" if who == ours else "(baseline)"
            print(f"{label:22} {who:20} {'/'.join(sorted(ends[(label, who)])):20} {s:8.2f} {over:>9} {ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

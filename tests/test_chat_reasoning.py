"""Reasoning normalisation, R1 prompt rules and stream timeouts, on recorded R1-style responses.

The responses come from ``ReplayServer``: a loopback HTTP server that stands for a vLLM
OpenAI server serving a DeepSeek-R1 distill (which cannot run on this CPU machine). It answers
/v1/chat/completions with responses shaped like vLLM's: the reasoning in ``reasoning`` (current
vLLM), in ``reasoning_content`` (before 2026), or left in the content as ``<think>...</think>``
(no reasoning parser), streamed or not; and it can hold a stream before one of its chunks, until
the test ends, to test timeouts. The clients are the real openai SDK inside the real LangChain
classes. Each test gets a server of its own (nothing it sets reaches the next test).
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dsagent.clients.chat import LocalChatDeepSeek, LocalChatOpenAI, fold_system_prompt
from dsagent.errors import StreamTimeoutError
from dsagent.clients.reasoning import ThinkSplitter, split_think

THINK = "The user asks for France's capital. That is Paris."
ANSWER = "The capital of France is Paris."


class ReplayServer:
    """Replays one recorded vLLM-style chat completion (``mode`` picks the reasoning shape)."""

    def __init__(self) -> None:
        self.mode = "reasoning"
        self.hold_at: int | None = None  # a stream stops before this chunk (0: the first) until released
        self.released = threading.Event()
        self.sent = 0  # chunks written to the last stream
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                if body.get("stream"):
                    return owner._stream(self)
                msg = owner._message()
                data = {"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown

    def _message(self) -> dict:
        if self.mode == "reasoning":
            return {"role": "assistant", "content": ANSWER, "reasoning": THINK}
        if self.mode == "reasoning_content":
            return {"role": "assistant", "content": ANSWER, "reasoning_content": THINK}
        if self.mode == "raw":
            return {"role": "assistant", "content": f"<think>\n{THINK}\n</think>\n\n{ANSWER}", "reasoning": None}
        return {"role": "assistant", "content": f"{THINK}\n</think>\n\n{ANSWER}"}  # template-opened

    def _deltas(self) -> list[dict]:
        if self.mode in ("reasoning", "reasoning_content"):
            return ([{"role": "assistant", "content": ""}] + [{self.mode: w + " "} for w in THINK.split(" ")]
                    + [{"content": w + " "} for w in ANSWER.split(" ")])
        text = self._message()["content"]
        return [{"role": "assistant", "content": ""}] + [{"content": text[i:i + 5]} for i in range(0, len(text), 5)]

    def _stream(self, handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        self.sent = 0
        try:
            for i, delta in enumerate(self._deltas()):
                if i == self.hold_at:
                    self.released.wait(60)
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                handler.wfile.flush()
                self.sent = i + 1
            handler.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()


@pytest.fixture
def replay():
    srv = ReplayServer()
    yield srv
    srv.close()


def _llm(replay, backend: str, **kw):
    cls = LocalChatDeepSeek if backend == "deepseek" else LocalChatOpenAI
    return cls(model="deepseek-r1-distill-qwen-7b", api_key="k", base_url=replay.url,
                              max_retries=0, timeout=10, **kw)


MODES = ["reasoning", "reasoning_content", "raw", "opened"]


@pytest.mark.parametrize("backend", ["deepseek", "openai"])
@pytest.mark.parametrize("mode", MODES)
def test_reasoning_lands_in_one_place_invoke(replay, backend, mode):
    replay.mode = mode
    msg = _llm(replay, backend, think_open=mode == "opened").invoke("What is the capital of France?")
    assert msg.content == ANSWER
    assert msg.additional_kwargs["reasoning_content"].strip() == THINK
    blocks = msg.content_blocks
    assert blocks[0] == {"type": "reasoning", "reasoning": msg.additional_kwargs["reasoning_content"]}
    assert blocks[-1]["type"] == "text" and blocks[-1]["text"] == ANSWER


@pytest.mark.parametrize("backend", ["deepseek", "openai"])
@pytest.mark.parametrize("mode", MODES)
def test_reasoning_lands_in_one_place_stream(replay, backend, mode):
    replay.mode = mode
    chunks = list(_llm(replay, backend, think_open=mode == "opened").stream("What is the capital of France?"))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.content.strip() == ANSWER
    assert full.additional_kwargs["reasoning_content"].strip() == THINK


def test_r1_system_prompt_is_folded_into_the_user_turn(replay):
    _llm(replay, "deepseek", fold_system=True).invoke([("system", "Answer in one word."), ("human", "Capital of France?")])
    assert [r["messages"] for r in replay.requests] == [[{"role": "user", "content": "Answer in one word.\n\nCapital of France?"}]]


def test_fold_keeps_a_prompt_without_user_turn():
    assert fold_system_prompt([{"role": "system", "content": "x"}]) == [{"role": "user", "content": "x"}]


def test_async_stream_first_token_timeout(replay):
    """The server holds the first chunk until the test ends: the timeout, not the stream, ends the wait."""
    replay.hold_at = 0
    llm = _llm(replay, "deepseek", first_token_timeout=1.0, idle_timeout=10.0)

    async def consume():
        async for _ in llm.astream("hi"):
            pass

    with pytest.raises(StreamTimeoutError, match="no first token within 1 s"):
        asyncio.run(consume())
    assert replay.sent == 0  # raised while the server still held every chunk


def test_async_stream_idle_timeout(replay):
    replay.hold_at = 2  # two chunks, then nothing until the test ends
    llm = _llm(replay, "deepseek", first_token_timeout=10.0, idle_timeout=1.0)

    async def consume():
        async for _ in llm.astream("hi"):
            pass

    with pytest.raises(StreamTimeoutError, match="stalled for more than 1 s"):
        asyncio.run(consume())
    assert replay.sent == 2


def test_sync_stream_times_out_on_the_socket(replay):
    replay.hold_at = 0
    llm = _llm(replay, "openai", first_token_timeout=1.0, idle_timeout=1.0)
    with pytest.raises(StreamTimeoutError):
        list(llm.stream("hi"))
    assert replay.sent == 0


def test_think_splitter_handles_tags_split_anywhere():
    text = f"<think>{THINK}</think>{ANSWER}"
    for size in (1, 2, 3, 7, 50):
        s = ThinkSplitter()
        parts = [s.feed(text[i:i + size]) for i in range(0, len(text), size)]
        assert "".join(p[0] for p in parts) == THINK
        assert "".join(p[1] for p in parts) == ANSWER
    assert split_think("<think>cut off mid-way") == ("cut off mid-way", "")

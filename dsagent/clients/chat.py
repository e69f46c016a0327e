"""local_deepseek(): a LangChain chat model bound to the running deployment (or router model).

Base URL, key and served model name come from the deployment record, or from the router's
(``target.py``), so callers never type them. ``LocalChatDeepSeek`` and ``LocalChatOpenAI`` subclass ``ChatDeepSeek`` / ``ChatOpenAI``
and change only what a local vLLM needs: reasoning in one place whatever the server sent, R1's
system-prompt rule, streaming timeouts, tool calls for models without a vLLM tool parser
(``tools.py``), a thinking budget (``thinking.py``) and one async client per event loop. The model
is returned bare (not ``with_retry``), so ``bind_tools`` and ``with_structured_output`` work.

One layer per concern, no stacking:

====================  =====================  ==================================================
concern               default                 how
====================  =====================  ==================================================
request timeout       120 s (R1: 600 s)       the openai client's ``timeout``
transport retries     2                       the openai client's ``max_retries`` (connection
                                              errors, 408/409/429/5xx, with backoff)
server still loading  wait up to 600 s        ``wait_timeout``: tenacity-bounded; a server that
                                              dies meanwhile is reported at once with its log
first token (stream)  120 s                   ``first_token_timeout`` (exact for async streams)
idle gap (stream)     60 s                    ``idle_timeout``; sync streams get one socket read
                                              timeout of max(first token, idle)
R1 sampling           temperature 0.6,        DeepSeek's advice; system prompts are folded into
                      top_p 0.95              the first user turn
====================  =====================  ==================================================
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_deepseek import ChatDeepSeek
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import PrivateAttr

from ..errors import InvalidOptionError, StreamTimeoutError
from ..settings import Settings
from . import thinking as _thinking
from .reasoning import ThinkSplitter, opens_think, place_reasoning, reasoning_of, split_think
from .ride import RestartRiding
from .target import target, tool_repeats
from .tools import ToolStream, apply_tools, constrained, convert_result, without_repeats

__all__ = ["LocalChatDeepSeek", "LocalChatOpenAI", "fold_system_prompt", "local_deepseek"]

R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95}


def fold_system_prompt(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Move system messages into the first user turn (DeepSeek-R1 wants no system prompt).

    >>> fold_system_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    [{'role': 'user', 'content': 'Be brief.\\n\\nHi'}]
    """
    system = [m["content"] for m in messages if m.get("role") in ("system", "developer")]
    if not system:
        return messages
    text = "\n\n".join(c if isinstance(c, str) else "".join(b.get("text", "") for b in c) for c in system)
    rest = [dict(m) for m in messages if m.get("role") not in ("system", "developer")]
    for m in rest:
        if m.get("role") == "user":
            if isinstance(m["content"], str):
                m["content"] = f"{text}\n\n{m['content']}"
            else:
                m["content"] = [{"type": "text", "text": text + "\n\n"}, *m["content"]]
            return rest
    return [{"role": "user", "content": text}, *rest]


def _stream_timeout(first: bool, llm: _LocalChat) -> StreamTimeoutError:
    if first:
        return StreamTimeoutError(f"no first token within {llm.first_token_timeout:.0f} s",
                                  "raise first_token_timeout (the server may be busy or the prompt long)")
    return StreamTimeoutError(f"the stream stalled for more than {llm.idle_timeout:.0f} s",
                              "raise idle_timeout, or check the server with `dsagent status`")


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a timed-out stream is best effort
            pass


class _LocalChat(RestartRiding, BaseChatOpenAI):
    """What both local classes add to their LangChain base (listed first among their bases)."""

    first_token_timeout: float = 120.0
    idle_timeout: float = 60.0
    fold_system: bool = False
    think_open: bool = False  # the template opens <think> itself and no parser splits it
    thinking_budget: int | None = None
    """Reasoning tokens allowed before ``</think>`` is forced (``None``: no limit); per call too:
    ``invoke(..., thinking_budget=N)`` or ``bind(thinking_budget=N)`` (dsagent/clients/thinking.py)."""
    budget_support: str = "native"
    """``"native"``: sent as vLLM's ``thinking_token_budget``; ``"client"``: dsagent's two-request
    cut (a vLLM older than 0.20); ``"unconfigured"``: refused before any request (no reasoning
    config). ``local_deepseek`` reads it from the deployment (``thinking.budget_support``)."""
    native_tools: bool = False
    """The server parses tool calls itself (launched with ``--tool-call-parser``): ``tools`` go to
    vLLM as they are; otherwise through structured outputs (dsagent/clients/tools.py)."""
    tool_repeats: str = "args"
    """A tool call that repeats one of the open turn is asked again without the tools already
    called: ``"args"`` (same name and arguments), ``"name"`` (each tool once per turn) or
    ``"allow"`` (dsagent/clients/tools.py ``without_repeats``)."""
    _loop: Any = PrivateAttr(default=None)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """No: LangChain's loader restores only the classes on its own allowlist, and a local
        deployment's URL and key file do not travel anyway."""
        return False

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if not self.native_tools:
            apply_tools(payload)
        if self.fold_system and "messages" in payload:
            payload["messages"] = fold_system_prompt(payload["messages"])
        if opens_think(payload.get("messages")):  # a prefill that opens the reasoning: continued, not closed
            payload["extra_body"] = {**(payload.get("extra_body") or {}), "add_generation_prompt": False,
                                     "continue_final_message": True}
        if payload.get("stream"):
            payload["timeout"] = httpx.Timeout(max(self.first_token_timeout, self.idle_timeout), connect=10.0)
        return payload

    def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> Any:
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump()
        for gen, choice in zip(result.generations, raw.get("choices") or []):
            message = gen.message
            reasoning = reasoning_of(choice.get("message") or {})
            if reasoning is None and isinstance(message.content, str):
                reasoning, answer = split_think(message.content)
                if reasoning is not None:
                    message.content = answer
            place_reasoning(message.additional_kwargs, reasoning)
            message.response_metadata["model_provider"] = "deepseek"
        return result

    def _convert_chunk_to_generation_chunk(self, chunk: dict, default_chunk_class: type,
                                           base_generation_info: dict | None) -> Any:
        gen = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        choices = chunk.get("choices") or []
        if gen is not None and choices:
            place_reasoning(gen.message.additional_kwargs, reasoning_of(choices[0].get("delta") or {}))
            gen.message.response_metadata["model_provider"] = "deepseek"
        return gen

    def with_structured_output(self, schema: Any = None, *, method: str = "json_schema",  # type: ignore[override]
                               include_raw: bool = False, strict: bool | None = None, **kwargs: Any) -> Any:
        """JSON-schema structured output by default: vLLM enforces it by guided decoding
        with any model, while tool calling needs a tool-call parser the R1 distills lack."""
        from pydantic.v1 import BaseModel as BaseModelV1

        if method == "json_schema" and isinstance(schema, type) and issubclass(schema, BaseModelV1) \
                and not include_raw:
            from langchain_core.runnables import RunnableLambda
            from langchain_core.utils.function_calling import convert_to_json_schema

            inner = BaseChatOpenAI.with_structured_output(self, convert_to_json_schema(schema),
                                                          method="json_schema", strict=strict, **kwargs)
            return inner | RunnableLambda(schema.parse_obj)
        return BaseChatOpenAI.with_structured_output(self, schema, method=method, include_raw=include_raw,
                                                     strict=strict, **kwargs)

    def _split(self, gen: Any, splitter: ThinkSplitter) -> Any:
        """Raw ``<think>`` of a streamed chunk moved into its reasoning (no parser on the server)."""
        msg = gen.message
        if not isinstance(msg.content, str) or "reasoning_content" in msg.additional_kwargs:
            return gen
        reasoning, content = splitter.feed(msg.content)
        if not reasoning and content == msg.content:
            return gen
        extra = dict(msg.additional_kwargs)
        if reasoning:
            extra["reasoning_content"] = reasoning
        new = msg.model_copy(update={"content": content, "additional_kwargs": extra})
        return ChatGenerationChunk(message=new, generation_info=gen.generation_info)

    def _bind_loop(self) -> None:
        """One async HTTP client per event loop: LangChain caches one across instances and
        loops, and its pooled connections die with the loop that made them ("Event loop is
        closed" on the second ``asyncio.run``)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop or self.http_async_client is not None or self.root_async_client is None:
            return
        self.root_async_client = self.root_async_client.copy(http_client=openai.DefaultAsyncHttpxClient())
        self.async_client = self.root_async_client.chat.completions
        self._loop = loop

    def _as_tool_reply(self, messages: list[Any], result: ChatResult,
                       kwargs: dict[str, Any]) -> tuple[ChatResult, dict[str, Any] | None]:
        """A constrained reply turned into tool calls or content, and the arguments to ask again
        with when it repeated a call (``tool_repeats``); ``None`` when it stands."""
        if self.native_tools or not constrained(kwargs):
            return result, None
        result = convert_result(result)
        return result, without_repeats(messages, result, kwargs, self.tool_repeats)

    def _budget(self, kwargs: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        """``(budget for the client-side cut or None, the call's kwargs)``: a native budget goes
        into the kwargs as ``thinking_token_budget``."""
        limit = kwargs.pop("thinking_budget", self.thinking_budget)
        if limit is None or self.budget_support == "client":
            return limit, kwargs
        if self.budget_support == "unconfigured":
            raise _thinking.unconfigured(self.deployment or self.model_name, limit)
        return None, _thinking.with_budget(kwargs, self.extra_body, limit)

    def _generate(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        limit, kwargs = self._budget(kwargs)
        if limit is not None:
            result = _thinking.generate(self, messages, stop, int(limit), kwargs)
        else:
            result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        result, again = self._as_tool_reply(messages, result, kwargs)
        if again is None:
            return result
        return self._generate(messages, stop, run_manager, thinking_budget=limit, **again)

    async def _agenerate(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        self._bind_loop()
        limit, kwargs = self._budget(kwargs)
        if limit is not None:
            result = await _thinking.agenerate(self, messages, stop, int(limit), kwargs)
        else:
            result = await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        result, again = self._as_tool_reply(messages, result, kwargs)
        if again is None:
            return result
        return await self._agenerate(messages, stop, run_manager, thinking_budget=limit, **again)

    def _stream(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[Any]:
        limit, kwargs = self._budget(kwargs)
        if limit is not None:
            source = _thinking.stream(self, messages, stop, int(limit), kwargs, run_manager)
        else:
            source = self._stream_chat(messages, stop, run_manager, **kwargs)
        tools = ToolStream() if constrained(kwargs) and not self.native_tools else None
        for gen in source:
            yield tools.convert(gen) if tools else gen
        if tools and (tail := tools.tail()):
            yield tail

    async def _astream(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[Any]:
        self._bind_loop()
        limit, kwargs = self._budget(kwargs)
        if limit is not None:
            source = _thinking.astream(self, messages, stop, int(limit), kwargs, run_manager)
        else:
            source = self._astream_chat(messages, stop, run_manager, **kwargs)
        tools = ToolStream() if constrained(kwargs) and not self.native_tools else None
        async for gen in source:
            yield tools.convert(gen) if tools else gen
        if tools and (tail := tools.tail()):
            yield tail

    def _stream_chat(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        splitter = ThinkSplitter(inside=self.think_open or opens_think(args[0]))
        first = True
        try:
            for gen in super()._stream(*args, **kwargs):
                first = False
                yield self._split(gen, splitter)
        except (httpx.ReadTimeout, openai.APITimeoutError) as exc:
            raise _stream_timeout(first, self) from exc

    async def _astream_chat(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        splitter = ThinkSplitter(inside=self.think_open or opens_think(args[0]))
        stream = super()._astream(*args, **kwargs).__aiter__()
        first = True
        while True:
            limit = self.first_token_timeout if first else self.idle_timeout
            try:
                gen = await asyncio.wait_for(stream.__anext__(), timeout=limit)
            except StopAsyncIteration:
                return
            except (TimeoutError, httpx.ReadTimeout, openai.APITimeoutError) as exc:
                await _aclose(stream)
                raise _stream_timeout(first, self) from exc
            first = False
            yield self._split(gen, splitter)


class LocalChatDeepSeek(_LocalChat, ChatDeepSeek):
    """``ChatDeepSeek`` for a local vLLM deployment (what ``local_deepseek()`` returns).

    >>> LocalChatDeepSeek(model="m", api_key="k", base_url="http://127.0.0.1:8000/v1").idle_timeout
    60.0
    """


class LocalChatOpenAI(_LocalChat, ChatOpenAI):
    """``ChatOpenAI`` for a local vLLM deployment (``local_deepseek(backend="openai")``)."""


def local_deepseek(
    model: str | None = None,
    *,
    backend: str = "deepseek",
    ensure: bool = False,
    settings: Settings | None = None,
    wait_timeout: float = 600.0,
    **overrides: Any,
) -> LocalChatDeepSeek | LocalChatOpenAI:
    """A ``LocalChatDeepSeek`` (default) or ``LocalChatOpenAI`` (``backend="openai"``) for the deployment.

    ``model`` picks a deployment by name when several run; ``ensure=True`` starts it (or waits
    for it) first. ``overrides`` go to the chat model class (``temperature``, ``max_tokens``,
    ``timeout``, ``first_token_timeout``, ``idle_timeout``, ...).

    With a deployment running (tests/test_recipes_smoke.py runs this against a real server)::

        llm = local_deepseek()
        llm.invoke("What is the capital of France?").content   # 'The capital of France is Paris.'
    """
    if backend not in ("deepseek", "openai"):
        raise InvalidOptionError(f"unknown backend {backend!r}", 'use backend="deepseek" or backend="openai"',
                                 option="backend", value=backend)
    settings = settings or Settings.load()
    t = target(model, settings, ensure=ensure, wait_timeout=wait_timeout)
    params: dict[str, Any] = {
        "model": t.name,
        "api_key": t.api_key,
        "base_url": t.base_url,
        "timeout": 600.0 if t.reasoning else 120.0,
        "max_retries": 2 if t.deployment else 6,  # a router answers 503 + Retry-After while it loads the model
        "stream_usage": True,
        "fold_system": t.reasoning,
        "deployment": t.deployment,  # rides through the deployment's supervised restarts (clients/ride.py)
        "dsagent_home": str(settings.home),
        "tool_repeats": tool_repeats(t.model),
        "native_tools": "--tool-call-parser" in t.argv,
        "budget_support": _thinking.budget_support(t.argv, t.vllm_version),
    }
    if t.reasoning:
        params.update(R1_SAMPLING)
        params["think_open"] = "--reasoning-parser" not in t.argv
    params.update(overrides)
    return (LocalChatDeepSeek if backend == "deepseek" else LocalChatOpenAI)(**params)

"""A thinking budget: at most N reasoning tokens, then ``</think>`` and the answer.

vLLM 0.20 and newer enforce it in the engine: the request field ``thinking_token_budget`` (chat
and completions) forces the end of thinking after N tokens, inside the sampler, for every client
(curl, the OpenAI SDK, ChatOpenAI, an MCP agent), provided the server runs with a reasoning parser
(``--reasoning-parser``; dsagent launches the R1 distills with ``deepseek_r1``) or a reasoning
config (``--reasoning-config``; the embedded model's, on the ``<think>`` tags). ``budget_support``
reads which applies from the deployment's record, and the chat classes send the field
(``with_budget``). A server that has the field but no reasoning config would answer 400: dsagent
refuses first, naming the fix.

Only for an older vLLM, the client-side cut below: two requests through the completions API with
the prompt the server's own chat template renders (``/tokenize`` with ``messages``: the same
template, tools hint and system rules as a chat request):

1. the prompt's tokens, ``max_tokens=N``, ``stop=["</think>"]``: the reasoning;
2. the prompt, the reasoning and ``\\n</think>\\n\\n`` (only when the model was thinking), with the
   caller's ``max_tokens``, ``stop`` and structured-output constraint: the answer.

Thinking is recognised when the prompt ends in ``<think>`` (R1 templates, or an assistant
prefill such as ``("ai", "<think>\\n")``) or the model opens the tag itself; a model that answers
without thinking gets its answer continued, not cut. The reasoning lands in
``additional_kwargs["reasoning_content"]`` and ``usage_metadata`` counts it separately
(``output_token_details["reasoning"]``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from ..deploy.launch.argv import THINK_TAGS
from ..errors import InvalidOptionError
from .reasoning import CLOSE, OPEN, ThinkSplitter

__all__ = ["NATIVE_SINCE", "agenerate", "astream", "budget_support", "generate", "stream", "with_budget"]

NATIVE_SINCE = (0, 20)
"""The first vLLM release whose sampler enforces ``thinking_token_budget``."""


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def budget_support(argv: Sequence[str], vllm_version: str) -> str:
    """How a deployment takes a thinking budget, from its vLLM argv and version: ``"native"`` (vLLM
    enforces ``thinking_token_budget``), ``"client"`` (a vLLM older than 0.20: dsagent's two-request
    cut) or ``"unconfigured"`` (no reasoning parser or config: vLLM would refuse the field).

    >>> budget_support(["--reasoning-parser", "deepseek_r1"], "0.32.0")
    'native'
    >>> budget_support(["--reasoning-config", "{}"], "")
    'native'
    >>> budget_support(["--model", "m"], "0.32.0")
    'unconfigured'
    >>> budget_support(["--reasoning-parser", "deepseek_r1"], "0.11.2")
    'client'
    """
    release = _release(vllm_version)
    if release is not None and release < NATIVE_SINCE:
        return "client"
    configured = any(a == f or a.startswith(f + "=") for a in argv for f in ("--reasoning-parser", "--reasoning-config"))
    return "native" if configured else "unconfigured"


def unconfigured(deployment: str, budget: Any) -> InvalidOptionError:
    return InvalidOptionError(
        f"deployment {deployment!r} cannot enforce thinking_budget: its vLLM runs without a reasoning parser "
        "or config (vLLM would answer 400)",
        "serve a reasoning model (dsagent launches the R1 distills with --reasoning-parser deepseek_r1), or "
        f"relaunch with: dsagent up ... --vllm-arg='--reasoning-config={THINK_TAGS}'",
        option="thinking_budget", value=budget)


def with_budget(kwargs: dict[str, Any], extra_body: Mapping[str, Any] | None, budget: Any) -> dict[str, Any]:
    """The call's keyword arguments with ``thinking_token_budget`` in its ``extra_body`` (merged
    with the model's own ``extra_body``, which a call's ``extra_body`` would otherwise replace).

    >>> with_budget({"stop": ["x"]}, {"top_k": 5}, 4)
    {'stop': ['x'], 'extra_body': {'top_k': 5, 'thinking_token_budget': 4}}
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InvalidOptionError(f"thinking_budget must be a whole number of tokens >= 0, got {budget!r}",
                                 "pass thinking_budget=N with N >= 0, or None for no limit",
                                 option="thinking_budget", value=budget)
    extra = {**(extra_body or {}), **(kwargs.get("extra_body") or {}), "thinking_token_budget": budget}
    return {**kwargs, "extra_body": extra}

_SAMPLING = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "logit_bias")


@dataclass
class _Call:
    """What the two requests need, taken from the chat payload ``_get_request_payload`` built."""

    model: str
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]
    answer: dict[str, Any]  # max_tokens, stop, extra_body of the second request
    url: str
    headers: dict[str, str]
    timeout: float
    context: int = 0  # the server's max_model_len, from /tokenize

    def second(self, prompt: list[int]) -> dict[str, Any]:
        """Request 2's arguments; with no max_tokens, the rest of the context (as a chat request
        gets), not the completions API's default of 16."""
        answer = {**self.answer, "max_tokens": self.answer["max_tokens"] or max(1, self.context - len(prompt))}
        return {"model": self.model, "prompt": prompt, **self.sampling, **answer}


def _call(llm: Any, messages: list[Any], stop: list[str] | None, budget: int, kwargs: dict) -> _Call:
    if budget < 1:
        raise InvalidOptionError(f"thinking_budget must be at least 1 token, got {budget}",
                                 "pass thinking_budget=N with N >= 1, or None for no limit",
                                 option="thinking_budget", value=budget)
    payload = llm._get_request_payload(messages, stop=stop, **kwargs)
    extra = dict(payload.get("extra_body") or {})
    sampling = {k: payload[k] for k in _SAMPLING if payload.get(k) is not None}
    sampling["extra_body"] = {k: v for k, v in extra.items() if k != "structured_outputs"}
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    answer: dict[str, Any] = {"extra_body": extra, "max_tokens": limit}
    if payload.get("stop"):
        answer["stop"] = payload["stop"]
    root = str(llm.root_client.base_url).rstrip("/").removesuffix("/v1")
    timeout = llm.request_timeout if isinstance(llm.request_timeout, (int, float)) else 120.0
    return _Call(payload["model"], payload["messages"], sampling, answer, root,
                 {"Authorization": f"Bearer {llm.root_client.api_key}"}, float(timeout))


def _tokenize_body(call: _Call) -> dict[str, Any]:
    prefill = call.messages[-1].get("role") == "assistant"
    return {"model": call.model, "messages": call.messages, "add_generation_prompt": not prefill,
            "continue_final_message": prefill}


@dataclass
class _First:
    text: str
    finish: str | None
    tokens: int
    prompt_tokens: int


def _second_prefix(first: _First, opened: bool) -> tuple[str | None, str, str]:
    """``(reasoning, text to append to the prompt, answer text already generated)``.

    >>> _second_prefix(_First("a plan", "length", 16, 9), True)
    ('a plan', 'a plan\\n</think>\\n\\n', '')
    >>> _second_prefix(_First("Paris", "length", 16, 9), False)
    (None, 'Paris', 'Paris')
    """
    text = first.text
    if not opened and not text.lstrip().startswith(OPEN):
        return None, text, text  # no thinking: continue the answer where it stopped
    reasoning = text.lstrip().removeprefix(OPEN).strip() if not opened else text.strip()
    return reasoning, text.rstrip() + f"\n{CLOSE}\n\n", ""


def _usage(first: _First, answer_tokens: int, thinking: bool) -> dict[str, Any]:
    out = first.tokens + answer_tokens
    return {"input_tokens": first.prompt_tokens, "output_tokens": out, "total_tokens": first.prompt_tokens + out,
            "output_token_details": {"reasoning": first.tokens if thinking else 0}}


def _result(call: _Call, first: _First, reasoning: str | None, answer: str, second: Any) -> ChatResult:
    choice = second.choices[0]
    thinking = reasoning is not None
    extra = {"reasoning_content": reasoning} if thinking else {}
    meta = {"finish_reason": choice.finish_reason, "model_name": call.model, "model_provider": "deepseek",
            "thinking_budget": _budget_meta(first, thinking)}
    answer_tokens = second.usage.completion_tokens if second.usage else 0
    message = AIMessage(content=answer, additional_kwargs=extra, response_metadata=meta,
                        usage_metadata=_usage(first, answer_tokens, thinking))
    return ChatResult(generations=[ChatGeneration(message=message)])


def _budget_meta(first: _First, thinking: bool) -> dict[str, Any]:
    return {"reasoning_tokens": first.tokens if thinking else 0, "cut": thinking and first.finish == "length"}


def _opened(prompt_tail: str) -> bool:
    return prompt_tail.rstrip().endswith(OPEN)


def _post(call: _Call, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(call.url + path, json=body, headers=call.headers, timeout=call.timeout)
    response.raise_for_status()
    return response.json()


def _prompt(call: _Call, think_open: bool) -> tuple[list[int], bool]:
    rendered = _post(call, "/tokenize", _tokenize_body(call))
    ids, call.context = rendered["tokens"], rendered["max_model_len"]
    tail = _post(call, "/detokenize", {"model": call.model, "tokens": ids[-8:]})["prompt"]
    return ids, think_open or _opened(tail)


def _more(call: _Call, text: str) -> dict[str, Any]:
    return {"model": call.model, "prompt": text, "add_special_tokens": False}


def _first_of(response: Any) -> _First:
    choice = response.choices[0]
    return _First(choice.text, choice.finish_reason, response.usage.completion_tokens, response.usage.prompt_tokens)


def generate(llm: Any, messages: list[Any], stop: list[str] | None, budget: int, kwargs: dict) -> ChatResult:
    """The two requests, one after the other (sync)."""
    call = _call(llm, messages, stop, budget, kwargs)
    ids, opened = _prompt(call, llm.think_open)
    completions = llm.root_client.completions
    first = _first_of(completions.create(model=call.model, prompt=ids, max_tokens=budget, stop=[CLOSE],
                                         **call.sampling))
    reasoning, append, done = _second_prefix(first, opened)
    more = _post(call, "/tokenize", _more(call, append))["tokens"]
    second = completions.create(**call.second(ids + more))
    return _result(call, first, reasoning, done + second.choices[0].text, second)


async def agenerate(llm: Any, messages: list[Any], stop: list[str] | None, budget: int,
                    kwargs: dict) -> ChatResult:
    """``generate`` in a worker thread: the fallback has one implementation, not sync/async twins."""
    return await asyncio.to_thread(generate, llm, messages, stop, budget, kwargs)


class _Chunks:
    """Stream bookkeeping: request 1's deltas split into reasoning/content, then request 2's."""

    def __init__(self, opened: bool) -> None:
        self.splitter = ThinkSplitter(inside=opened)
        self.text, self.finish, self.tokens, self.prompt_tokens, self.answer_tokens = "", None, 0, 0, 0

    def first(self, chunk: Any) -> ChatGenerationChunk | None:
        if chunk.usage:
            self.tokens, self.prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        self.text += choice.text or ""
        self.finish = choice.finish_reason or self.finish
        reasoning, content = self.splitter.feed(choice.text or "")
        if not reasoning and not content:
            return None
        extra = {"reasoning_content": reasoning} if reasoning else {}
        return ChatGenerationChunk(message=AIMessageChunk(content=content, additional_kwargs=extra))

    def second(self, chunk: Any) -> ChatGenerationChunk | None:
        if chunk.usage:
            self.answer_tokens = chunk.usage.completion_tokens
        if not chunk.choices or not chunk.choices[0].text:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content=chunk.choices[0].text))

    def last(self, model: str, opened: bool) -> ChatGenerationChunk:
        first = _First(self.text, self.finish, self.tokens, self.prompt_tokens)
        thinking = _second_prefix(first, opened)[0] is not None
        meta = {"model_name": model, "model_provider": "deepseek", "thinking_budget": _budget_meta(first, thinking)}
        usage = _usage(first, self.answer_tokens, thinking)
        return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=meta, usage_metadata=usage))


_STREAM = {"stream": True, "stream_options": {"include_usage": True}}


def stream(llm: Any, messages: list[Any], stop: list[str] | None, budget: int, kwargs: dict,
           run_manager: Any = None) -> Iterator[ChatGenerationChunk]:
    """The two requests streamed: reasoning deltas, then answer deltas, then one usage chunk."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options", "stream_usage")}
    call = _call(llm, messages, stop, budget, kwargs)
    ids, opened = _prompt(call, llm.think_open)
    chunks, completions = _Chunks(opened), llm.root_client.completions
    for chunk in completions.create(model=call.model, prompt=ids, max_tokens=budget, stop=[CLOSE],
                                    **call.sampling, **_STREAM):
        if gen := chunks.first(chunk):
            yield _notify(run_manager, gen)
    _, append, _ = _second_prefix(_First(chunks.text, chunks.finish, 0, 0), opened)
    more = _post(call, "/tokenize", _more(call, append))["tokens"]
    for chunk in completions.create(**call.second(ids + more),
                                    **_STREAM):
        if gen := chunks.second(chunk):
            yield _notify(run_manager, gen)
    yield chunks.last(call.model, opened)


async def astream(llm: Any, messages: list[Any], stop: list[str] | None, budget: int, kwargs: dict,
                  run_manager: Any = None) -> AsyncIterator[ChatGenerationChunk]:
    """``stream``, its chunks pulled from a worker thread (one implementation, not twins)."""
    chunks, end = stream(llm, messages, stop, budget, kwargs), object()
    while (gen := await asyncio.to_thread(next, chunks, end)) is not end:
        if run_manager:
            await run_manager.on_llm_new_token(gen.text, chunk=gen)
        yield gen


def _notify(run_manager: Any, gen: ChatGenerationChunk) -> ChatGenerationChunk:
    if run_manager:
        run_manager.on_llm_new_token(gen.text, chunk=gen)
    return gen

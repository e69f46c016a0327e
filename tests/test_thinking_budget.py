"""The thinking budget against the session's real vLLM CPU server, through every way to call it.

The embedded model is launched with vLLM's reasoning config on the ``<think>`` tags
(``ModelSpec.think_tags``), so vLLM's sampler enforces the request field ``thinking_token_budget``
itself: curl (raw HTTP), the OpenAI SDK, stock ChatOpenAI and ChatDeepSeek (``extra_body``) and
``local_deepseek(thinking_budget=N)``. An assistant prefill ``<think>\\n`` opens the reasoning, as an
R1 template does. On a server without a reasoning config vLLM answers 400; dsagent refuses before
sending. dsagent's own two-request cut (``budget_support="client"``, for a vLLM older than 0.20)
runs against the same server.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage

from dsagent.clients.chat import LocalChatOpenAI, local_deepseek
from dsagent.errors import InvalidOptionError

pytestmark = pytest.mark.timeout(600)

QUESTION = "What is the capital of France? Think step by step first."
PREFILLED = [("human", QUESTION), ("ai", "<think>\n")]
RAW = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "<think>\n"}]
CONTINUE = {"add_generation_prompt": False, "continue_final_message": True}


def _tokens(server, api_key: str, text: str) -> list[int]:
    r = httpx.post(f"{server.root_url}/tokenize", headers={"Authorization": f"Bearer {api_key}"}, timeout=60,
                   json={"model": server.name, "prompt": text, "add_special_tokens": False})
    r.raise_for_status()
    return r.json()["tokens"]


@pytest.fixture(scope="module")
def close_ids(server, api_key) -> list[int]:
    """``</think>`` as the tokenizer spells it (three tokens for this model's BPE)."""
    return _tokens(server, api_key, "</think>")


def _thinking_part(ids: list[int], close: list[int]) -> list[int]:
    """The generated tokens before the first ``</think>`` sequence (all of them if none)."""
    for i in range(len(ids) - len(close) + 1):
        if ids[i:i + len(close)] == close:
            return ids[:i]
    return ids


@pytest.mark.parametrize("budget", [0, 3, 8])
def test_curl_gets_at_most_n_thinking_tokens_then_the_end_and_an_answer(server, api_key, close_ids, budget):
    """Raw HTTP as curl sends it; the generated token ids show where vLLM forced ``</think>``.
    (Before: the server had no reasoning config, and vLLM answered 400.)"""
    r = httpx.post(f"{server.base_url}/chat/completions", headers={"Authorization": f"Bearer {api_key}"}, timeout=120,
                   json={"model": server.name, "messages": RAW, "max_tokens": 32, "temperature": 0,
                         "thinking_token_budget": budget, "return_token_ids": True, **CONTINUE})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    ids = choice["token_ids"]
    thought = _thinking_part(ids, close_ids)
    # measured with this model's three-token tags: 0 for N=0, else N + 1 (vLLM's count, docs/tools.md)
    assert len(thought) == (budget + 1 if budget else 0), (budget, ids)
    assert ids[len(thought):len(thought) + len(close_ids)] == close_ids  # then the end, forced
    answer = choice["message"]["content"].split("</think>", 1)[1]
    assert len(ids) > len(thought) + len(close_ids) and answer.strip(), choice  # and an answer follows


def test_the_openai_sdk_and_stock_langchain_classes_send_the_field(server, api_key, close_ids):
    from langchain_deepseek import ChatDeepSeek
    from langchain_openai import ChatOpenAI

    sdk = openai.OpenAI(base_url=server.base_url, api_key=api_key)
    out = sdk.chat.completions.create(model=server.name, messages=RAW, max_tokens=24, temperature=0,
                                      extra_body={"thinking_token_budget": 2, "return_token_ids": True, **CONTINUE})
    ids = out.choices[0].model_extra["token_ids"]
    assert len(_thinking_part(ids, close_ids)) == 3 and "</think>" in out.choices[0].message.content

    extra = {"thinking_token_budget": 2, **CONTINUE}
    for cls in (ChatOpenAI, ChatDeepSeek):
        llm = cls(model=server.name, base_url=server.base_url, api_key=api_key, temperature=0, max_tokens=24,
                  extra_body=extra)
        text = llm.invoke([HumanMessage(QUESTION), AIMessage("<think>\n")]).content
        thought = text.split("</think>", 1)[0]
        assert "</think>" in text and len(_tokens(server, api_key, thought)) <= 3, (cls.__name__, text)


@pytest.mark.parametrize("backend", ["deepseek", "openai"])
def test_local_deepseek_sends_the_budget_and_splits_reasoning_from_answer(server, api_key, backend):
    """``thinking_budget=0`` exists only natively (the client-side cut needs at least one token):
    the reasoning ends at once. With N, the reasoning holds at most N + 1 tokens; streamed, all of
    it comes first. The trailing ``<think>`` prefill is continued, not closed (dsagent sends vLLM's
    ``continue_final_message``)."""
    llm = local_deepseek(backend=backend, temperature=0, max_tokens=24)
    assert llm.budget_support == "native"
    msg = llm.invoke(PREFILLED, thinking_budget=0)
    assert not msg.additional_kwargs.get("reasoning_content") and msg.content.strip(), msg
    assert "</think>" not in msg.content
    msg = llm.invoke(PREFILLED, thinking_budget=4)
    reasoning = msg.additional_kwargs["reasoning_content"]
    assert reasoning.strip() and msg.content.strip() and "</think>" not in msg.content, msg
    assert len(_tokens(server, api_key, reasoning)) <= 5

    chunks = list(llm.stream(PREFILLED, thinking_budget=3))
    kinds = ["reasoning" if c.additional_kwargs.get("reasoning_content") else "answer" for c in chunks
             if c.content or c.additional_kwargs.get("reasoning_content")]
    assert kinds[0] == "reasoning" and "answer" in kinds, kinds
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # all reasoning first
    streamed = "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks)
    assert len(_tokens(server, api_key, streamed)) <= 4


def test_a_prompt_that_does_not_open_think_is_left_alone(server):
    msg = local_deepseek(temperature=0, max_tokens=24).invoke("What is the capital of France?", thinking_budget=1)
    assert "Paris" in msg.content and "reasoning_content" not in msg.additional_kwargs


def test_a_server_without_a_reasoning_config_is_refused_before_any_request(tmp_path):
    """The record says no reasoning parser or config (``budget_support``): no request is sent (the
    address is a closed port, so any attempt would be a connection error instead)."""
    from dsagent.clients.thinking import budget_support
    from dsagent.system.ports import free_port

    assert budget_support(["--model", "m"], "0.32.0") == "unconfigured"
    llm = LocalChatOpenAI(model="m", api_key="k", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0,
                          budget_support="unconfigured", deployment="plain")
    with pytest.raises(InvalidOptionError, match="'plain' cannot enforce thinking_budget") as info:
        llm.invoke("Hi", thinking_budget=8)
    assert "--reasoning-config" in info.value.remedy and "--reasoning-parser deepseek_r1" in info.value.remedy


@pytest.mark.parametrize("backend", ["deepseek", "openai"])
def test_the_client_side_cut_for_an_older_vllm(server, backend):
    """The fallback (``budget_support="client"``): 4 tokens of reasoning through the completions
    API, then ``</think>`` and an answer; reasoning and answer tokens are counted apart."""
    llm = local_deepseek(backend=backend, temperature=0, max_tokens=24, thinking_budget=4, budget_support="client")
    msg = llm.invoke(PREFILLED)
    assert msg.additional_kwargs["reasoning_content"].strip() and msg.content.strip()
    assert "</think>" not in msg.content and "<think>" not in msg.content
    assert msg.response_metadata["thinking_budget"] == {"reasoning_tokens": 4, "cut": True}
    usage = msg.usage_metadata
    assert usage["output_token_details"]["reasoning"] == 4
    assert 4 < usage["output_tokens"] <= 4 + 24
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    chunks = list(llm.stream(PREFILLED, thinking_budget=2))
    kinds = ["reasoning" if c.additional_kwargs.get("reasoning_content") else "answer" for c in chunks if c.content
             or c.additional_kwargs.get("reasoning_content")]
    assert kinds[0] == "reasoning" and "answer" in kinds
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.usage_metadata["output_token_details"]["reasoning"] == 2
    assert full.content.strip()


async def test_the_client_side_cut_async_is_the_same_code(server):
    """``ainvoke``/``astream`` of the fallback run the sync implementation in a worker thread."""
    llm = local_deepseek(temperature=0, max_tokens=24, thinking_budget=3, budget_support="client")
    msg = await llm.ainvoke(PREFILLED)
    assert msg.response_metadata["thinking_budget"] == {"reasoning_tokens": 3, "cut": True}
    assert msg.additional_kwargs["reasoning_content"].strip() and msg.content.strip()
    chunks = [c async for c in llm.astream(PREFILLED)]
    kinds = ["reasoning" if c.additional_kwargs.get("reasoning_content") else "answer" for c in chunks
             if c.content or c.additional_kwargs.get("reasoning_content")]
    assert kinds[0] == "reasoning" and "answer" in kinds and kinds == sorted(kinds, key=lambda k: k != "reasoning")
    assert sum((c for c in chunks[1:]), chunks[0]).usage_metadata["output_token_details"]["reasoning"] == 3

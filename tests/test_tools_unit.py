"""The structured-output tool path without a server: the payload dsagent sends for bound tools
(schema, hint, history), and how a constrained answer becomes tool calls, whole or streamed."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool

from dsagent import LocalChatDeepSeek, LocalChatOpenAI
from dsagent.clients import demo_tools
from dsagent.clients.tools import ANSWER, ToolStream, convert_result, without_repeats

PARAMS = {"model": "m", "api_key": "k", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0}


add, multiply = tool(demo_tools.add), tool(demo_tools.multiply)


def _payload(cls, messages, **bound):
    llm = cls(**PARAMS)
    kwargs = llm.bind_tools([add, multiply], **bound).kwargs
    return llm._get_request_payload(messages, **kwargs), kwargs


@pytest.mark.parametrize("cls", [LocalChatDeepSeek, LocalChatOpenAI])
@pytest.mark.parametrize(("choice", "names"), [(None, ["add", "multiply", ANSWER]), ("any", ["add", "multiply"]),
                                               ("multiply", ["multiply"])])
def test_bound_tools_become_a_schema_and_a_hint_not_vllm_tools(cls, choice, names):
    payload, _ = _payload(cls, [HumanMessage("What is 2 + 3?")], tool_choice=choice)
    assert "tools" not in payload and "tool_choice" not in payload
    schema = payload["extra_body"]["structured_outputs"]["json"]
    assert [b["properties"]["name"]["const"] for b in schema["anyOf"]] == names
    assert schema["anyOf"][0]["properties"]["arguments"]["required"] == ["a", "b"]
    assert payload["messages"][0]["role"] == "system"
    assert "- add: Add two integers and return the sum." in payload["messages"][0]["content"]


def test_tool_choice_none_sends_no_constraint():
    payload, _ = _payload(LocalChatOpenAI, [HumanMessage("Hi")], tool_choice="none")
    assert "structured_outputs" not in (payload.get("extra_body") or {})
    assert payload["messages"] == [{"role": "user", "content": "Hi"}]


def test_history_calls_and_results_go_back_as_plain_turns():
    history = [HumanMessage("What is 2 + 3?"),
               AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
               ToolMessage("5", tool_call_id="c1")]
    payload, _ = _payload(LocalChatDeepSeek, history)
    assert [m["role"] for m in payload["messages"]] == ["system", "user", "assistant", "user"]
    assert json.loads(payload["messages"][2]["content"]) == {"name": "add", "arguments": {"a": 2, "b": 3}}
    assert payload["messages"][3]["content"] == "add(a=2, b=3) = 5"
    assert all("tool_calls" not in m and m["role"] != "tool" for m in payload["messages"])


def _result(text: str) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=AIMessage(text, response_metadata={"finish_reason": "stop"}))])


def test_a_constrained_answer_becomes_a_tool_call_or_content():
    call = convert_result(_result('{"name":"add","arguments":{"a":2,"b":3}}')).generations[0].message
    assert call.content == "" and call.response_metadata["finish_reason"] == "tool_calls"
    assert [(c["name"], c["args"], c["id"].startswith("call_")) for c in call.tool_calls] == [("add", {"a": 2, "b": 3}, True)]
    answer = convert_result(_result(f'{{"name":"{ANSWER}","arguments":{{"answer":"5"}}}}')).generations[0].message
    assert (answer.content, answer.tool_calls) == ("5", [])
    cut = convert_result(_result('{"name":"add","argu')).generations[0].message  # cut off by max_tokens
    assert (cut.content, cut.tool_calls) == ('{"name":"add","argu', [])


@pytest.mark.parametrize("pieces", [['{"name":"add","arguments":{"a":2,', '"b":3}}'],
                                    ['{"na', 'me": "add", ', '"arguments": {"a": 2, "b"', ': 3}', "\n}"]])
def test_a_streamed_call_aggregates_to_one_tool_call(pieces):
    stream = ToolStream()
    chunks = [stream.convert(ChatGenerationChunk(message=AIMessageChunk(content=p))) for p in pieces]
    tail = stream.tail()
    full = chunks[0].message
    for c in chunks[1:] + ([tail] if tail else []):
        full += c.message
    assert full.content == ""
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 2, "b": 3})]


def test_a_streamed_answer_arrives_as_content_deltas():
    stream = ToolStream()
    pieces = [f'{{"name":"{ANSWER}","arguments":{{"answer":"Pa', 'ris \\"', 'city\\""}}']
    deltas = [stream.convert(ChatGenerationChunk(message=AIMessageChunk(content=p))).message.content for p in pieces]
    assert deltas == ["Pa", 'ris "', 'city"'] and stream.tail() is None


def _open_turn(*calls):
    messages = [HumanMessage("Add 3 and 4, then multiply by 4.")]
    for i, (name, args) in enumerate(calls):
        messages += [AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"c{i}"}]),
                     ToolMessage("7", tool_call_id=f"c{i}")]
    return messages


def test_a_repeated_call_is_asked_again_without_the_tools_already_called():
    kwargs = {"tools": [{"type": "function", "function": {"name": n}} for n in ("add", "multiply")]}
    messages = _open_turn(("add", {"a": 3, "b": 4}))
    same = convert_result(_result('{"name":"add","arguments":{"a":3,"b":4}}'))
    other = convert_result(_result('{"name":"add","arguments":{"a":7,"b":4}}'))
    again = without_repeats(messages, same, kwargs)
    assert [t["function"]["name"] for t in again["tools"]] == ["multiply"]
    assert without_repeats(messages, other, kwargs) is None  # "args": a new call of the same tool is fine
    assert [t["function"]["name"] for t in without_repeats(messages, other, kwargs, "name")["tools"]] == ["multiply"]
    assert without_repeats(messages, same, kwargs, "allow") is None
    done = _open_turn(("add", {"a": 3, "b": 4}), ("multiply", {"a": 7, "b": 4}))
    assert without_repeats(done, same, kwargs)["tool_choice"] == ANSWER  # no tool left: the answer only
    assert without_repeats(messages, same, {**kwargs, "tool_choice": "required"}) is None


def test_a_server_with_a_tool_parser_gets_the_tools_as_they_are():
    """``native_tools`` (set by local_deepseek when the launch had ``--tool-call-parser``)."""
    llm = LocalChatOpenAI(**PARAMS, native_tools=True)
    payload = llm._get_request_payload([HumanMessage("Hi")], **llm.bind_tools([add], tool_choice="any").kwargs)
    assert payload["tools"][0]["function"]["name"] == "add" and payload["tool_choice"] == "required"
    assert "structured_outputs" not in (payload.get("extra_body") or {})


def test_a_tool_named_like_the_answer_is_refused():
    from dsagent.errors import InvalidOptionError

    @tool
    def reply(text: str) -> str:
        """Reply."""
        return text

    llm = LocalChatOpenAI(**PARAMS)
    with pytest.raises(InvalidOptionError, match="rename the tool"):
        llm._get_request_payload([HumanMessage("Hi")], **llm.bind_tools([reply]).kwargs)

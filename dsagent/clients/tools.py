"""Tool calling for any served model, through vLLM's structured outputs (pure).

vLLM parses tool calls only where a ``--tool-call-parser`` fits the model's template, and none
fits the DeepSeek-R1 distills or the embedded SmolLM2. So dsagent does not send ``tools`` to
vLLM at all: it describes them in a system message and constrains the answer with a JSON schema
(``structured_outputs``, vLLM's guided decoding) that admits exactly

* ``{"name": <one bound tool>, "arguments": <that tool's parameters>}``, or
* ``{"answer": "<text>"}`` (only for ``tool_choice="auto"``),

then turns the JSON back into a normal ``AIMessage`` with ``tool_calls`` or ``content``. With
vLLM's reasoning parser on (R1), the ``<think>`` part stays outside the constraint. Tool calls
and tool results in the history go back as plain text turns, which every chat template accepts.

>>> tools = [{"type": "function", "function": {"name": "add", "description": "Add.",
...           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
>>> [b["properties"]["name"] for b in answer_schema(tools, "required")["anyOf"]]
[{'const': 'add'}]
>>> parse_answer('{"name": "add", "arguments": {"a": 1}}')[1][0]["args"]
{'a': 1}
>>> parse_answer('{"answer": "Hi"}')
('Hi', [])
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

__all__ = ["StreamDecoder", "ToolStream", "answer_schema", "apply_tools", "chosen", "constrained", "convert_result",
           "parse_answer", "tool_call_id"]

_CALL_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_ANSWER_HEAD = re.compile(r'^\s*\{\s*"answer"\s*:\s*"')


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def chosen(tool_choice: Any) -> str | None:
    """``"auto"``, ``"required"``, a tool's name, or ``None`` for ``"none"`` (no constraint).

    >>> chosen({"type": "function", "function": {"name": "add"}}), chosen(None), chosen("none")
    ('add', 'auto', None)
    """
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice in ("none", False):
        return None
    if tool_choice in ("required", "any", True):
        return "required"
    if isinstance(tool_choice, Mapping):
        return str(tool_choice.get("function", {}).get("name") or tool_choice.get("name"))
    return str(tool_choice)


def _params(tool: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(tool.get("parameters") or {"type": "object", "properties": {}})
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    return params


def answer_schema(tools: list[Mapping[str, Any]], choice: str) -> dict[str, Any]:
    """The JSON schema of one turn: a call of one bound tool, or (``auto``) a final answer."""
    functions = [t.get("function", t) for t in tools]
    if choice not in ("auto", "required"):
        functions = [f for f in functions if f["name"] == choice]
    branches: list[dict[str, Any]] = [
        {"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": _params(f)},
         "required": ["name", "arguments"], "additionalProperties": False}
        for f in functions
    ]
    if choice == "auto":
        branches.append({"type": "object", "properties": {"answer": {"type": "string"}},
                         "required": ["answer"], "additionalProperties": False})
    return {"anyOf": branches}


def _signature(f: Mapping[str, Any]) -> str:
    props = _params(f)["properties"]
    args = ", ".join(f'"{k}": {v.get("type", "value")}' for k, v in props.items())
    return f'- {f["name"]}: {f.get("description", "").strip()} Arguments: {{{args}}}'


def _hint(tools: list[Mapping[str, Any]], choice: str) -> str:
    functions = [t.get("function", t) for t in tools]
    lines = ["You can call these tools:", *(_signature(f) for f in functions), "",
             'Reply with JSON only. To call a tool: {"name": "<tool name>", "arguments": {...}}.']
    if choice == "auto":
        lines += ['To answer the user: {"answer": "<your answer>"}.',
                  ("Call a tool when the user's request needs one. Once you have the tool results you need, "
                   "answer with them.")]
    else:
        lines.append(f"Call {'a tool' if choice == 'required' else choice} now.")
    return "\n".join(lines)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") if isinstance(b, Mapping) else str(b) for b in content
                       if not isinstance(b, Mapping) or b.get("type") in (None, "text"))
    return "" if content is None else str(content)


def _history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls as the JSON the model writes; tool results as user turns."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = call.get("function", {})
                names[call.get("id", "")] = fn.get("name", "")
                args = json.loads(fn.get("arguments") or "{}")
                calls.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
            text = _text(m.get("content")).strip()
            out.append({"role": "assistant", "content": "\n".join([text, *calls] if text else calls)})
        elif role == "tool":
            name = names.get(m.get("tool_call_id", ""), "the tool")
            out.append({"role": "user", "content": f"Result of {name}: {_text(m.get('content'))}"})
        else:
            out.append(m)
    return out


def apply_tools(payload: dict[str, Any]) -> bool:
    """Rewrite a chat-completions payload in place for the structured-output tool path.

    Returns whether the answer is constrained (tools bound and ``tool_choice`` not ``none``).
    """
    tools = payload.pop("tools", None)
    choice = chosen(payload.pop("tool_choice", None))
    payload.pop("parallel_tool_calls", None)
    if "messages" in payload:
        payload["messages"] = _history(payload["messages"])
    if not tools or choice is None:
        return False
    messages = payload.get("messages") or []
    hint = _hint(tools, choice)
    if messages and messages[0].get("role") in ("system", "developer"):
        messages[0] = {**messages[0], "content": f"{_text(messages[0]['content'])}\n\n{hint}"}
    else:
        messages.insert(0, {"role": "system", "content": hint})
    payload["messages"] = messages
    extra = dict(payload.get("extra_body") or {})
    extra["structured_outputs"] = {"json": answer_schema(tools, choice), "disable_any_whitespace": True}
    payload["extra_body"] = extra
    return True


def parse_answer(text: str) -> tuple[str, list[dict[str, Any]]]:
    """``(content, tool_calls)`` of a constrained answer; text that is not such JSON stays content."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return text, []
    if isinstance(data, dict) and isinstance(data.get("name"), str) and "arguments" in data:
        args = data["arguments"] if isinstance(data["arguments"], dict) else {}
        return "", [{"name": data["name"], "args": args, "id": tool_call_id(), "type": "tool_call"}]
    if isinstance(data, dict) and isinstance(data.get("answer"), str):
        return data["answer"], []
    return text, []


class StreamDecoder:
    """Turns streamed constrained JSON into content deltas or one tool call's argument deltas.

    >>> d = StreamDecoder()
    >>> [d.feed(x) for x in ('{"name": "add", "argu', 'ments": {"a":', ' 1}', '}')] + [d.close()]
    [[], [('call', 'add'), ('args', '{"a":')], [('args', ' 1')], [], ('args', '}')]
    >>> d = StreamDecoder()
    >>> [d.feed(x) for x in ('{"answer": "Pa', 'ris\\\\n', '"}')] + [d.close()]
    [[('text', 'Pa')], [('text', 'ris\\n')], [], None]
    """

    def __init__(self) -> None:
        self.buf = ""
        self.mode = ""  # "", "call", "answer", "done"
        self.sent = 0  # chars of the argument text (call) or decoded answer (answer) already sent

    def feed(self, text: str) -> list[tuple[str, ...]]:
        self.buf += text
        events: list[tuple[str, ...]] = []
        if not self.mode:
            head = _CALL_HEAD.match(self.buf)
            if head:
                self.mode, self.buf = "call", self.buf[head.end():]
                events.append(("call", json.loads(f'"{head.group(1)}"')))
            elif head := _ANSWER_HEAD.match(self.buf):
                self.mode, self.buf = "answer", self.buf[head.end():]
            else:
                return events
        delta = self._delta()
        return events + ([delta] if delta else [])

    def _delta(self) -> tuple[str, ...] | None:
        if self.mode == "call":
            keep = len(self.buf) - len(self.buf.rstrip().rstrip("}").rstrip())
            ready = self.buf[: len(self.buf) - keep] if keep else self.buf
            # hold back a trailing run of "}" and blanks: the last "}" closes the outer object
            delta, self.sent = ready[self.sent:], max(self.sent, len(ready))
            return ("args", delta) if delta else None
        if self.mode == "answer":
            decoded = _decode_prefix(self.buf)
            delta, self.sent = decoded[self.sent:], max(self.sent, len(decoded))
            return ("text", delta) if delta else None
        return None

    def close(self) -> tuple[str, ...] | None:
        """The held-back end of a call's arguments (``None`` when nothing is left)."""
        if self.mode != "call":
            return None
        rest = self.buf.rstrip()
        rest = rest.removesuffix("}")
        delta = rest[self.sent:]
        return ("args", delta) if delta else None


def _decode_prefix(body: str) -> str:
    """The decoded text of a JSON string's body seen so far (stops at the closing quote)."""
    end, i = len(body), 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == '"':
            end = i
            break
        i += 1
    part = body[:end]
    for cut in range(7):  # an escape may be cut mid-way: drop up to 6 trailing chars
        try:
            return json.loads(f'"{part[: len(part) - cut]}"')
        except ValueError:
            continue
    return ""


def constrained(kwargs: Mapping[str, Any]) -> bool:
    """Whether a call's keyword arguments (what ``bind_tools`` bound) ask for the tool path."""
    return bool(kwargs.get("tools")) and chosen(kwargs.get("tool_choice")) is not None


def convert_result(result: ChatResult) -> ChatResult:
    """A constrained answer's JSON turned into ``tool_calls`` or plain ``content``."""
    generations = []
    for gen in result.generations:
        msg = gen.message
        if isinstance(msg, AIMessage) and isinstance(msg.content, str):
            content, calls = parse_answer(msg.content)
            meta = dict(msg.response_metadata)
            if calls:
                meta["finish_reason"] = "tool_calls"
            msg = AIMessage(content=content, tool_calls=calls, additional_kwargs=msg.additional_kwargs,
                            response_metadata=meta, usage_metadata=msg.usage_metadata, id=msg.id)
        generations.append(ChatGeneration(message=msg, generation_info=gen.generation_info))
    return ChatResult(generations=generations, llm_output=result.llm_output)


class ToolStream:
    """Streamed chunks of a constrained answer, re-cut as content or ``tool_call_chunks``."""

    def __init__(self) -> None:
        self.decoder = StreamDecoder()
        self.id = tool_call_id()

    def _chunk(self, like: AIMessageChunk | None, events: list[tuple[str, ...]]) -> AIMessageChunk:
        text = "".join(e[1] for e in events if e[0] == "text")
        name = next((e[1] for e in events if e[0] == "call"), None)
        args = "".join(e[1] for e in events if e[0] == "args")
        calls = []
        if name is not None or args:
            calls = [{"name": name, "args": args, "id": self.id if name is not None else None, "index": 0,
                      "type": "tool_call_chunk"}]
        if like is None:
            return AIMessageChunk(content=text, tool_call_chunks=calls)
        return AIMessageChunk(content=text, tool_call_chunks=calls, additional_kwargs=like.additional_kwargs,
                              response_metadata=like.response_metadata, usage_metadata=like.usage_metadata,
                              id=like.id)

    def convert(self, gen: ChatGenerationChunk) -> ChatGenerationChunk:
        msg = gen.message
        text = msg.content if isinstance(msg.content, str) else ""
        events = self.decoder.feed(text) if text else []
        return ChatGenerationChunk(message=self._chunk(msg, events), generation_info=gen.generation_info)

    def tail(self) -> ChatGenerationChunk | None:
        """The last piece: a call's held-back arguments, or raw text that was not the JSON."""
        if not self.decoder.mode:
            rest = self.decoder.buf
            return ChatGenerationChunk(message=AIMessageChunk(content=rest)) if rest else None
        last = self.decoder.close()
        return ChatGenerationChunk(message=self._chunk(None, [last])) if last else None

"""Tool calling for any served model, through vLLM's structured outputs (pure).

vLLM parses tool calls only where a ``--tool-call-parser`` fits the model's template, and none
fits the DeepSeek-R1 distills or the embedded SmolLM2. So dsagent does not send ``tools`` to
vLLM at all: it describes them in a system message and constrains the answer with a JSON schema
(``structured_outputs``, vLLM's guided decoding) that admits exactly

* ``{"name": <one bound tool>, "arguments": <that tool's parameters>}``, or
* ``{"name": "reply", "arguments": {"answer": "<text>"}}`` (only for ``tool_choice="auto"``:
  one shape for both, so that a small model picks between names, not between formats),

then turns the JSON back into a normal ``AIMessage`` with ``tool_calls`` or ``content``. With
vLLM's reasoning parser on (R1), the ``<think>`` part stays outside the constraint. Tool calls
and tool results in the history go back as plain text turns, which every chat template accepts.

>>> tools = [{"type": "function", "function": {"name": "add", "description": "Add.",
...           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
>>> [b["properties"]["name"] for b in answer_schema(tools, "required")["anyOf"]]
[{'const': 'add'}]
>>> parse_answer('{"name": "add", "arguments": {"a": 1}}')[1][0]["args"]
{'a': 1}
>>> parse_answer('{"name": "reply", "arguments": {"answer": "Hi"}}')
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

from ..errors import InvalidOptionError

__all__ = ["StreamDecoder", "ToolStream", "answer_schema", "apply_tools", "chosen", "constrained", "convert_result",
           "parse_answer", "tool_call_id", "without_repeats"]

_CALL_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
ANSWER = "reply"  # of final_answer / respond / reply, the one SmolLM2-135M does not pick over a fitting tool
_ANSWER_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"' + ANSWER + r'"\s*,\s*"arguments"\s*:\s*\{\s*"answer"\s*:\s*"')


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
    if choice == ANSWER:  # every tool was called: the answer only (without_repeats)
        functions = []
    branches: list[dict[str, Any]] = [
        {"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": _params(f)},
         "required": ["name", "arguments"], "additionalProperties": False}
        for f in functions
    ]
    if choice in ("auto", ANSWER):
        answer = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
                  "additionalProperties": False}
        branches.append({"type": "object", "properties": {"name": {"const": ANSWER}, "arguments": answer},
                         "required": ["name", "arguments"], "additionalProperties": False})
    return {"anyOf": branches}


def _signature(f: Mapping[str, Any]) -> str:
    props = _params(f)["properties"]
    args = ", ".join(f'"{k}": {v.get("type", "value")}' for k, v in props.items())
    return f'- {f["name"]}: {f.get("description", "").strip()} Arguments: {{{args}}}'


def _hint(tools: list[Mapping[str, Any]], choice: str) -> str:
    functions = [t.get("function", t) for t in tools]
    lines = ["You have these tools:", *(_signature(f) for f in functions), "",
             'Reply with JSON only. To call a tool: {"name":"<tool name>","arguments":{<its arguments>}}']
    if choice in ("auto", ANSWER):
        lines += [f'To answer the user, call {ANSWER}: {{"name":"{ANSWER}","arguments":{{"answer":"<your answer>"}}}}',
                  ("If a tool can compute or look up what the user asks, call it first and do not guess. "
                   "Never repeat a call you already made: use its result, call the next tool the task needs, "
                   f"or call {ANSWER} once the results give the answer.")]
    if choice != "auto":
        lines.append(f"Call {'a tool' if choice == 'required' else choice} now.")
    return "\n".join(lines)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") if isinstance(b, Mapping) else str(b) for b in content
                       if not isinstance(b, Mapping) or b.get("type") in (None, "text"))
    return "" if content is None else str(content)


def _call_text(call: Mapping[str, Any]) -> tuple[str, str]:
    """``(JSON as the model writes it, "name(a=1, b=2)")`` of an OpenAI-format tool call."""
    fn = call.get("function", {})
    args = json.loads(fn.get("arguments") or "{}")
    shown = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    written = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False, separators=(",", ":"))
    return written, f'{fn.get("name", "")}({shown})'


def _history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls and results in a shape every chat template (and a small model) takes:
    assistant calls as the JSON the model writes, results as user turns ``name(args) = result``."""
    shown: dict[str, str] = {}  # tool call id -> "name(args)"
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            texts = []
            for call in m["tool_calls"]:
                written, shown[call.get("id", "")] = _call_text(call)
                texts.append(written)
            text = _text(m.get("content")).strip()
            out.append({"role": "assistant", "content": "\n".join([text, *texts] if text else texts)})
        elif role == "tool":
            line = f"{shown.get(m.get('tool_call_id', ''), 'the tool')} = {_text(m.get('content'))}"
            out.append({"role": "user", "content": line})
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
    if any(t.get("function", t).get("name") == ANSWER for t in tools):
        raise InvalidOptionError(f"a bound tool is named {ANSWER!r}, the name of the answer in dsagent's tool schema",
                                 "rename the tool", option="tools", value=ANSWER)
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
        if data["name"] == ANSWER and isinstance(args.get("answer"), str):
            return args["answer"], []
        return "", [{"name": data["name"], "args": args, "id": tool_call_id(), "type": "tool_call"}]
    return text, []


class StreamDecoder:
    """Turns streamed constrained JSON into content deltas or one tool call's argument deltas.

    >>> d = StreamDecoder()
    >>> [d.feed(x) for x in ('{"name": "add", "argu', 'ments": {"a":', ' 1}', '}')] + [d.close()]
    [[], [('call', 'add'), ('args', '{"a":')], [('args', ' 1')], [], ('args', '}')]
    >>> d = StreamDecoder()
    >>> [d.feed(x) for x in ('{"name":"reply","arguments":{"answer": "Pa', 'ris\\\\n', '"}}')] + [d.close()]
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
            if head := _ANSWER_HEAD.match(self.buf):
                self.mode, self.buf = "answer", self.buf[head.end():]
            elif (head := _CALL_HEAD.match(self.buf)) and not ANSWER.startswith(head.group(1)):
                self.mode, self.buf = "call", self.buf[head.end():]
                events.append(("call", json.loads(f'"{head.group(1)}"')))
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


def _key(name: str, args: Any) -> str:
    return json.dumps([name, args], sort_keys=True, ensure_ascii=False)


def without_repeats(messages: list[Any], result: ChatResult, kwargs: Mapping[str, Any],
                    repeats: str = "args") -> dict[str, Any] | None:
    """The call's arguments once more without the tools already called in the open turn, when the
    answer (``tool_choice="auto"``) repeats a call whose result is already there; else ``None``.

    Small models copy their previous call instead of taking the next step; a repeat would only
    fetch the same result again, so it is asked once more, with those tools out of the schema
    (none left: the answer only). The whole exchange after the last user turn is the open turn.
    ``repeats``: ``"args"`` (a call with the same name and arguments), ``"name"`` (any call of a
    tool already called: each tool once per turn, what a 135M model needs to take the next step
    of a task) or ``"allow"`` (no check).
    """
    if chosen(kwargs.get("tool_choice")) != "auto":
        return None
    calls = getattr(result.generations[0].message, "tool_calls", None) if result.generations else None
    if not calls:
        return None
    last_user = max((i for i, m in enumerate(messages) if getattr(m, "type", "") == "human"), default=-1)
    done = [c for m in messages[last_user + 1:] for c in getattr(m, "tool_calls", None) or []]
    if repeats == "allow":
        return None
    if repeats == "name" and calls[0]["name"] not in {c["name"] for c in done}:
        return None
    if repeats != "name" and _key(calls[0]["name"], calls[0]["args"]) not in {_key(c["name"], c["args"]) for c in done}:
        return None
    names = {c["name"] for c in done}
    tools = [t for t in kwargs.get("tools") or [] if t.get("function", t).get("name") not in names]
    return {**kwargs, "tools": tools} if tools else {**kwargs, "tool_choice": ANSWER}

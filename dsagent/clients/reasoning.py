"""One shape for a model's reasoning, whatever produced it (pure).

vLLM returns reasoning as ``reasoning`` (current) or ``reasoning_content`` (before 2026), only
when its ``deepseek_r1`` parser is on; without the parser the thinking stays in ``content`` as
``<think>...</think>``, or as ``...</think>`` alone when the chat template already opened the
tag (the R1 distills' templates end the prompt with ``<think>\\n``). dsagent always puts it in
``additional_kwargs["reasoning_content"]``, which LangChain shows as a reasoning content block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ThinkSplitter", "opens_think", "place_reasoning", "reasoning_of", "split_think"]

OPEN, CLOSE = "<think>", "</think>"


def split_think(text: str) -> tuple[str | None, str]:
    """Split raw ``<think>`` output into ``(reasoning, answer)``; ``None`` when there is none.

    >>> split_think("<think>\\nhmm\\n</think>\\n\\nParis.")
    ('hmm', 'Paris.')
    >>> split_think("hmm</think>Paris.")
    ('hmm', 'Paris.')
    >>> split_think("Paris.")
    (None, 'Paris.')
    """
    if CLOSE in text:
        before, after = text.split(CLOSE, 1)
        return before.replace(OPEN, "", 1).strip(), after.lstrip()
    stripped = text.lstrip()
    if stripped.startswith(OPEN):  # cut off (max_tokens) while still thinking
        return stripped[len(OPEN):].strip(), ""
    return None, text


def opens_think(messages: Any) -> bool:
    """Whether the conversation ends in an assistant prefill that opens ``<think>`` (LangChain
    messages or a request's message dicts): the reply then starts inside the reasoning.

    >>> from langchain_core.messages import AIMessage, HumanMessage
    >>> opens_think([HumanMessage("Why?"), AIMessage("<think>\\n")]), opens_think([HumanMessage("<think>")])
    (True, False)
    >>> opens_think([{"role": "assistant", "content": "<think>"}])
    True
    """
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, Mapping):
        mine, content = last.get("role") == "assistant", last.get("content")
    else:
        mine, content = getattr(last, "type", "") == "ai", getattr(last, "content", None)
    return mine and isinstance(content, str) and content.rstrip().endswith(OPEN)


def reasoning_of(fields: Mapping[str, Any]) -> str | None:
    """The reasoning text of a response message or delta, under either field name."""
    for key in ("reasoning_content", "reasoning"):
        value = fields.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def place_reasoning(extra: dict[str, Any], reasoning: str | None) -> None:
    """Put ``reasoning`` under ``extra["reasoning_content"]`` only: never under ``reasoning``, never
    as ``None`` (what the SDKs leave behind when a message or delta has no reasoning).

    >>> extra = {"reasoning": "hmm", "reasoning_content": None}
    >>> place_reasoning(extra, "hmm"); extra
    {'reasoning_content': 'hmm'}
    >>> place_reasoning(extra := {"reasoning_content": None}, None); extra
    {}
    """
    extra.pop("reasoning", None)
    if reasoning is not None:
        extra["reasoning_content"] = reasoning
    elif extra.get("reasoning_content") is None:
        extra.pop("reasoning_content", None)


class ThinkSplitter:
    """Splits streamed content deltas into (reasoning, content) deltas, tags across chunks.

    >>> s = ThinkSplitter()
    >>> [s.feed(x) for x in ("<thi", "nk>a", "b</th", "ink>Pa", "ris")]
    [('', ''), ('a', ''), ('b', ''), ('', 'Pa'), ('', 'ris')]
    """

    def __init__(self, inside: bool = False) -> None:
        self.state = "inside" if inside else "start"
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        reasoning, content = "", ""
        while self.buf:
            if self.state == "start":
                head = self.buf.lstrip()
                if OPEN.startswith(head) and len(head) < len(OPEN):
                    return reasoning, content  # maybe the opening tag: wait for more
                if head.startswith(OPEN):
                    self.buf, self.state = head[len(OPEN):], "inside"
                else:
                    self.state = "content"
            elif self.state == "inside":
                idx = self.buf.find(CLOSE)
                if idx >= 0:
                    reasoning += self.buf[:idx]
                    self.buf, self.state = self.buf[idx + len(CLOSE):].lstrip("\n"), "content"
                    continue
                keep = next((k for k in range(len(CLOSE) - 1, 0, -1) if self.buf.endswith(CLOSE[:k])), 0)
                reasoning += self.buf[: len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep:]
                return reasoning, content
            else:
                content += self.buf
                self.buf = ""
        return reasoning, content

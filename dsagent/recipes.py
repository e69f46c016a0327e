"""The three everyday calls, as plain functions over ``local_deepseek()``.

This is the thin first version (issue 2); structured output, async and batch forms come with
the recipes issue.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ask", "suggest_names", "translate"]


def _llm(llm: Any | None) -> Any:
    if llm is not None:
        return llm
    from .chat import local_deepseek

    return local_deepseek(temperature=0)


def _text(reply: Any) -> str:
    content = reply.content if hasattr(reply, "content") else reply
    text = content if isinstance(content, str) else "".join(
        b.get("text", "") for b in content if isinstance(b, dict)
    )
    return re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()


def ask(question: str, *, llm: Any | None = None) -> str:
    """Answer a question: ``ask("What is the capital of France?")``."""
    return _text(_llm(llm).invoke([("human", question)]))


def translate(text: str, to: str = "French", *, llm: Any | None = None) -> str:
    """Translate ``text`` into the language ``to``, with a translator system prompt."""
    messages = [
        ("system", f"You are a helpful translator. Translate the user's text into {to}. "
                   "Reply with the translation only."),
        ("human", text),
    ]
    return _text(_llm(llm).invoke(messages))


def _names_format(n: int) -> dict[str, Any]:
    """A JSON-schema response format: vLLM's guided decoding makes the reply parse."""
    item = {"type": "string", "pattern": "^[A-Z][A-Za-z'-]{1,15}$"}
    schema = {
        "type": "object",
        "properties": {"names": {"type": "array", "items": item, "minItems": n, "maxItems": n}},
        "required": ["names"],
    }
    return {"type": "json_schema", "json_schema": {"name": "names", "schema": schema, "strict": True}}


def suggest_names(description: str, n: int = 3, *, llm: Any | None = None, attempts: int = 4) -> list[str]:
    """Suggest up to ``n`` distinct names for ``description`` (e.g. "a nickname for a baby boy").

    Structured output through a JSON schema, not tool calling (which R1 distills do not do
    reliably). Small models repeat themselves, so later attempts sample more freely and the
    distinct names are merged.
    """
    base = _llm(llm)
    prompt = f"Suggest {n} different names for: {description}."
    names: dict[str, None] = {}
    for attempt in range(attempts):
        model = base.bind(response_format=_names_format(n))
        if attempt:
            model = model.bind(temperature=0.9, seed=attempt)
        try:
            found = json.loads(_text(model.invoke([("human", prompt)]))).get("names", [])
        except (json.JSONDecodeError, AttributeError):
            found = []
        for name in found:
            names.setdefault(str(name).strip(), None)
        if len(names) >= n:
            break
    return [x for x in names if x][:n]

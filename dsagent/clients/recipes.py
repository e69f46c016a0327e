"""Recipes: translate, name, answer, over ``local_deepseek()``, as functions and LCEL chains.

Each recipe has a chain (``translate_chain()``), a call (``translate()``), an async call
(``atranslate()``) and a batch call (``translate_batch()``) that sends its requests concurrently
so vLLM batches them. Every function takes ``llm=`` to use another chat model; by default the
running deployment's model is used (greedy for small models, R1's sampling for R1 models).

With a deployment running (tests/test_recipes_smoke.py runs these against a real server)::

    ask("What is the capital of France?")             # 'The capital of France is Paris.'
    suggest_names("a nickname for a baby boy", n=3)   # ['Max', 'Leo', 'Sam']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .reasoning import split_think

__all__ = [
    "aask", "ask", "ask_batch", "ask_chain", "asuggest_names", "atranslate", "names_chain",
    "suggest_names", "suggest_names_batch", "translate", "translate_batch", "translate_chain",
]

TRANSLATOR = "You are a helpful translator. Translate the user's text into {to}. Reply with the translation only."
NAMER = "Suggest {n} different names for: {description}."
DEFAULT_CONCURRENCY = 32
NAME_PATTERN = r"[A-Z][A-Za-z'-]{1,15}"
"""One name as the naming recipe's schema asks for it (and ``grading.check_names`` checks)."""


def default_llm() -> Any:
    """The deployment's chat model; greedy unless the model has its own sampling defaults."""
    from .chat import local_deepseek

    llm = local_deepseek()
    return llm if llm.temperature is not None else llm.model_copy(update={"temperature": 0.0})


def _text(reply: Any) -> str:
    content = reply.content if hasattr(reply, "content") else reply
    if not isinstance(content, str):
        content = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return split_think(content)[1].strip()


def _names_format(n: int) -> dict[str, Any]:
    """A JSON-schema response format: vLLM's guided decoding makes the reply parse."""
    item = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
    schema = {
        "type": "object",
        "properties": {"names": {"type": "array", "items": item, "minItems": n, "maxItems": n}},
        "required": ["names"],
    }
    return {"type": "json_schema", "json_schema": {"name": "names", "schema": schema, "strict": True}}


def _parse_names(reply: Any) -> list[str]:
    try:
        names = json.loads(_text(reply)).get("names", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return [str(x).strip() for x in names if str(x).strip()]


def ask_chain(llm: Any | None = None) -> Any:
    """``{"question": str}`` -> answer text."""
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda

    return ChatPromptTemplate.from_messages([("human", "{question}")]) | (llm or default_llm()) | RunnableLambda(_text)


def translate_chain(llm: Any | None = None) -> Any:
    """``{"text": str, "to": str}`` -> translation (a translator system prompt)."""
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda

    prompt = ChatPromptTemplate.from_messages([("system", TRANSLATOR), ("human", "{text}")])
    return prompt | (llm or default_llm()) | RunnableLambda(_text)


def names_chain(llm: Any | None = None, n: int = 3) -> Any:
    """``{"description": str, "n": int}`` -> list of names (structured output, JSON schema)."""
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda

    prompt = ChatPromptTemplate.from_messages([("human", NAMER)])
    return prompt | (llm or default_llm()).bind(response_format=_names_format(n)) | RunnableLambda(_parse_names)


def ask(question: str, *, llm: Any | None = None) -> str:
    """Answer a question: ``ask("What is the capital of France?")``."""
    return ask_chain(llm).invoke({"question": question})


async def aask(question: str, *, llm: Any | None = None) -> str:
    return await ask_chain(llm).ainvoke({"question": question})


def ask_batch(questions: Sequence[str], *, llm: Any | None = None, max_concurrency: int = DEFAULT_CONCURRENCY) -> list[str]:
    return ask_chain(llm).batch([{"question": q} for q in questions], config={"max_concurrency": max_concurrency})


def translate(text: str, to: str = "French", *, llm: Any | None = None) -> str:
    """Translate ``text`` into the language ``to``."""
    return translate_chain(llm).invoke({"text": text, "to": to})


async def atranslate(text: str, to: str = "French", *, llm: Any | None = None) -> str:
    return await translate_chain(llm).ainvoke({"text": text, "to": to})


def translate_batch(texts: Sequence[str], to: str = "French", *, llm: Any | None = None,
                    max_concurrency: int = DEFAULT_CONCURRENCY) -> list[str]:
    return translate_chain(llm).batch([{"text": t, "to": to} for t in texts], config={"max_concurrency": max_concurrency})


def _merge(names: dict[str, None], found: list[str]) -> None:
    for name in found:
        names.setdefault(name, None)


def _attempts(llm: Any, n: int, attempts: int) -> list[Any]:
    """The chain of each attempt: the first as configured, later ones sampling more freely
    (small models repeat themselves; the distinct names are merged)."""
    chain = names_chain(llm, n)
    return [chain] + [names_chain((llm or default_llm()).bind(temperature=0.9, seed=i), n) for i in range(1, attempts)]


def suggest_names(description: str, n: int = 3, *, llm: Any | None = None, attempts: int = 4) -> list[str]:
    """Up to ``n`` distinct names for ``description`` (e.g. "a nickname for a baby boy").

    Structured output through a JSON schema, not tool calling (which R1 distills do not do
    reliably).
    """
    llm = llm or default_llm()
    names: dict[str, None] = {}
    for chain in _attempts(llm, n, attempts):
        _merge(names, chain.invoke({"description": description, "n": n}))
        if len(names) >= n:
            break
    return list(names)[:n]


async def asuggest_names(description: str, n: int = 3, *, llm: Any | None = None, attempts: int = 4) -> list[str]:
    llm = llm or default_llm()
    names: dict[str, None] = {}
    for chain in _attempts(llm, n, attempts):
        _merge(names, await chain.ainvoke({"description": description, "n": n}))
        if len(names) >= n:
            break
    return list(names)[:n]


def suggest_names_batch(descriptions: Sequence[str], n: int = 3, *, llm: Any | None = None,
                        max_concurrency: int = DEFAULT_CONCURRENCY) -> list[list[str]]:
    from langchain_core.runnables import RunnableLambda

    llm = llm or default_llm()
    one = RunnableLambda(lambda d: suggest_names(d, n, llm=llm))
    return one.batch(list(descriptions), config={"max_concurrency": max_concurrency})

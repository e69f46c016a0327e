"""local_deepseek(): a LangChain chat model bound to the running deployment.

Base URL, key and served model name come from the deployment record, so callers never type
them. One retry layer only: the OpenAI client's own ``max_retries`` (connection errors, 408,
409, 429, 5xx, with backoff) and its ``timeout``; the model returned is the bare chat model, so
``bind_tools`` and ``with_structured_output`` work on it.

=================  ==========  =================================================
parameter          default     meaning
=================  ==========  =================================================
timeout            120 s       per request (a reasoning answer can take minutes: raise it)
max_retries        2           transport retries by the openai client
temperature/top_p  0.6 / 0.95  for DeepSeek-R1 models only (DeepSeek's advice)
=================  ==========  =================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InputError
from .records import Deployment
from .settings import Settings

__all__ = ["local_deepseek"]

R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95}


def _deployment(model: str | None, ensure: bool, settings: Settings) -> Deployment:
    from .up import attach, up

    if ensure:
        return up(model, settings=settings)
    return attach(settings, name=_name_of(model) if model else None)


def _name_of(model: str) -> str:
    from .catalog import resolve

    try:
        return resolve(model).name
    except InputError:
        return model


def local_deepseek(
    model: str | None = None,
    *,
    backend: str = "deepseek",
    ensure: bool = False,
    settings: Settings | None = None,
    **overrides: Any,
) -> Any:
    """A ``ChatDeepSeek`` (default) or ``ChatOpenAI`` (``backend="openai"``) for the deployment.

    >>> llm = local_deepseek()                      # doctest: +SKIP
    >>> llm.invoke("What is the capital of France?").content  # doctest: +SKIP
    'The capital of France is Paris.'
    """
    settings = settings or Settings.load()
    dep = _deployment(model, ensure, settings)
    params: dict[str, Any] = {
        "model": dep.name,
        "api_key": Path(dep.api_key_file).read_text().strip(),
        "base_url": dep.base_url,
        "timeout": 120.0,
        "max_retries": 2,
    }
    if dep.reasoning:
        params.update(R1_SAMPLING)
    params.update(overrides)
    if backend == "deepseek":
        from langchain_deepseek import ChatDeepSeek

        return ChatDeepSeek(**params)
    if backend == "openai":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(**params)
    raise InputError(f"unknown backend {backend!r}", 'use backend="deepseek" or backend="openai"')

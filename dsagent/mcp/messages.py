"""What the MCP tools tell an agent when something is wrong (worded once, here), and the model card.

Every message says what to do next; tests match these constants.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
from mcp.server.mcpserver.exceptions import ToolError

from ..deploy.record.store import Deployment
from ..errors import DsagentError
from ..plan.catalog import resolve
from ..settings import Settings

__all__ = ["NOT_ANSWERING", "NO_DEPLOYMENT_FIX", "STARTING", "TOO_LONG", "UNHEALTHY", "model_card", "tool_error"]

STARTING = "model is starting ({phase}, {elapsed:.0f} s so far), try again in {retry} s"
NO_DEPLOYMENT_FIX = "or restart this MCP server with --up so that it starts one"
TOO_LONG = (
    "request too long for the context: {detail}\n  fix: shorten the text, lower max_tokens, or serve the "
    "model with a larger --max-model-len (now {limit} tokens)"
)
UNHEALTHY = (
    "the model server at {url} is unhealthy (its /health check fails)\n  fix: read `dsagent logs {name}`; "
    "then `dsagent stop {name}` and `dsagent up`"
)
NOT_ANSWERING = (
    "the model server at {url} is not answering ({detail})\n  fix: check it with `dsagent status`; "
    "restart it with `dsagent up`"
)


def _too_long(text: str) -> bool:
    text = text.lower()
    return any(k in text for k in ("maximum context length", "context length", "max_model_len", "too long",
                                   "maximum model length", "input tokens"))


def _detail(exc: Exception) -> str:
    """The server's own words: the ``message`` of an OpenAI-style error body, else the first line."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if msg:
            return str(msg)
    return (str(exc).splitlines() or [""])[0][:500]


def tool_error(exc: Exception, dep: Deployment | None) -> tuple[ToolError | None, bool]:
    """The foreign errors an agent can act on, as a ``ToolError`` (``None`` for the others), and
    whether the deployment should be looked up again (it stopped answering)."""
    url = dep.base_url if dep else "?"
    if isinstance(exc, DsagentError):
        return ToolError(str(exc)), False
    if isinstance(exc, openai.BadRequestError) and _too_long(str(exc)):
        return ToolError(TOO_LONG.format(detail=_detail(exc), limit=dep.max_model_len if dep else "?")), False
    if isinstance(exc, (openai.APIConnectionError, openai.InternalServerError)):
        return ToolError(NOT_ANSWERING.format(url=url, detail=_detail(exc))), True
    if isinstance(exc, openai.APIStatusError):
        return ToolError(f"the model server refused the request ({exc.status_code}): {_detail(exc)}"), False
    return None, False


def model_card(settings: Settings, dep: Deployment | None) -> str:
    """What is served and how to call it, as Markdown."""
    if dep is None:
        return f"# No model is deployed\n\nNothing runs in `{settings.home}`. Start one with `dsagent up`.\n"
    config: dict[str, Any] = {}
    try:
        config = json.loads((Path(dep.model_path) / "config.json").read_text())
    except (OSError, ValueError):
        pass
    description = ""
    try:
        description = resolve(dep.name).description
    except DsagentError:
        pass
    rows = [("served name", dep.name), ("model", dep.model), ("weights", dep.model_path),
            ("architecture", ", ".join(config.get("architectures", [])) or "?"),
            ("layers / hidden size", f"{config.get('num_hidden_layers', '?')} / {config.get('hidden_size', '?')}"),
            ("context length", str(dep.max_model_len or config.get("max_position_embeddings", "?"))),
            ("reasoning model", "yes (R1: answers carry their thinking separately)" if dep.reasoning else "no"),
            ("device", f"{dep.device}, tp {dep.tp}, pp {dep.pp}, dtype {dep.dtype}"),
            ("vLLM", dep.vllm_version or "?"), ("base URL", dep.base_url), ("API key file", dep.api_key_file)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# {dep.name}\n\n{description}\n\n| | |\n|---|---|\n{table}\n\n"
            "Use the tools `ask`, `translate` and `suggest_names`; `deployment_status` tells whether the "
            "model is ready. Any OpenAI-compatible client works too: the base URL and key file are above.\n")

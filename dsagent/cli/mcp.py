"""``dsagent mcp``: serve the deployment to MCP hosts; ``dsagent mcp config``: the host's JSON snippet."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ..settings import Settings
from ._common import port, settings

__all__ = ["add_command", "host_config"]

CLIENTS = {
    "claude": "claude_desktop_config.json (Claude Desktop: Settings > Developer > Edit Config)",
    "cursor": ".cursor/mcp.json in the project, or ~/.cursor/mcp.json",
    "vscode": ".vscode/mcp.json in the workspace",
}


def _entry() -> tuple[str, list[str]]:
    """The absolute command that starts dsagent from the interpreter running now."""
    beside = Path(sys.executable).parent / "dsagent"
    found = str(beside) if beside.exists() else shutil.which("dsagent")
    if found:
        return str(Path(found).absolute()), []
    return str(Path(sys.executable).absolute()), ["-m", "dsagent.cli"]


def host_config(client: str, *, settings: Settings, up: bool = False, model: str | None = None) -> dict[str, Any]:
    """The MCP host's configuration for a stdio ``dsagent mcp`` (absolute paths; the settings it needs)."""
    command, args = _entry()
    args = [*args, "mcp", *(["--up"] if up else []), *(["--model", model] if model else [])]
    env = {**dict(settings.exported), "DSAGENT_HOME": str(settings.home)}
    entry: dict[str, Any] = {"command": command, "args": args, "env": env}
    if client == "vscode":
        return {"servers": {"dsagent": {"type": "stdio", **entry}}}
    return {"mcpServers": {"dsagent": entry}}


def run(args: argparse.Namespace) -> int:
    home = settings()
    if args.mcp_command == "config":
        print(json.dumps(host_config(args.client, settings=home, up=args.up, model=args.model), indent=2))
        print(f"# put this in {CLIENTS[args.client]}", file=sys.stderr)
        return 0
    if args.model:  # a bad name is refused before the MCP SDK and the clients load (seconds on a busy machine)
        from ..deploy.record.names import name_for

        name_for(args.model)
    from ..deploy.launch.options import ServeOptions
    from ..mcp.backend import Backend  # the MCP SDK loads only for this command
    from ..mcp.server import serve
    from ..system.gpus import detect_device

    options = ServeOptions(port=args.model_port, device=detect_device(home)) if args.up else None
    backend = Backend(home, model=args.model, start=args.up, options=options, wait=args.wait)
    serve(backend, http=args.http, host=args.host, port=args.port, share_engine_key=args.share_engine_key)
    return 0


def add_command(subparsers: Any) -> None:
    text = "serve the deployed model to MCP hosts (Claude Desktop, Cursor, VS Code, LangGraph)"
    p = subparsers.add_parser("mcp", help=text, description=text)
    p.add_argument("--http", action="store_true", help="streamable HTTP at /mcp with a bearer token (default: stdio)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--share-engine-key", action="store_true",
                       help="HTTP clients send the deployment's API key (<home>/api_key) instead of the MCP "
                            "server's own token (<home>/mcp_token, the default): they can then call vLLM directly too")
    token.add_argument("--own-token", action="store_true", help=argparse.SUPPRESS)  # old scripts: now the default
    p.add_argument("--up", action="store_true", help="start the model in the background if it is not running")
    p.add_argument("--model", help="which deployment to use (or start, with --up)")
    p.add_argument("--model-port", type=port, default=0, help="vLLM port for --up (default: a free one)")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds a tool call waits for a starting model before it says 'try again' (default 30)")
    p.set_defaults(func=run, mcp_command=None)
    sub = p.add_subparsers(dest="mcp_command")
    c = sub.add_parser("config", help="print the JSON snippet that adds dsagent to an MCP host")
    c.add_argument("--client", choices=sorted(CLIENTS), required=True)
    c.add_argument("--up", action="store_true", help="have the host's server start the model itself")
    c.add_argument("--model", help="the deployment (or model to start)")

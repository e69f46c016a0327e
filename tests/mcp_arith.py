"""A tiny stdio MCP server with one arithmetic tool: another MCP server whose tools a dsagent
agent uses (tests/test_agents.py). Run: ``python tests/mcp_arith.py``."""

import sys
from pathlib import Path

from fastmcp import FastMCP

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's dsagent, like the tests'
from dsagent.clients.demo_tools import add  # noqa: E402

mcp = FastMCP("arith")
mcp.tool(add)


if __name__ == "__main__":
    mcp.run()

"""A tiny stdio MCP server with one arithmetic tool: another MCP server whose tools a dsagent
agent uses (tests/test_agents.py). Run: ``python tests/mcp_arith.py``."""

from fastmcp import FastMCP

mcp = FastMCP("arith")


@mcp.tool
def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


if __name__ == "__main__":
    mcp.run()

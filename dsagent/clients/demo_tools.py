"""The two arithmetic tools of the demos, tests and recipes, as plain typed functions (pure).

Each user wraps them as it needs: ``langchain_core.tools.tool(add)`` for a LangChain agent, or
an MCP server's ``mcp.tool(add)``. The docstrings are the tools' descriptions, what the model
reads to pick a tool.

>>> multiply(add(3, 4), 4)
28
"""

__all__ = ["add", "multiply"]


def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b

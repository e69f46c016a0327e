"""A LangChain agent on the local model, with two arithmetic tools (and, with --mcp, the tools
of another MCP server: any stdio server script, e.g. tests/mcp_arith.py).

    python recipes/agent.py "Add 3 and 4, then multiply the result by 4."
    python recipes/agent.py "What is 3 + 4?" --mcp tests/mcp_arith.py
    python recipes/agent.py "What is the capital of France?" --thinking-budget 256   # R1 models
"""

import argparse
import asyncio
import sys
import warnings

from langchain.agents import create_agent
from langchain_core.tools import tool

import dsagent
from dsagent.clients import demo_tools


add, multiply = tool(demo_tools.add), tool(demo_tools.multiply)


def show(result: dict) -> None:
    for m in result["messages"]:
        calls = ", ".join(f"{c['name']}({c['args']})" for c in getattr(m, "tool_calls", []) or [])
        print(f"{m.type:>5}: {calls or m.content}")


async def with_mcp(question: str, script: str, llm) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # langchain.mcp is in beta
        from fastmcp.client.transports import StdioTransport
        from langchain.mcp import MCPAdapter

    async with MCPAdapter(StdioTransport(command=sys.executable, args=[script])) as adapter:
        agent = create_agent(llm, await adapter.list_tools())
        return await agent.ainvoke({"messages": [("user", question)]}, {"recursion_limit": 12})


parser = argparse.ArgumentParser(description="Run a tool-calling agent on the running dsagent deployment.")
parser.add_argument("question")
parser.add_argument("--mcp", metavar="SERVER.py", help="take the tools from this stdio MCP server instead")
parser.add_argument("--thinking-budget", type=int, default=None, help="reasoning tokens per step (R1 models)")
args = parser.parse_args()
llm = dsagent.local_deepseek(thinking_budget=args.thinking_budget)
if args.mcp:
    show(asyncio.run(with_mcp(args.question, args.mcp, llm)))
else:
    show(create_agent(llm, tools=[add, multiply]).invoke({"messages": [("user", args.question)]},
                                                         {"recursion_limit": 12}))

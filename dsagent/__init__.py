"""dsagent: serve DeepSeek models locally with vLLM and use them from LangChain and MCP agents."""

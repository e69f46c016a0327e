"""Call the running deployment through LangChain's ChatOpenAI: python recipes/call_chatopenai.py"""

import sys

import dsagent

llm = dsagent.local_deepseek(backend="openai")  # a ChatOpenAI bound to the deployment
print(llm.invoke(sys.argv[1] if len(sys.argv) > 1 else "What is the capital of France?").content)

"""Call the running deployment through LangChain's ChatOpenAI.

    python recipes/call_chatopenai.py ["question"] [--max-tokens N]
"""

import argparse

import dsagent

parser = argparse.ArgumentParser(description="Ask the deployment through LangChain's ChatOpenAI.")
parser.add_argument("question", nargs="?", default="What is the capital of France?")
parser.add_argument("--max-tokens", type=int, default=512)
args = parser.parse_args()
llm = dsagent.local_deepseek(backend="openai", max_tokens=args.max_tokens)  # a ChatOpenAI bound to the deployment
print(llm.invoke(args.question).content)

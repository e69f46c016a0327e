"""Call the running deployment through LangChain's ChatOpenAI.

    python recipes/call_chatopenai.py ["question"] [--max-tokens N] [--temperature T]
"""

import argparse

import dsagent

parser = argparse.ArgumentParser(description="Ask the deployment through LangChain's ChatOpenAI.")
parser.add_argument("question", nargs="?", default="What is the capital of France?")
parser.add_argument("--max-tokens", type=int, default=512)
parser.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
args = parser.parse_args()
sampling = {} if args.temperature is None else {"temperature": args.temperature}
llm = dsagent.local_deepseek(backend="openai", max_tokens=args.max_tokens, **sampling)  # a ChatOpenAI bound to the deployment
print(llm.invoke(args.question).content)

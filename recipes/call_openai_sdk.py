"""Call the running deployment with the OpenAI SDK.

    python recipes/call_openai_sdk.py ["question"] [--max-tokens N] [--temperature T]
"""

import argparse
from pathlib import Path

from openai import OpenAI

import dsagent

parser = argparse.ArgumentParser(description="Ask the deployment through the OpenAI SDK.")
parser.add_argument("question", nargs="?", default="What is the capital of France?")
parser.add_argument("--max-tokens", type=int, default=512)
parser.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
args = parser.parse_args()
dep = dsagent.attach()
client = OpenAI(base_url=dep.base_url, api_key=Path(dep.api_key_file).read_text().strip())
reply = client.chat.completions.create(
    model=dep.name,
    messages=[{"role": "user", "content": args.question}],
    max_tokens=args.max_tokens,
    **({} if args.temperature is None else {"temperature": args.temperature}),
)
print(reply.choices[0].message.content)

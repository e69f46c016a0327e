"""Call the running deployment with the OpenAI SDK: python recipes/call_openai_sdk.py ["question"]"""

import sys
from pathlib import Path

from openai import OpenAI

import dsagent

dep = dsagent.attach()
client = OpenAI(base_url=dep.base_url, api_key=Path(dep.api_key_file).read_text().strip())
reply = client.chat.completions.create(
    model=dep.name,
    messages=[{"role": "user", "content": sys.argv[1] if len(sys.argv) > 1 else "What is the capital of France?"}],
)
print(reply.choices[0].message.content)

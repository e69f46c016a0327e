"""Call the running deployment through LangChain's ChatDeepSeek with a system + human pair.

    python recipes/call_chatdeepseek.py "I love programming." [--max-tokens N] [--temperature T]

For DeepSeek-R1 models the system message is folded into the user turn (R1 wants no system
prompt) and the reasoning is in additional_kwargs["reasoning_content"].
"""

import argparse

from langchain_core.messages import HumanMessage, SystemMessage

import dsagent

parser = argparse.ArgumentParser(description="Translate through LangChain's ChatDeepSeek (system + human).")
parser.add_argument("text", nargs="?", default="I love programming.")
parser.add_argument("--max-tokens", type=int, default=512)
parser.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
args = parser.parse_args()
sampling = {} if args.temperature is None else {"temperature": args.temperature}
llm = dsagent.local_deepseek(max_tokens=args.max_tokens, **sampling)  # a ChatDeepSeek bound to the deployment
reply = llm.invoke([
    SystemMessage("You are a helpful translator. Translate the user's text into French."),
    HumanMessage(args.text),
])
if reasoning := reply.additional_kwargs.get("reasoning_content"):
    print(f"(reasoning: {reasoning[:200]}...)")
print(reply.content)

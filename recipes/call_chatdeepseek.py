"""Call the running deployment through LangChain's ChatDeepSeek with a system + human pair.

    python recipes/call_chatdeepseek.py "I love programming."

For DeepSeek-R1 models the system message is folded into the user turn (R1 wants no system
prompt) and the reasoning is in additional_kwargs["reasoning_content"].
"""

import sys

from langchain_core.messages import HumanMessage, SystemMessage

import dsagent

llm = dsagent.local_deepseek()  # a ChatDeepSeek bound to the deployment
reply = llm.invoke([
    SystemMessage("You are a helpful translator. Translate the user's text into French."),
    HumanMessage(sys.argv[1] if len(sys.argv) > 1 else "I love programming."),
])
if reasoning := reply.additional_kwargs.get("reasoning_content"):
    print(f"(reasoning: {reasoning[:200]}...)")
print(reply.content)

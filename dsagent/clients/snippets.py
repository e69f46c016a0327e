"""Ready-to-run snippets for calling a deployment, filled in with its values (pure)."""

from __future__ import annotations

from ..deploy.record.store import Deployment
from .thinking import budget_support

__all__ = ["snippets"]

BUDGET = 512  # the reasoning tokens the R1 snippets allow (vLLM's thinking_token_budget)


def snippets(dep: Deployment) -> dict[str, str]:
    """curl, OpenAI SDK and LangChain examples for ``dep``; the key is read from its file (curl
    takes the header on its standard input, so the key is never on a command line). A reasoning
    deployment whose vLLM enforces it shows the thinking budget in each.

    >>> from dsagent.deploy.record.store import Deployment
    >>> dep = Deployment(name="r1", model="m", model_path="/m", host="127.0.0.1", port=8000, api_key_file="/k",
    ...                  log_file="/l", argv=["--reasoning-parser", "deepseek_r1"], reasoning=True, vllm_version="0.32.0")
    >>> print(snippets(dep)["curl"])
    printf 'Authorization: Bearer %s\\n' "$(cat /k)" | curl http://127.0.0.1:8000/v1/chat/completions -H @- \\
      -H "Content-Type: application/json" \\
      -d '{"model": "r1", "messages": [{"role": "user", "content": "What is the capital of France?"}], "thinking_token_budget": 512}'
    """
    url, model, key_file = dep.base_url, dep.name, dep.api_key_file
    budget = dep.reasoning and budget_support(dep.argv, dep.vllm_version) == "native"
    field = f', "thinking_token_budget": {BUDGET}' if budget else ""
    return {
        "curl": (
            f"printf 'Authorization: Bearer %s\\n' \"$(cat {key_file})\" | curl {url}/chat/completions -H @- \\\n"
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]'
            f"{field}}}'"
        ),
        "openai": (
            "from pathlib import Path\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{url}", api_key=Path("{key_file}").read_text().strip())\n'
            f'reply = client.chat.completions.create(model="{model}",\n'
            '    messages=[{"role": "user", "content": "What is the capital of France?"}]'
            + (f',\n    extra_body={{"thinking_token_budget": {BUDGET}}})  # reasoning tokens at most\n' if budget
               else ")\n")
            + "print(reply.choices[0].message.content)"
        ),
        "langchain": (
            "from dsagent import local_deepseek\n\n"
            f'llm = local_deepseek("{model}"' + (f", thinking_budget={BUDGET}" if budget else "")
            + f")  # a ChatDeepSeek bound to {url}\n"
            'print(llm.invoke("What is the capital of France?").content)'
        ),
    }

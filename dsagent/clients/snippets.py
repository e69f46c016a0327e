"""Ready-to-run snippets for calling a deployment, filled in with its values (pure)."""

from __future__ import annotations

from ..deploy.record.store import Deployment

__all__ = ["snippets"]


def snippets(dep: Deployment) -> dict[str, str]:
    """curl, OpenAI SDK and LangChain examples for ``dep``; the key is read from its file."""
    url, model, key_file = dep.base_url, dep.name, dep.api_key_file
    return {
        "curl": (
            f"curl {url}/chat/completions \\\n"
            f'  -H "Authorization: Bearer $(cat {key_file})" -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}\''
        ),
        "openai": (
            "from pathlib import Path\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{url}", api_key=Path("{key_file}").read_text().strip())\n'
            f'reply = client.chat.completions.create(model="{model}",\n'
            '    messages=[{"role": "user", "content": "What is the capital of France?"}])\n'
            "print(reply.choices[0].message.content)"
        ),
        "langchain": (
            "from dsagent import local_deepseek\n\n"
            f'llm = local_deepseek("{model}")  # a ChatDeepSeek bound to {url}\n'
            'print(llm.invoke("What is the capital of France?").content)'
        ),
    }

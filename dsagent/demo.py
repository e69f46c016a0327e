"""The quick-start demo: bring up the default deployment, make the three calls, leave it running.

``python -m dsagent.demo`` (what ``make demo`` runs).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from dataclasses import replace

from .cli import _print_deployment, _Progress
from .errors import DsagentError, PortInUseError
from .serve import ServeOptions
from .up import detect_device, up


def main() -> int:
    progress = _Progress()
    opts = ServeOptions(port=8000, device=detect_device())
    try:
        try:
            dep = up(options=opts, on_step=progress.step, on_progress=progress)
        except PortInUseError as err:
            progress.step(f"{err.problem}; using a free port instead")
            dep = up(options=replace(opts, port=0), on_step=progress.step, on_progress=progress)
    except DsagentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from .recipes import ask, suggest_names, translate

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
    _print_deployment(dep)
    exe = shutil.which("dsagent") or str(Path(sys.executable).with_name("dsagent"))
    print(f"The server keeps running. Stop it with: {exe} stop {dep.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

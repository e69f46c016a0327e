"""The package surface: a pinned public API, and imports that stay light."""

from __future__ import annotations

import subprocess
import sys

import dsagent

PUBLIC = [
    "AlreadyRunningError", "ChecksumError", "Deployment", "DeploymentError", "DiskSpaceError",
    "DoesNotFitError", "DsagentError", "FetchError", "InputError", "InstallError", "ModelSpec",
    "NoDeploymentError", "NotReadyError", "ParallelismError", "PortInUseError", "ServeOptions",
    "Settings", "StartupError", "StopError", "StreamTimeoutError", "UnknownModelError", "ask", "attach", "fetch",
    "local_deepseek", "resolve", "status", "stop", "suggest_names", "translate", "up",
]


def test_public_api_is_pinned_and_sorted():
    assert dsagent.__all__ == PUBLIC
    assert PUBLIC == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(dsagent, name) is not None


def test_errors_share_one_base_and_carry_the_fix():
    from dsagent import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.DsagentError)
    err = errors.PortInUseError("port 8000 is taken", "use --port auto", port=8000)
    assert str(err) == "port 8000 is taken\n  fix: use --port auto"
    assert err.data["port"] == 8000 and err.remedy == "use --port auto"


def test_import_and_help_do_not_load_heavy_modules():
    code = (
        "import sys, dsagent, dsagent.cli\n"
        "dsagent.cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'vllm', 'transformers', 'langchain_core', 'openai') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_verb(cli):
    out = cli("--help")
    assert out.returncode == 0
    for verb in ("up", "serve", "fetch", "status", "ps", "logs", "stop", "models"):
        assert verb in out.stdout

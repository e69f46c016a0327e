"""The package surface: a pinned public API that no submodule import can shadow, the layers,
the exception tree, imports that stay light."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dsagent

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(dsagent.__file__).parent

PUBLIC = [
    "AlreadyRunningError", "AmbiguousDeploymentError", "ChecksumError", "ConversionError", "CpuPlan", "Deployment",
    "DeploymentError", "DeploymentFailedError", "DiskSpaceError", "DoesNotFitError", "DsagentError", "FetchError",
    "FetchResult", "GpuPlan", "InputError", "InstallError", "InvalidOptionError", "JoinError", "LayoutChoice",
    "LocalChatDeepSeek",
    "LocalChatOpenAI", "ModelSpec", "NoDeploymentError", "NotReadyError", "ParallelismError", "PortInUseError",
    "RestartPolicy", "RouterError", "ServeOptions", "Settings", "SourceError", "StartupError", "State", "StopError", "StopResult",
    "StreamTimeoutError", "UnknownModelError", "UnreadableRecordError", "ask", "attach", "choose_layout", "estimate",
    "fetch", "local_deepseek", "plan_cpu",
    "plan_gpu", "recommend", "resolve", "status", "stop", "suggest_names", "translate", "up",
]
FUNCTIONS = {"ask", "attach", "choose_layout", "estimate", "fetch", "local_deepseek", "plan_cpu", "plan_gpu", "recommend",
             "resolve",
             "status", "stop", "suggest_names", "translate", "up"}

# Each layer may import only from itself and the layers before it.
LAYERS = [
    {"errors", "settings", "files", "__init__"},
    {"system"},
    {"plan"},
    {"weights"},
    {"deploy"},
    {"router"},
    {"clients"},
    {"mcp", "cli", "demo", "console"},
]


def test_public_api_is_pinned_and_sorted():
    assert dsagent.__all__ == PUBLIC == sorted(PUBLIC)


def test_no_submodule_import_shadows_an_export():
    """Import every submodule first (as the CLI and the MCP server do), then check each export:
    a function stays the function, a class the class, never a module (the bug of the flat layout:
    after ``import dsagent.up``, ``dsagent.up()`` raised "'module' object is not callable")."""
    code = (
        "import importlib, inspect, json, pkgutil, types, dsagent\n"
        "for m in pkgutil.walk_packages(dsagent.__path__, 'dsagent.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "out = {}\n"
        "for name in dsagent.__all__:\n"
        "    v = getattr(dsagent, name)\n"
        "    home = importlib.import_module('dsagent.' + dsagent._EXPORTS[name])\n"
        "    kind = 'module' if isinstance(v, types.ModuleType) else 'class' if inspect.isclass(v) else "
        "'function' if inspect.isfunction(v) else type(v).__name__\n"
        "    out[name] = [kind, v is getattr(home, name)]\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=180)
    kinds = json.loads(out.stdout)
    assert set(kinds) == set(PUBLIC)
    for name, (kind, same) in kinds.items():
        assert kind == ("function" if name in FUNCTIONS else "class"), (name, kind)
        assert same, f"dsagent.{name} is not the object its module defines"


def _imports(path: Path) -> list[str]:
    """The dsagent subpackages (or top modules) a module imports, relative imports resolved."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = parts[:-1]  # a module's package; for an __init__, the package itself
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            target = base + node.module.split(".") if node.module else base or ["__init__"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dsagent":
            target = node.module.split(".")[1:]
        elif isinstance(node, ast.Import):
            target = next((a.name.split(".")[1:] for a in node.names if a.name.startswith("dsagent.")), None)
            if target is None:
                continue
        else:
            continue
        out.append(target[0] if target else "__init__")
    return out


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_imports_only_from_its_layer_and_below():
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue  # the facade: its exports load lazily from every layer
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for top in _imports(path):
            assert _layer(top) <= _layer(own), f"{path.relative_to(PACKAGE)} imports dsagent.{top}, a higher layer"
            checked += 1
    assert checked > 100


ROOMS = ["record", "launch", "supervise|nodes", "up|status|stop"]
"""``dsagent/deploy``'s rooms, lowest first: a room imports only from rooms before it (or itself)."""


def _room(parts: tuple[str, ...]) -> int:
    return next(i for i, names in enumerate(ROOMS) if parts[0].removesuffix(".py") in names.split("|"))


def test_deploy_rooms_import_downward_and_stay_small():
    deploy = PACKAGE / "deploy"
    checked = 0
    for path in deploy.rglob("*.py"):
        if path == deploy / "__init__.py":
            continue
        own = path.relative_to(deploy).parts
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = list(own[:-1])[: len(own) - 1 - (node.level - 1)] if node.level <= len(own) else None
            if base is None:
                continue  # above deploy/: the lower layers, checked by the test above
            target = base + (node.module.split(".") if node.module else [])
            if not target:
                continue
            assert _room(tuple(target)) <= _room(own), f"deploy/{'/'.join(own)} imports deploy.{'.'.join(target)}"
            checked += 1
    assert checked > 40
    for room in deploy.iterdir():
        if room.is_dir() and room.name != "__pycache__":
            modules = [m for m in room.glob("*.py") if m.name != "__init__.py"]
            assert len(modules) <= 8, f"deploy/{room.name} holds {len(modules)} modules"


def test_modules_and_functions_stay_readable():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                assert "Long" in (ast.get_docstring(node) or ""), f"{path}:{node.name} is long without a reason"


def test_errors_are_one_tree_with_typed_data_and_only_leaves_are_raised():
    from dsagent import errors

    classes = {name: getattr(errors, name) for name in errors.__all__}
    assert all(issubclass(c, errors.DsagentError) for c in classes.values())
    inner = {name for name, c in classes.items() if any(o is not c and issubclass(o, c) for o in classes.values())}
    assert inner == {"DsagentError", "InputError", "FetchError", "DeploymentError"}
    err = errors.PortInUseError("port 8000 is taken", "use --port auto", port=8000, pid=42)
    assert str(err) == "port 8000 is taken\n  fix: use --port auto"
    assert (err.port, err.pid, err.cmdline, err.remedy) == (8000, 42, None, "use --port auto")
    raised = set()
    for path in PACKAGE.rglob("*.py"):
        raised |= set(re.findall(r"raise (\w+Error)\(", path.read_text()))
        raised |= set(re.findall(r"return (\w+Error)\(", path.read_text()))
    ours = raised & set(classes)
    assert ours >= {"PortInUseError", "DoesNotFitError", "SourceError", "NoDeploymentError"}
    assert not ours & inner, f"inner classes raised: {ours & inner}"
    for name in ours:  # every leaf documents its data in the tree of the module docstring
        assert name in (errors.__doc__ or "")


def _env_reads(path: Path) -> set[str]:
    """Upper-case names a module reads with ``X.get("NAME")``, ``getenv("NAME")`` or ``X["NAME"]``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv") \
                and node.args and isinstance(node.args[0], ast.Constant):
            key = node.args[0].value
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        if isinstance(key, str) and re.fullmatch(r"[A-Z][A-Z0-9_]{3,}", key):
            names.add(key)
    return names


def test_environment_is_read_only_by_settings():
    from dsagent.settings import EXPORTED, SECRETS

    variables = set(EXPORTED) | set(SECRETS) | {"XDG_CACHE_HOME"}
    assert _env_reads(PACKAGE / "settings.py") >= variables
    for path in PACKAGE.rglob("*.py"):
        if path.name != "settings.py":
            assert not _env_reads(path) & variables, f"{path} reads {_env_reads(path) & variables}"


def test_processes_are_started_in_one_place():
    starters = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if re.search(r"subprocess\.(run|Popen|call|check_output)", p.read_text())]
    assert starters == ["system/procs.py"]


def test_public_functions_take_settings_by_keyword():
    for name in sorted(FUNCTIONS):
        params = inspect.signature(getattr(dsagent, name)).parameters
        if "settings" in params:
            assert params["settings"].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_import_and_help_do_not_load_heavy_modules():
    code = (
        "import sys, dsagent, dsagent.cli\n"
        "dsagent.cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'vllm', 'transformers', 'langchain_core', 'openai', 'mcp') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_verb(cli):
    """Each verb on a line of its own with its help (a substring test passed for "up" in "usage")."""
    out = cli("--help")
    assert out.returncode == 0
    listed = re.findall(r"^    ([a-z]+) +\S", out.stdout, re.M)
    assert listed == ["up", "serve", "join", "fetch", "estimate", "status", "ps", "logs", "stop", "models", "router",
                      "mcp", "service", "console"], out.stdout

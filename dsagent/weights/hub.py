"""hub: the one place dsagent talks to model hubs (Hugging Face, an HF mirror, ModelScope).

A fetch is a plan, then a download::

    p = plan("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")   # lists files; downloads nothing
    print(p.table())                                       # sizes, cached, disk needed vs free
    got = download(p)                                      # refuses when the disk is too small

or both at once, falling back from source to source: ``fetch_model(repo_id)``. Which sources,
in which order, and what each lists: ``dsagent.weights.sources``. Every downloaded file is
checked against the size and sha256 (LFS files) or git blob id (small files) the source
published (``manifest.problems``), and a bad one is fetched once more, then refused by name.
Ids that no hub client would send are refused before any request (``sources.check_repo_id``);
a failure's fix matches its kind (``sources.remedy``); the only progress display is dsagent's
own (``progress.DiskProgress``): the clients' bars are silenced.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ChecksumError, DiskSpaceError, FetchError, SourceError
from ..settings import Settings
from .manifest import problems
from .progress import DiskProgress
from .sources import (
    Failure,
    Listing,
    Source,
    check_repo_id,
    failure,
    is_weight,
    list_files,
    remedy,
    sources,
)

__all__ = ["Fetched", "Plan", "disk_free", "download", "fetch_model", "plan"]

HEADROOM_MIN = 64 << 20  # bytes kept free beyond the download: logs, locks, the next write
HEADROOM_FRACTION = 0.02
GiB = 1 << 30

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """A download before it happens: files, what is cached, disk needed vs free (the dry run)."""

    listing: Listing
    cache_dir: Path
    folder: Path
    cached: frozenset[str]
    free: int
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def to_download(self) -> int:
        return sum(f.size for f in self.listing.files if f.path not in self.cached)

    @property
    def needed(self) -> int:
        """Bytes the disk must have free: the download plus headroom (0 when all is cached)."""
        todo = self.to_download
        return todo + max(HEADROOM_MIN, int(todo * HEADROOM_FRACTION)) if todo else 0

    @property
    def fits(self) -> bool:
        return self.free >= self.needed

    def to_json(self) -> dict[str, Any]:
        lst = self.listing
        return {
            "repo_id": lst.repo_id, "source": lst.source.name, "endpoint": lst.source.endpoint,
            "revision": lst.revision, "commit": lst.commit, "folder": str(self.folder),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "cached": f.path in self.cached}
                      for f in lst.files],
            "total_bytes": lst.total, "download_bytes": self.to_download, "needed_bytes": self.needed,
            "free_bytes": self.free, "fits": self.fits, "skipped": [{"source": s, "reason": r} for s, r in self.skipped],
        }

    def table(self) -> str:
        """The dry run as text: one line per file, then the totals and the disk verdict."""
        lst = self.listing
        width = max(len(f.path) for f in lst.files)
        lines = [f"{lst.repo_id} @ {lst.commit} from {lst.source.name} ({lst.source.endpoint})"]
        lines += [f"  skipped {s}: {r}" for s, r in self.skipped]
        for f in lst.files:
            lines.append(f"  {f.path:<{width}}  {_size(f.size):>10}  {'cached' if f.path in self.cached else 'to fetch'}")
        lines.append(f"  {'total':<{width}}  {_size(lst.total):>10}  {len(lst.files)} files, "
                     f"{_size(self.to_download)} to fetch into {self.folder}")
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"  disk: needs {_size(self.needed)} free, {_size(self.free)} available: {verdict}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Fetched:
    """A finished, verified download: the folder vLLM loads and the commit to pin."""

    path: Path
    listing: Listing
    downloaded: int
    refetched: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0

    @property
    def commit(self) -> str:
        return self.listing.commit


def _size(n: int) -> str:
    """Bytes for people.

    >>> _size(1536), _size(3 * GiB)
    ('1.5 KiB', '3.00 GiB')
    """
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


# -- where things live ---------------------------------------------------------------------------

def _folder(source: Source, repo_id: str, commit: str, cache_dir: Path) -> Path:
    org_name = repo_id.replace("/", "--")
    if source.kind == "hf":
        return cache_dir / f"models--{org_name}" / "snapshots" / commit
    return cache_dir / "models" / org_name / "snapshots" / commit


def disk_free(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (its nearest existing parent)."""
    for p in [path, *path.parents]:
        if p.exists():
            return shutil.disk_usage(p).free
    return shutil.disk_usage("/").free


# -- plans --------------------------------------------------------------------------------------

def plan(repo_id: str, *, revision: str | None = None, order: str | Sequence[str] | None = None,
         mirror: str | None = None, endpoints: Mapping[str, str] | None = None,
         log: Log | None = None, weights: bool = True, settings: Settings | None = None,
         force: bool = False) -> Plan:
    """The dry run: the first source that answers, its files, what is cached, disk needed vs free.

    ``weights=False`` plans only config, tokenizer and template (a ``--dummy-weights`` rehearsal).
    Sources passed over are in ``Plan.skipped`` (its table shows them), not logged. ``force``:
    plan to fetch every file again, cached or not (``fetch --force --dry-run``).
    """
    check_repo_id(repo_id)
    settings = settings or Settings.load()
    found = sources(order, mirror, endpoints, settings=settings)
    return next(_plans(repo_id, revision, found, [], weights, settings, force))


def _plan_for(listing: Listing, skipped: Sequence[tuple[str, str]], weights: bool, settings: Settings,
              force: bool = False) -> Plan:
    if not weights:
        listing = replace(listing, files=tuple(f for f in listing.files if not is_weight(f.path)))
    cache = settings.hf_cache if listing.source.kind == "hf" else settings.modelscope_cache
    folder = _folder(listing.source, listing.repo_id, listing.commit, cache)
    cached = frozenset() if force else frozenset(
        f.path for f in listing.files if (folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size)
    return Plan(listing, cache, folder, cached, disk_free(cache), tuple(skipped))


def _plans(repo_id: str, revision: str | None, found: Sequence[tuple[str, Source | None, str]],
           failures: list[Failure], weights: bool, settings: Settings, force: bool = False) -> Iterator[Plan]:
    """Plans from each usable source in order; why the others failed piles up in ``failures``."""
    for name, source, reason in found:
        if source is None:
            failures.append(Failure(name, reason, "unusable"))
            continue
        try:
            listing = list_files(source, repo_id, revision)
        except Exception as exc:  # noqa: BLE001 - hub clients raise many types; translated here
            failures.append(failure(exc, source, repo_id, revision))
            continue
        yield _plan_for(listing, [(f.source, f.reason) for f in failures], weights, settings, force)
    raise _no_source(repo_id, failures)


def _no_source(repo_id: str, failures: Sequence[Failure]) -> SourceError:
    """Every source failed: one line per source, and the fix that matches the failures."""
    if len(failures) == 1:
        problem = f"could not fetch {repo_id} from {failures[0].source}: {failures[0].reason}"
    else:
        problem = f"could not fetch {repo_id} from any source:" + "".join(
            f"\n  {f.source}: {f.reason}" for f in failures)
    return SourceError(problem, remedy(failures, repo_id), repo_id=repo_id,
                       skipped=[(f.source, f.reason) for f in failures])


# -- download and verification --------------------------------------------------------------------

def _silent() -> Any:
    """A tqdm class for huggingface_hub that never shows: dsagent's ``DiskProgress`` is the display."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Silent(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def _remove(folder: Path, path: str) -> None:
    """Drop a cached file: the snapshot link and the blob it points to, so it is never served."""
    p = folder / path
    if p.is_symlink():
        target = p.resolve()
        p.unlink()
        target.unlink(missing_ok=True)
    elif p.exists():
        p.unlink()


def _transfer(p: Plan, paths: list[str], force: bool = False, refetch: bool = False) -> Path:
    """Download ``paths`` of the plan; ``force``: again even where cached; ``refetch``: files just removed."""
    lst, src = p.listing, p.listing.source
    if src.kind == "hf":
        from huggingface_hub import hf_hub_download, snapshot_download

        if refetch:
            for path in paths:
                hf_hub_download(lst.repo_id, path, revision=lst.commit, cache_dir=p.cache_dir, endpoint=src.endpoint,
                                force_download=True, tqdm_class=_silent())
            return p.folder
        return Path(snapshot_download(lst.repo_id, revision=lst.commit, cache_dir=p.cache_dir, endpoint=src.endpoint,
                                      allow_patterns=paths, force_download=force, tqdm_class=_silent()))
    from modelscope import snapshot_download as ms_snapshot_download
    from modelscope.hub.callback import ProgressCallback

    if force:  # ModelScope has no force_download: what is cached goes first
        for path in paths:
            _remove(p.folder, path)
    with _modelscope_quiet():
        return Path(ms_snapshot_download(lst.repo_id, revision=lst.revision, cache_dir=str(p.cache_dir),
                                         allow_patterns=paths, endpoint=src.endpoint,
                                         progress_callbacks=[ProgressCallback]))


@contextmanager
def _modelscope_quiet() -> Iterator[None]:
    """Silence ModelScope's own bars and INFO lines (it has no switch for them)."""
    import logging

    mod = sys.modules.get("modelscope_hub._download")
    if mod is None or not hasattr(mod, "tqdm"):
        yield
        return
    original, logger = mod.tqdm, logging.getLogger("modelscope_hub")
    level = logger.level
    mod.tqdm = partial(original, disable=True)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        mod.tqdm = original
        logger.setLevel(level)


def _roots(p: Plan) -> list[Path]:
    """Where the bytes of the plan's download land (HF: the repository's cache folder)."""
    if p.listing.source.kind == "hf":
        return [p.cache_dir / f"models--{p.listing.repo_id.replace('/', '--')}"]
    return [p.cache_dir]  # ModelScope stages files in places of its own; only new files count


def _failed(what: str, lst: Listing, exc: Exception, fix: str) -> SourceError:
    reason = failure(exc, lst.source, lst.repo_id, lst.revision)
    return SourceError(f"{what} {lst.repo_id} from {lst.source.name} failed: {reason.reason}",
                       remedy([reason], lst.repo_id, fix), repo_id=lst.repo_id)


def download(p: Plan, *, progress: bool | None = None, log: Log | None = None, force: bool = False) -> Fetched:
    """Download what the plan lists, verify every file, re-fetch a bad one once, refuse it after.

    Raises ``DiskSpaceError`` before any byte moves when the disk cannot hold the download.
    ``progress``: dsagent's bar on stderr (the clients' are silenced); ``None`` means "when stderr
    is a terminal"; the bar is closed before this returns. ``force``: every file again, cached or not.
    """
    t0 = time.time()
    lst = p.listing
    if not p.fits:
        raise DiskSpaceError(
            f"{lst.repo_id} needs {_size(p.needed)} free in {p.cache_dir} ({_size(p.to_download)} to download "
            f"+ headroom), but only {_size(p.free)} is available",
            f"free {_size(p.needed - p.free)} there, or point HF_HOME (ModelScope: MODELSCOPE_CACHE) at a bigger disk",
            needed=p.needed, free=p.free, path=str(p.cache_dir),
        )
    show = sys.stderr.isatty() if progress is None else progress
    expected = {f.path: f.meta for f in lst.files}
    with DiskProgress(_roots(p), total=p.to_download, desc=f"{lst.repo_id} from {lst.source.name}",
                      enabled=show) as bar:
        try:
            folder = _transfer(p, list(expected), force=force)
        except Exception as exc:  # translated once, here
            raise _failed("downloading", lst, exc,
                          "run the same command again to resume; or choose another source with --source") from exc
        if folder != p.folder:  # ModelScope may reuse an older cache layout
            p = Plan(lst, p.cache_dir, folder, p.cached, p.free, p.skipped)
        bar.note("verifying sha256")
        bad = problems(folder, expected, deep=True)
        if bad:
            _refetch(p, bad, bar, log)
    downloaded = p.to_download + sum(f.size for f in lst.files if f.path in bad)
    return Fetched(folder, lst, downloaded, tuple(sorted(bad)), p.skipped, time.time() - t0)


def _refetch(p: Plan, bad: Mapping[str, str], bar: DiskProgress, log: Log | None) -> None:
    """Fetch the files that failed verification once more; refuse (and remove) them if still bad."""
    lst, folder = p.listing, p.folder
    for path, what in bad.items():
        if log:
            bar.log(log, f"{path}: {what}; fetching it again")
        _remove(folder, path)
    bar.grow(sum(f.size for f in lst.files if f.path in bad))
    try:
        _transfer(p, sorted(bad), refetch=True)
    except Exception as exc:
        raise _failed("re-fetching " + ", ".join(sorted(bad)) + " of", lst, exc, "run the same command again") from exc
    still = problems(folder, {f.path: f.meta for f in lst.files if f.path in bad}, deep=True)
    if still:
        for path in still:
            _remove(folder, path)
        detail = "; ".join(f"{k}: {v}" for k, v in still.items())
        raise ChecksumError(
            f"{lst.repo_id} from {lst.source.name} ({lst.source.endpoint}) served a bad copy twice, removed: {detail}",
            "try another source (--source modelscope, or --mirror URL) or fetch again later",
            files=sorted(still),
        )


def fetch_model(repo_id: str, *, revision: str | None = None, order: str | Sequence[str] | None = None,
                mirror: str | None = None, endpoints: Mapping[str, str] | None = None,
                progress: bool | None = None, log: Log | None = None, weights: bool = True,
                settings: Settings | None = None, force: bool = False) -> Fetched:
    """Plan and download from the first source that works; later sources cover for failed ones.

    ``weights=False`` fetches everything but the weights (config, tokenizer, template); ``force``
    fetches every file again. A full disk stops at once (no other source would help); a source
    that cannot list, download or serve good bytes is skipped with its reason, kept in
    ``Fetched.skipped`` and logged once, when a later source takes over; when none does, the
    ``SourceError`` names each reason once, with the fix that matches them.
    """
    check_repo_id(repo_id)
    settings = settings or Settings.load()
    found = sources(order, mirror, endpoints, settings=settings)
    failures: list[Failure] = []
    errors: list[FetchError] = []
    logged = 0
    try:
        for p in _plans(repo_id, revision, found, failures, weights, settings, force):
            for f in failures[logged:] if log else ():
                log(f"{f.source}: skipped, {f.reason}")  # type: ignore[misc]
            logged = len(failures)
            try:
                got = download(p, progress=progress, log=log, force=force)
            except DiskSpaceError:
                raise
            except FetchError as exc:
                errors.append(exc)
                failures.append(failure(exc, p.listing.source, repo_id, revision))
                continue
            skipped = tuple((f.source, f.reason) for f in failures)
            return Fetched(got.path, got.listing, got.downloaded, got.refetched, skipped, got.seconds)
    except SourceError:
        if len(errors) == 1 and isinstance(errors[0], ChecksumError):
            raise errors[0] from None  # the one source that answered served bad bytes: say which file
        raise
    raise AssertionError("unreachable: _plans raises when it runs out")  # pragma: no cover

"""hub: the one place dsagent talks to model hubs (Hugging Face, an HF mirror, ModelScope).

A fetch is a plan, then a download::

    p = plan("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")   # lists files; downloads nothing
    print(p.table())                                       # sizes, cached, disk needed vs free
    got = download(p)                                      # refuses when the disk is too small

or both at once, falling back from source to source: ``fetch_model(repo_id)``. Which sources,
in which order, and what each lists: ``dsagent.weights.sources``. Every downloaded file is
checked against the size and sha256 (LFS files) or git blob id (small files) the source
published (``manifest.problems``), and a bad one is fetched once more, then refused by name.
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
from .sources import Listing, Source, is_weight, list_files, sources, why

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
         log: Log | None = None, weights: bool = True, settings: Settings | None = None) -> Plan:
    """The dry run: the first source that answers, its files, what is cached, disk needed vs free.

    ``weights=False`` plans only config, tokenizer and template (a ``--dummy-weights`` rehearsal).
    """
    found = sources(order, mirror, endpoints, settings=settings or Settings.load())
    return next(_plans(repo_id, revision, found, log, [], weights, settings or Settings.load()))


def _plan_for(listing: Listing, skipped: Sequence[tuple[str, str]], weights: bool, settings: Settings) -> Plan:
    if not weights:
        listing = replace(listing, files=tuple(f for f in listing.files if not is_weight(f.path)))
    cache = settings.hf_cache if listing.source.kind == "hf" else settings.modelscope_cache
    folder = _folder(listing.source, listing.repo_id, listing.commit, cache)
    cached = frozenset(f.path for f in listing.files if (folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size)
    return Plan(listing, cache, folder, cached, disk_free(cache), tuple(skipped))


def _plans(repo_id: str, revision: str | None, found: Sequence[tuple[str, Source | None, str]], log: Log | None,
           skipped: list[tuple[str, str]], weights: bool, settings: Settings) -> Iterator[Plan]:
    """Plans from each usable source in order; reasons for the others pile up in ``skipped``."""
    for name, source, reason in found:
        if source is not None:
            try:
                listing = list_files(source, repo_id, revision)
            except FetchError as exc:
                reason = exc.problem
            except Exception as exc:  # noqa: BLE001 - hub clients raise many types; translated here
                reason = why(exc, source, repo_id, revision)
            else:
                yield _plan_for(listing, skipped, weights, settings)
                continue
        skipped.append((name, reason))
        if log:
            log(f"{name}: skipped, {reason}")
    reasons = "; ".join(f"{n}: {w}" for n, w in skipped)
    raise SourceError(f"could not fetch {repo_id} from any source ({reasons})",
                      "check the network; set HF_ENDPOINT or pass --mirror URL for a mirror; "
                      "pip install 'dsagent[modelscope]' for ModelScope; or pass a local folder",
                      repo_id=repo_id, skipped=skipped)


# -- download and verification --------------------------------------------------------------------

def _tqdm(progress: bool) -> Any:
    """huggingface_hub's bar (bytes, rate, ETA) on a terminal; a silent one otherwise."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    if progress:
        return hf_tqdm

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


def _transfer(p: Plan, paths: list[str], progress: bool, force: bool = False) -> Path:
    lst, src = p.listing, p.listing.source
    if src.kind == "hf":
        from huggingface_hub import hf_hub_download, snapshot_download

        if force:
            for path in paths:
                hf_hub_download(lst.repo_id, path, revision=lst.commit, cache_dir=p.cache_dir, endpoint=src.endpoint,
                                force_download=True, tqdm_class=_tqdm(progress))
            return p.folder
        return Path(snapshot_download(lst.repo_id, revision=lst.commit, cache_dir=p.cache_dir, endpoint=src.endpoint,
                                      allow_patterns=paths, tqdm_class=_tqdm(progress)))
    from modelscope import snapshot_download as ms_snapshot_download
    from modelscope.hub.callback import ProgressCallback, TqdmCallback

    with _modelscope_quiet(not progress):
        return Path(ms_snapshot_download(lst.repo_id, revision=lst.revision, cache_dir=str(p.cache_dir),
                                         allow_patterns=paths, endpoint=src.endpoint,
                                         progress_callbacks=[TqdmCallback if progress else ProgressCallback]))


@contextmanager
def _modelscope_quiet(quiet: bool) -> Iterator[None]:
    """Silence ModelScope's own bars and INFO lines (it has no switch for them) while ``quiet``."""
    import logging

    mod = sys.modules.get("modelscope_hub._download")
    if not quiet or mod is None or not hasattr(mod, "tqdm"):
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


def download(p: Plan, *, progress: bool | None = None, log: Log | None = None) -> Fetched:
    """Download what the plan lists, verify every file, re-fetch a bad one once, refuse it after.

    Raises ``DiskSpaceError`` before any byte moves when the disk cannot hold the download.
    ``progress``: a bar on stderr; ``None`` means "when stderr is a terminal".
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
    paths = [f.path for f in lst.files]
    try:
        folder = _transfer(p, paths, show)
    except Exception as exc:  # noqa: BLE001 - translated once, here
        raise SourceError(f"downloading {lst.repo_id} from {lst.source.name} failed: "
                          f"{why(exc, lst.source, lst.repo_id, lst.revision)}",
                          "run the same command again to resume; or choose another source with --source",
                          repo_id=lst.repo_id) from exc
    if folder != p.folder:  # ModelScope may reuse an older cache layout
        p = Plan(lst, p.cache_dir, folder, p.cached, p.free, p.skipped)
    expected = {f.path: f.meta for f in lst.files}
    bad = problems(folder, expected, deep=True)
    refetched: list[str] = []
    if bad:
        for path, what in bad.items():
            if log:
                log(f"{path}: {what}; fetching it again")
            _remove(folder, path)
        refetched = sorted(bad)
        try:
            _transfer(p, refetched, show, force=True)
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"re-fetching {', '.join(refetched)} of {lst.repo_id} failed: "
                              f"{why(exc, lst.source, lst.repo_id, lst.revision)}",
                              "run the same command again", repo_id=lst.repo_id) from exc
        still = problems(folder, {k: v for k, v in expected.items() if k in bad}, deep=True)
        if still:
            for path in still:
                _remove(folder, path)
            detail = "; ".join(f"{k}: {v}" for k, v in still.items())
            raise ChecksumError(
                f"{lst.repo_id} from {lst.source.name} ({lst.source.endpoint}) served a bad copy twice, removed: {detail}",
                "try another source (--source modelscope, or --mirror URL) or fetch again later",
                files=sorted(still),
            )
    downloaded = p.to_download + sum(f.size for f in lst.files if f.path in bad)
    return Fetched(folder, lst, downloaded, tuple(refetched), p.skipped, time.time() - t0)


def fetch_model(repo_id: str, *, revision: str | None = None, order: str | Sequence[str] | None = None,
                mirror: str | None = None, endpoints: Mapping[str, str] | None = None,
                progress: bool | None = None, log: Log | None = None, weights: bool = True,
                settings: Settings | None = None) -> Fetched:
    """Plan and download from the first source that works; later sources cover for failed ones.

    ``weights=False`` fetches everything but the weights (config, tokenizer, template).
    A full disk stops at once (no other source would help); a source that cannot list, download
    or serve good bytes is skipped with its reason, kept in ``Fetched.skipped``.
    """
    skipped: list[tuple[str, str]] = []
    failures: list[FetchError] = []
    try:
        settings = settings or Settings.load()
        found = sources(order, mirror, endpoints, settings=settings)
        for p in _plans(repo_id, revision, found, log, skipped, weights, settings):
            try:
                got = download(p, progress=progress, log=log)
            except DiskSpaceError:
                raise
            except FetchError as exc:
                failures.append(exc)
                skipped.append((p.listing.source.name, exc.problem))
                if log:
                    log(f"{p.listing.source.name}: {exc.problem}; trying the next source")
                continue
            return Fetched(got.path, got.listing, got.downloaded, got.refetched, tuple(skipped), got.seconds)
    except FetchError:
        if len(failures) == 1 and isinstance(failures[0], ChecksumError):
            raise failures[0] from None  # the one source that answered served bad bytes: say which file
        raise
    raise AssertionError("unreachable: _plans raises when it runs out")  # pragma: no cover

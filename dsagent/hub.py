"""hub: the one place dsagent talks to model hubs (Hugging Face, an HF mirror, ModelScope).

A fetch is a plan, then a download::

    p = plan("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")   # lists files; downloads nothing
    print(p.table())                                       # sizes, cached, disk needed vs free
    got = download(p)                                      # refuses when the disk is too small

or both at once, falling back from source to source: ``fetch_model(repo_id)``.

==============  ==============================================  =============================
source          endpoint                                        cache
==============  ==============================================  =============================
``hub``         https://huggingface.co                          the standard HF cache
``mirror``      ``--mirror URL``, else ``$HF_ENDPOINT``         the standard HF cache
``modelscope``  ``$MODELSCOPE_ENDPOINT``, else modelscope.cn    ModelScope's own cache
==============  ==============================================  =============================

The order is ``order=`` (``--source``), else ``$DSAGENT_FETCH_SOURCES``, else
``mirror,hub,modelscope`` when a mirror is configured and ``hub,mirror,modelscope`` when not.
Only the files vLLM reads are fetched (see ``select_files``); every one is checked after the
download against the size and sha256 (LFS files) or git blob id (small files) the source
published, and a bad one is fetched once more, then refused by name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from .errors import ChecksumError, DiskSpaceError, FetchError, InputError, InstallError

__all__ = [
    "Fetched", "Listing", "Plan", "RemoteFile", "SOURCES", "Source", "disk_free", "download",
    "fetch_model", "hf_cache_dir", "is_weight", "list_files", "modelscope_cache_dir", "plan", "select_files",
    "sources", "verify_files",
]

SOURCES = ("hub", "mirror", "modelscope")
HF_ENDPOINT = "https://huggingface.co"
MODELSCOPE_ENDPOINT = "https://modelscope.cn"
HEADROOM_MIN = 64 << 20  # bytes kept free beyond the download: logs, locks, the next write
HEADROOM_FRACTION = 0.02
GiB = 1 << 30

Log = Callable[[str], None]

# What vLLM reads from a Hugging Face model folder, besides the weights.
_SUPPORT = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "model.safetensors.index.json",
})

_NO_MIRROR = "no mirror configured (set HF_ENDPOINT or pass --mirror URL)"


def select_files(paths: Iterable[str]) -> list[str]:
    """The files of a repository that vLLM needs: one weight format, config, tokenizer, template.

    Safetensors win; ``*.bin`` is taken only when a repository has no safetensors. Sub-folders
    (``original/``, ...) and other formats (``*.gguf``, ``*.pt``, ``*.pth``) are never fetched.

    >>> select_files(["model.safetensors", "pytorch_model.bin", "config.json", "original/a.pth", "README.md"])
    ['config.json', 'model.safetensors']
    >>> select_files(["pytorch_model.bin", "config.json", "tokenizer.json"])
    ['config.json', 'pytorch_model.bin', 'tokenizer.json']
    """
    top = sorted({p for p in paths if "/" not in p})
    weights = [p for p in top if p.endswith(".safetensors")]
    if not weights:
        weights = [p for p in top if p.startswith("pytorch_model") and p.endswith((".bin", ".bin.index.json"))]
    support = [p for p in top if p in _SUPPORT or p.endswith(".tiktoken")]
    return sorted(set(weights) | set(support))


def is_weight(path: str) -> bool:
    """Whether a file of a repository holds weights (what ``--dummy-weights`` does without).

    >>> [is_weight(p) for p in ("model-00001-of-00002.safetensors", "pytorch_model.bin", "config.json")]
    [True, True, False]
    """
    return path.endswith(".safetensors") or (path.startswith("pytorch_model") and path.endswith(".bin"))


@dataclass(frozen=True)
class RemoteFile:
    """One file as its source describes it: size, and sha256 (LFS) or git blob id (small files)."""

    path: str
    size: int
    sha256: str | None = None
    git_oid: str | None = None


@dataclass(frozen=True)
class Source:
    """Where to ask: ``name`` is one of ``SOURCES``; ``endpoint`` the base URL."""

    name: str
    endpoint: str

    @property
    def kind(self) -> str:
        return "modelscope" if self.name == "modelscope" else "hf"


@dataclass(frozen=True)
class Listing:
    """What a source holds for one repository at one revision (resolved to ``commit``)."""

    source: Source
    repo_id: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)


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

def hf_cache_dir() -> Path:
    """The standard HF cache, read now (``huggingface_hub`` reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def modelscope_cache_dir() -> Path:
    """ModelScope's cache (``$MODELSCOPE_CACHE``, else ``~/.cache/modelscope``), read now."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()


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


# -- sources and their order ---------------------------------------------------------------------

def sources(order: str | Sequence[str] | None = None, mirror: str | None = None,
            endpoints: Mapping[str, str] | None = None) -> list[tuple[str, Source | None, str]]:
    """The sources to try, in order, as ``(name, Source or None, why it is unusable)``.

    ``endpoints`` overrides a source's URL (a private hub, or a test server).

    >>> [(n, s.endpoint if s else why) for n, s, why in sources("hub,mirror", mirror="https://hf-mirror.com")]
    [('hub', 'https://huggingface.co'), ('mirror', 'https://hf-mirror.com')]
    """
    endpoints = dict(endpoints or {})
    env_mirror = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    mirror_url = (mirror or endpoints.get("mirror") or (env_mirror if env_mirror != HF_ENDPOINT else "")).rstrip("/")
    if order is None:
        order = os.environ.get("DSAGENT_FETCH_SOURCES") or ("mirror,hub,modelscope" if mirror_url else "hub,mirror,modelscope")
    names = [n.strip().lower() for n in (order.split(",") if isinstance(order, str) else order) if n.strip()]
    bad = [n for n in names if n not in SOURCES]
    if bad or not names:
        raise InputError(f"unknown fetch source(s) {', '.join(bad) or '(none)'}",
                         f"use a comma-separated order of {', '.join(SOURCES)}, e.g. --source hub,modelscope")
    out: list[tuple[str, Source | None, str]] = []
    for name in dict.fromkeys(names):
        if name == "hub":
            out.append((name, Source(name, endpoints.get("hub", HF_ENDPOINT).rstrip("/")), ""))
        elif name == "mirror":
            out.append((name, Source(name, mirror_url), "") if mirror_url else (name, None, _NO_MIRROR))
        else:
            url = endpoints.get("modelscope") or os.environ.get("MODELSCOPE_ENDPOINT") or MODELSCOPE_ENDPOINT
            out.append((name, Source(name, url.rstrip("/")), ""))
    return out


def _why(exc: BaseException, source: Source, repo_id: str, revision: str | None) -> str:
    """One line saying why a source could not serve the repository."""
    name = type(exc).__name__
    if isinstance(exc, ImportError):
        return "the modelscope package is not installed (pip install 'dsagent[modelscope]')"
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return f"{repo_id} is not there, or is gated/private (log in with `hf auth login` or set HF_TOKEN)"
    if name == "RevisionNotFoundError":
        return f"revision {revision!r} of {repo_id} is not there"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status:
        return f"{source.endpoint} answered HTTP {status}"
    if "connect" in name.lower() or isinstance(exc, ConnectionError):
        return f"cannot connect to {source.endpoint} ({str(exc).splitlines()[0] if str(exc) else name})"
    if "timeout" in name.lower():
        return f"{source.endpoint} timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text}"[:300]


# -- listing -------------------------------------------------------------------------------------

def list_files(source: Source, repo_id: str, revision: str | None = None) -> Listing:
    """Ask one source which files (of those vLLM needs) it holds, with sizes and hashes."""
    if source.kind == "hf":
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise InstallError("huggingface_hub is not installed", "pip install 'huggingface_hub>=1.0'") from None

        info = HfApi(endpoint=source.endpoint).model_info(repo_id, revision=revision, files_metadata=True)
        by_name = {s.rfilename: s for s in info.siblings or []}
        files = tuple(
            RemoteFile(p, int(by_name[p].size or 0), by_name[p].lfs.sha256 if by_name[p].lfs else None,
                       None if by_name[p].lfs else by_name[p].blob_id)
            for p in select_files(by_name)
        )
        listing = Listing(source, repo_id, revision or "main", str(info.sha), files)
    else:
        import modelscope  # noqa: F401  (the package users install; it brings modelscope_hub)
        from modelscope_hub import HubApi

        rev = revision or "master"
        entries = HubApi(endpoint=source.endpoint).list_repo_files(repo_id, "model", revision=rev)
        by_name = {e.path: e for e in entries if not e.is_dir}
        files = tuple(RemoteFile(p, int(by_name[p].size), by_name[p].sha256) for p in select_files(by_name))
        listing = Listing(source, repo_id, rev, rev, files)  # ModelScope pins by branch/tag + sha256s
    if not any(f.path.endswith((".safetensors", ".bin")) for f in listing.files):
        raise FetchError(f"{repo_id} on {source.endpoint} holds no weights vLLM can load (*.safetensors)",
                         "check the repository id; GGUF-only repositories are not supported for hub models")
    return listing


def plan(repo_id: str, *, revision: str | None = None, order: str | Sequence[str] | None = None,
         mirror: str | None = None, endpoints: Mapping[str, str] | None = None,
         log: Log | None = None, weights: bool = True) -> Plan:
    """The dry run: the first source that answers, its files, what is cached, disk needed vs free.

    ``weights=False`` plans only config, tokenizer and template (a ``--dummy-weights`` rehearsal).
    """
    return next(_plans(repo_id, revision, order, mirror, endpoints, log, [], weights))[0]


def _plan_for(listing: Listing, skipped: Sequence[tuple[str, str]], weights: bool = True) -> Plan:
    if not weights:
        listing = replace(listing, files=tuple(f for f in listing.files if not is_weight(f.path)))
    cache = hf_cache_dir() if listing.source.kind == "hf" else modelscope_cache_dir()
    folder = _folder(listing.source, listing.repo_id, listing.commit, cache)
    cached = frozenset(f.path for f in listing.files if (folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size)
    return Plan(listing, cache, folder, cached, disk_free(cache), tuple(skipped))


def _plans(repo_id: str, revision: str | None, order: Any, mirror: str | None,
           endpoints: Mapping[str, str] | None, log: Log | None,
           skipped: list[tuple[str, str]], weights: bool = True) -> Iterator[tuple[Plan, list[tuple[str, str]]]]:
    """Plans from each usable source in order; reasons for the others pile up in ``skipped``."""
    for name, source, why in sources(order, mirror, endpoints):
        if source is not None:
            try:
                listing = list_files(source, repo_id, revision)
            except FetchError as exc:
                why = exc.problem
            except Exception as exc:  # noqa: BLE001 - hub clients raise many types; translated here
                why = _why(exc, source, repo_id, revision)
            else:
                yield _plan_for(listing, skipped, weights), skipped
                continue
        skipped.append((name, why))
        if log:
            log(f"{name}: skipped, {why}")
    reasons = "; ".join(f"{n}: {w}" for n, w in skipped)
    raise FetchError(f"could not fetch {repo_id} from any source ({reasons})",
                     "check the network; set HF_ENDPOINT or pass --mirror URL for a mirror; "
                     "pip install 'dsagent[modelscope]' for ModelScope; or pass a local folder",
                     skipped=list(skipped))


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


def _hash(path: Path, algo: str, size: int) -> str:
    h = hashlib.sha256() if algo == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def verify_files(folder: Path, files: Iterable[RemoteFile]) -> dict[str, str]:
    """Check each file's size and hash against the source's metadata; ``{path: what is wrong}``."""
    bad: dict[str, str] = {}
    for f in files:
        p = folder / f.path
        if not p.is_file():
            bad[f.path] = "missing"
            continue
        size = p.stat().st_size
        if size != f.size:
            bad[f.path] = f"{size} bytes, the source says {f.size}"
        elif f.sha256 and (got := _hash(p, "sha256", size)) != f.sha256:
            bad[f.path] = f"sha256 {got[:12]}... but the source says {f.sha256[:12]}..."
        elif f.git_oid and len(f.git_oid) == 40 and (got := _hash(p, "git", size)) != f.git_oid:
            bad[f.path] = f"git blob id {got[:12]}... but the source says {f.git_oid[:12]}..."
    return bad


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
        raise FetchError(f"downloading {lst.repo_id} from {lst.source.name} failed: {_why(exc, lst.source, lst.repo_id, lst.revision)}",
                         "run the same command again to resume; or choose another source with --source") from exc
    if folder != p.folder:  # ModelScope may reuse an older cache layout
        p = Plan(lst, p.cache_dir, folder, p.cached, p.free, p.skipped)
    bad = verify_files(folder, lst.files)
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
            raise FetchError(f"re-fetching {', '.join(refetched)} of {lst.repo_id} failed: "
                             f"{_why(exc, lst.source, lst.repo_id, lst.revision)}",
                             "run the same command again") from exc
        still = verify_files(folder, [f for f in lst.files if f.path in bad])
        if still:
            for path in still:
                _remove(folder, path)
            detail = "; ".join(f"{k}: {v}" for k, v in still.items())
            raise ChecksumError(
                f"{lst.repo_id} from {lst.source.name} ({lst.source.endpoint}) served a bad copy twice, removed: {detail}",
                "try another source (--source modelscope, or --mirror URL) or fetch again later",
                files=sorted(still), source=lst.source.name,
            )
    downloaded = p.to_download + sum(f.size for f in lst.files if f.path in bad)
    return Fetched(folder, lst, downloaded, tuple(refetched), p.skipped, time.time() - t0)


def fetch_model(repo_id: str, *, revision: str | None = None, order: str | Sequence[str] | None = None,
                mirror: str | None = None, endpoints: Mapping[str, str] | None = None,
                progress: bool | None = None, log: Log | None = None, weights: bool = True) -> Fetched:
    """Plan and download from the first source that works; later sources cover for failed ones.

    ``weights=False`` fetches everything but the weights (config, tokenizer, template).
    A full disk stops at once (no other source would help); a source that cannot list, download
    or serve good bytes is skipped with its reason, kept in ``Fetched.skipped``.
    """
    skipped: list[tuple[str, str]] = []
    failures: list[FetchError] = []
    try:
        for p, _ in _plans(repo_id, revision, order, mirror, endpoints, log, skipped, weights):
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

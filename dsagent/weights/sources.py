"""Model hubs as sources: which to ask, in which order, and what each holds for a repository.

==============  ==============================================  =============================
source          endpoint                                        cache
==============  ==============================================  =============================
``hub``         https://huggingface.co                          the standard HF cache
``mirror``      ``--mirror URL``, else ``$HF_ENDPOINT``         the standard HF cache
``modelscope``  ``$MODELSCOPE_ENDPOINT``, else modelscope.cn    ModelScope's own cache
==============  ==============================================  =============================

The order is ``order=`` (``--source``), else ``$DSAGENT_FETCH_SOURCES``, else
``mirror,hub,modelscope`` when a mirror is configured and ``hub,mirror,modelscope`` when not
(all read through ``Settings``). Only the files vLLM reads are listed (``select_files``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ChecksumError, InstallError, InvalidOptionError, UnknownModelError
from ..settings import Settings
from .manifest import FileMeta

__all__ = [
    "FIX_GATED", "FIX_MISSING", "FIX_NETWORK", "FIX_REVISION", "SOURCES", "Failure", "Listing", "RemoteFile", "Source",
    "check_repo_id", "failure", "is_weight", "kind", "list_files", "remedy", "repo_id_problem", "select_files",
    "sources", "why",
]

SOURCES = ("hub", "mirror", "modelscope")
HF_ENDPOINT = "https://huggingface.co"
MODELSCOPE_ENDPOINT = "https://modelscope.cn"

# What vLLM reads from a Hugging Face model folder, besides the weights.
_SUPPORT = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "model.safetensors.index.json",
})

NO_MIRROR = "no mirror configured (set HF_ENDPOINT or pass --mirror URL)"

# The fix for each kind of failure (``kind``); tests match them exactly.
FIX_MISSING = ("check the id: `dsagent models` lists the catalog, https://huggingface.co/models?search={name} "
               "searches the hub; a private repository needs `hf auth login` or HF_TOKEN")
FIX_GATED = ("accept the licence on https://huggingface.co/{repo_id} (logged in), then run `hf auth login` "
             "or set HF_TOKEN to a token of that account")
FIX_REVISION = ("list the branches and tags of {repo_id}: python -c \"import huggingface_hub as h; "
                "print(h.list_repo_refs('{repo_id}'))\"; or leave out --revision for the default branch")
FIX_NETWORK = ("check the network; or a mirror: set HF_ENDPOINT or pass --mirror URL (e.g. https://hf-mirror.com); "
               "or other sources: --source hub,mirror,modelscope (pip install 'dsagent[modelscope]'); "
               "or pass a local model folder")

_REPO_PART = re.compile(r"\w(?:[\w.\-]*\w)?")


def repo_id_problem(repo_id: str) -> str:
    """The rule of huggingface_hub's ``validate_repo_id`` that an ``org/name`` id breaks, or ``""``.

    >>> repo_id_problem("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    ''
    >>> [repo_id_problem(r) for r in ("acme/tiny--r1", "acme/x.git", "acme/..")]  # doctest: +NORMALIZE_WHITESPACE
    ["'--' and '..' are not allowed in a hub id", "a hub id cannot end in '.git'",
     "'--' and '..' are not allowed in a hub id"]
    """
    parts = repo_id.split("/")
    if len(parts) != 2:
        return "a hub id is one organisation or user and one name: org/name"
    if "--" in repo_id or ".." in repo_id:
        return "'--' and '..' are not allowed in a hub id"
    if any(len(p) > 96 for p in parts):
        return "each part of a hub id is at most 96 characters"
    if not all(_REPO_PART.fullmatch(p) for p in parts):
        return ("each part of a hub id takes letters, digits, '-', '_' and '.', "
                "and starts and ends with a letter or digit")
    if repo_id.endswith(".git"):
        return "a hub id cannot end in '.git'"
    return ""


def check_repo_id(repo_id: str) -> None:
    """Refuse an id that no hub client would send (before any request), naming the rule broken."""
    if rule := repo_id_problem(repo_id):
        raise UnknownModelError(f"{repo_id!r} is not a valid hub id: {rule}",
                                "type the id as the model page on the hub shows it, e.g. "
                                "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (`dsagent models` lists the catalog)",
                                model=repo_id)


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

    @property
    def meta(self) -> FileMeta:
        return FileMeta(self.size, self.sha256, self.git_oid)


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



def check_endpoint(url: str, option: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL with a host; else the rule it breaks.

    >>> check_endpoint("https://hf-mirror.com/", "--mirror")
    'https://hf-mirror.com'
    >>> check_endpoint("notaurl", "--mirror")
    Traceback (most recent call last):
    ...
    dsagent.errors.InvalidOptionError: --mirror 'notaurl' is not an http(s) URL: it has no scheme ...
    """
    from urllib.parse import urlsplit

    bad = ""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:  # also a bad IPv6 literal
        bad = str(exc)
    else:
        if parts.scheme not in ("http", "https"):
            bad = f"its scheme is {parts.scheme!r}" if parts.scheme else "it has no scheme (http:// or https://)"
        elif not parts.hostname:
            bad = "it names no host"
        elif parts.query or parts.fragment:
            bad = "it carries a query or fragment"
    if bad:
        raise InvalidOptionError(f"{option} {url!r} is not an http(s) URL: {bad}",
                                 f"pass the mirror's base address, e.g. {option} https://hf-mirror.com",
                                 option=option, value=url)
    return url.strip().rstrip("/")


def sources(order: str | Sequence[str] | None = None, mirror: str | None = None,
            endpoints: Mapping[str, str] | None = None, *,
            settings: Settings | None = None) -> list[tuple[str, Source | None, str]]:
    """The sources to try, in order, as ``(name, Source or None, why it is unusable)``.

    ``endpoints`` overrides a source's URL (a private hub, or a test server).

    >>> [(n, s.endpoint if s else why) for n, s, why in sources("hub,mirror", mirror="https://hf-mirror.com")]
    [('hub', 'https://huggingface.co'), ('mirror', 'https://hf-mirror.com')]
    """
    settings = settings or Settings.load()
    endpoints = dict(endpoints or {})
    env_mirror = settings.hf_endpoint if settings.hf_endpoint != HF_ENDPOINT else ""
    if mirror:
        mirror_url = check_endpoint(mirror, "--mirror")
    elif endpoints.get("mirror"):
        mirror_url = endpoints["mirror"].rstrip("/")
    else:
        mirror_url = check_endpoint(env_mirror, "HF_ENDPOINT") if env_mirror else ""
    if order is None:
        order = settings.fetch_sources or ("mirror,hub,modelscope" if mirror_url else "hub,mirror,modelscope")
    names = [n.strip().lower() for n in (order.split(",") if isinstance(order, str) else order) if n.strip()]
    bad = [n for n in names if n not in SOURCES]
    if bad or not names:
        raise InvalidOptionError(f"unknown fetch source(s) {', '.join(bad) or '(none)'}",
                                 f"use a comma-separated order of {', '.join(SOURCES)}, e.g. --source hub,modelscope",
                                 option="--source", value=order)
    out: list[tuple[str, Source | None, str]] = []
    for name in dict.fromkeys(names):
        if name == "hub":
            out.append((name, Source(name, endpoints.get("hub", HF_ENDPOINT).rstrip("/")), ""))
        elif name == "mirror":
            out.append((name, Source(name, mirror_url), "") if mirror_url else (name, None, NO_MIRROR))
        else:
            url = endpoints.get("modelscope") or settings.modelscope_endpoint or MODELSCOPE_ENDPOINT
            out.append((name, Source(name, url.rstrip("/")), ""))
    return out


@dataclass(frozen=True)
class Failure:
    """Why one source could not serve a repository: ``kind`` picks the fix (``remedy``)."""

    source: str
    reason: str
    kind: str = "other"  # gated, revision, missing, network, unusable, other
    fix: str = ""        # the fix of an ``other`` failure that came with one


def kind(exc: BaseException) -> str:
    """What a hub client's exception means: gated, revision, missing, network, unusable or other.

    >>> kind(ConnectionRefusedError()), kind(ImportError()), kind(ValueError())
    ('network', 'unusable', 'other')
    """
    names = {c.__name__ for c in type(exc).__mro__}  # by name: the hub clients are imported lazily
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if "GatedRepoError" in names:
        return "gated"
    if "RevisionNotFoundError" in names:
        return "revision"
    if "RepositoryNotFoundError" in names or status == 404:
        return "missing"
    if isinstance(exc, ImportError):
        return "unusable"
    if (status or 0) >= 500 or status == 429 or isinstance(exc, (ConnectionError, TimeoutError)) or any(
            "connect" in n.lower() or "timeout" in n.lower() for n in names):
        return "network"
    return "other"


def why(exc: BaseException, source: Source, repo_id: str, revision: str | None) -> str:
    """One line saying why a source could not serve the repository."""
    name, what = type(exc).__name__, kind(exc)
    if isinstance(exc, ImportError):
        return "the modelscope package is not installed (pip install 'dsagent[modelscope]')"
    if what == "gated":
        return f"{repo_id} is gated: the account asking (or no login) has not been granted access"
    if what == "revision":
        return f"revision {revision!r} of {repo_id} is not on {source.endpoint}"
    if what == "missing":
        return f"{repo_id} is not on {source.endpoint}, or is private"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status:
        return f"{source.endpoint} answered HTTP {status}"
    if "connect" in name.lower() or isinstance(exc, ConnectionError):
        return f"cannot connect to {source.endpoint} ({str(exc).splitlines()[0] if str(exc) else name})"
    if "timeout" in name.lower():
        return f"{source.endpoint} timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text}"[:300]


def failure(exc: BaseException, source: Source, repo_id: str, revision: str | None) -> Failure:
    """``exc`` of a hub client (or dsagent's own ``FetchError``, whose cause says more) as a ``Failure``."""
    problem, fix = getattr(exc, "problem", None), getattr(exc, "remedy", "")
    if problem is None:
        return Failure(source.name, why(exc, source, repo_id, revision), kind(exc))
    cause = exc.__cause__  # a download that failed: its cause says why, in the words above
    if cause is None:
        return Failure(source.name, problem, "other", fix)
    return Failure(source.name, f"the download failed: {why(cause, source, repo_id, revision)}", kind(cause), fix)


def remedy(failures: Iterable[Failure], repo_id: str, default: str = FIX_NETWORK) -> str:
    """The one fix for a set of failures: access before revision before the id, then ``default``.

    >>> remedy([Failure("hub", "x", "network"), Failure("mirror", "y", "missing")], "acme/tiny")[:30]
    'check the id: `dsagent models`'
    """
    failures = list(failures)
    kinds = {f.kind for f in failures}
    for k, fix in (("gated", FIX_GATED), ("revision", FIX_REVISION), ("missing", FIX_MISSING)):
        if k in kinds:
            return fix.format(repo_id=repo_id, name=repo_id.rsplit("/", 1)[-1])
    return next((f.fix for f in failures if f.kind == "other" and f.fix), default)


def list_files(source: Source, repo_id: str, revision: str | None = None) -> Listing:
    """Ask one source which files (of those vLLM needs) it holds, with sizes and hashes."""
    if source.kind == "hf":
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise InstallError("huggingface_hub is not installed", "pip install 'huggingface_hub>=1.0'",
                               package="huggingface_hub") from None

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
        raise ChecksumError(f"{repo_id} on {source.endpoint} holds no weights vLLM can load (*.safetensors)",
                            "check the repository id; GGUF-only repositories are not supported for hub models")
    return listing



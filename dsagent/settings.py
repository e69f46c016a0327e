"""Every setting dsagent reads from the environment, in one typed object.

Each value is resolved as: explicit argument to ``Settings.load``, then the environment
variable, then the default. Nothing else in dsagent reads ``os.environ`` for a setting.

===================  ========================  =============================================
attribute            environment variable      default
===================  ========================  =============================================
home                 DSAGENT_HOME              ``~/.dsagent``
engine_python        DSAGENT_PYTHON            the interpreter running dsagent
device               DSAGENT_DEVICE            ``None``: gpu when an NVIDIA device exists
fetch_sources        DSAGENT_FETCH_SOURCES     ``None``: hub,mirror,modelscope (mirror first
                                               when one is set)
hf_endpoint          HF_ENDPOINT               ``""`` (a mirror when not huggingface.co)
hf_cache             HF_HUB_CACHE, HF_HOME     ``$XDG_CACHE_HOME/huggingface/hub``
modelscope_endpoint  MODELSCOPE_ENDPOINT       ``""`` (modelscope.cn)
modelscope_cache     MODELSCOPE_CACHE          ``~/.cache/modelscope``
cuda_visible         CUDA_VISIBLE_DEVICES      ``None``: every GPU
cache_dir            XDG_CACHE_HOME            ``~/.cache/dsagent`` (downloads shared by homes)
ray_address          RAY_ADDRESS               ``""``: the Ray cluster ``--backend ray`` attaches to
package_index        PIP_INDEX_URL,            ``https://pypi.org/simple`` (where the embedded
                     UV_DEFAULT_INDEX          model's wheel comes from)
sudo_user            SUDO_USER                 ``""``: who ran ``sudo`` (a system unit installed
                                               as root runs as that account)
join_token           DSAGENT_JOIN_TOKEN        ``""``: a joining node's token for the head's roll
                                               call (else ``join --token-file``); a secret,
                                               so never exported to a child process
===================  ========================  =============================================

Layout of ``home``::

    models/<name>/            converted or local models (the model store)
    deployments/<name>.json   one state record per deployment
    deployments/<name>.token  a multi-node head's roll-call token, mode 0600 (for the nodes)
    logs/<name>.log           the vLLM log of that deployment
    api_key                   the API key, mode 0600, made on first use
    mcp_token                 the MCP server's HTTP bearer token, mode 0600, made on first use

The home and its folders are 0700, the files in it 0600. The key and the token are made once:
written to a temporary file (``O_CREAT|O_EXCL``, 0600) that is hard-linked to its name, so the
name appears with its content, and of several processes making it at once one wins and every one
reads the winner's. A key file that is empty or blank is refused (``InvalidOptionError``), never
used and never replaced behind the user's back: the message says to remove it (a new one is made
on the next use) or to write a key into it. No key is read from the environment.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidOptionError
from .files import private_dir

__all__ = ["Settings"]

# What a child process (an MCP host's ``dsagent mcp``, a service) needs to see the same settings.
# Secrets (``SECRETS``) are not among them: a node's engine and watcher never see the join token.
EXPORTED = ("DSAGENT_HOME", "DSAGENT_PYTHON", "DSAGENT_DEVICE", "DSAGENT_FETCH_SOURCES", "HF_HOME",
            "HF_HUB_CACHE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "MODELSCOPE_CACHE", "CUDA_VISIBLE_DEVICES",
            "XDG_CACHE_HOME", "PIP_INDEX_URL", "UV_DEFAULT_INDEX", "RAY_ADDRESS")
SECRETS = ("DSAGENT_JOIN_TOKEN",)
"""Settings that are secrets: read here, dropped from every child's environment (``procs.engine_env``)."""
PYPI = "https://pypi.org/simple"


def _cache_root(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def _hf_cache(env: Mapping[str, str]) -> Path:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    return Path(env.get("HF_HOME") or _cache_root(env) / "huggingface").expanduser() / "hub"


def _make_once(path: Path, prefix: str) -> None:
    """Create the secret ``path`` unless it exists: its content written to a temporary file of this
    process (``O_EXCL``, 0600), then hard-linked to ``path``, which appears whole or not at all
    (``EEXIST``: another process was first, and its secret stands)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(prefix + secrets.token_urlsafe(24) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as exc:  # a file system without hard links: create the name itself, once
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            try:
                made = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                return
            with os.fdopen(made, "w") as out:
                out.write(tmp.read_text())
    finally:
        os.unlink(tmp)


def _read_secret(path: Path, what: str) -> str:
    """The secret in ``path`` (tightened to 0600 if it is ours and more open); refused when empty."""
    for _ in range(20):  # only without hard links can a secret be seen before it is written
        text = path.read_text().strip()
        if text:
            break
        time.sleep(0.05)
    else:
        raise InvalidOptionError(
            f"the {what} file {path} is empty: an empty {what} would let anyone in, so it is refused",
            f"rm {path} (a new {what} is made on the next use; clients then read the new one), or write one "
            f"into it: python -c \"import secrets; print(secrets.token_urlsafe(24))\" > {path}",
            option=path.name, value=str(path))
    st = path.stat()
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        path.chmod(0o600)
    return text


def _secret(path: Path, prefix: str, what: str) -> str:
    """The secret in ``path``, made (mode 0600, once, atomically) on first use, in a 0700 home."""
    private_dir(path.parent)
    if not path.exists():
        _make_once(path, prefix)
    return _read_secret(path, what)


@dataclass(frozen=True)
class Settings:
    """Resolved paths, endpoints and choices; ``Settings.load()`` reads the environment once."""

    home: Path
    engine_python: str
    device: str | None = None
    fetch_sources: str | None = None
    hf_endpoint: str = ""
    hf_cache: Path = Path("~/.cache/huggingface/hub")
    modelscope_endpoint: str = ""
    modelscope_cache: Path = Path("~/.cache/modelscope")
    cuda_visible: str | None = None
    cache_dir: Path = Path("~/.cache/dsagent")
    package_index: str = PYPI
    ray_address: str = ""
    sudo_user: str = ""
    join_token: str = field(default="", repr=False)
    """``DSAGENT_JOIN_TOKEN``: the head's roll-call token for ``dsagent join`` (kept out of ``repr``)."""
    exported: tuple[tuple[str, str], ...] = ()
    """The variables above that were set, for a child process that must see the same settings."""

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None = None, engine_python: str | None = None, *,
             env: Mapping[str, str] | None = None) -> Settings:
        """Settings from arguments, then ``env`` (default ``os.environ``), then the defaults."""
        env = os.environ if env is None else env
        home = home or env.get("DSAGENT_HOME") or Path.home() / ".dsagent"
        device = env.get("DSAGENT_DEVICE") or None
        return cls(
            home=Path(home).expanduser().resolve(),
            engine_python=engine_python or env.get("DSAGENT_PYTHON") or sys.executable,
            device=device if device in ("cpu", "gpu") else None,
            fetch_sources=env.get("DSAGENT_FETCH_SOURCES") or None,
            hf_endpoint=env.get("HF_ENDPOINT", "").rstrip("/"),
            hf_cache=_hf_cache(env),
            modelscope_endpoint=env.get("MODELSCOPE_ENDPOINT", "").rstrip("/"),
            modelscope_cache=Path(env.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser(),
            cuda_visible=env.get("CUDA_VISIBLE_DEVICES"),
            cache_dir=_cache_root(env) / "dsagent",
            package_index=(env.get("PIP_INDEX_URL") or env.get("UV_DEFAULT_INDEX") or PYPI).rstrip("/"),
            ray_address=env.get("RAY_ADDRESS", ""),
            sudo_user=env.get("SUDO_USER", ""),
            join_token=env.get("DSAGENT_JOIN_TOKEN", "").strip(),
            exported=tuple((k, env[k]) for k in EXPORTED if env.get(k)),
        )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def deployments_dir(self) -> Path:
        return self.home / "deployments"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def api_key_file(self) -> Path:
        return self.home / "api_key"

    @property
    def mcp_token_file(self) -> Path:
        return self.home / "mcp_token"

    def api_key(self) -> str:
        """The deployment API key, generated and stored with mode 0600 on first use; an empty or
        blank key file is refused (``InvalidOptionError`` saying how to set one)."""
        return _secret(self.api_key_file, "dsa-", "API key")

    def mcp_token(self) -> str:
        """The MCP server's HTTP bearer token (``dsagent mcp --http``), made on first use like the
        API key and kept apart from it: who may call tools may not call the engine."""
        return _secret(self.mcp_token_file, "dsm-", "MCP token")

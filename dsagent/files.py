"""Files: model files' digests (sha256, git blob id) and safetensors header; private files.

The one copy of each, shared by the planner (exact weight bytes from headers) and fetch
(verification of downloads and of the store); and the two ways dsagent makes a file of the home
that only its owner may read: ``private_dir`` (a folder, 0700) and ``append_private`` (a log,
0600), each tightening one of ours that an older version or a umask left open; ``write_private``
(a whole file replaced atomically, 0600) and ``locked`` (an exclusive lock on a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidOptionError

__all__ = [
    "append_private", "digest", "digest_text", "locked", "private_dir", "read_safetensors_header",
    "safetensors_problem", "write_private",
]

CHUNK = 8 << 20


def digest(path: Path, algo: str = "sha256") -> str:
    """``sha256`` of a file, or its ``git`` blob id (how a hub names a small file's content).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"; _ = p.write_bytes(b"hi\\n")
    >>> digest(p)[:12], digest(p, "git")[:12]
    ('98ea6e4f216f', '45b983be36b7')
    """
    if algo == "git":
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    elif algo == "sha256":
        h = hashlib.sha256()
    else:
        raise ValueError(f"unknown digest {algo!r}")
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def digest_text(text: str) -> str:
    """sha256 of a text (UTF-8), hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of one ``.safetensors`` file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def safetensors_problem(path: Path) -> str:
    """What is wrong with a safetensors file by its header and size; ``""`` when it is whole."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} beyond file size {size}")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, struct.error, KeyError, TypeError) as exc:
        return f"not a readable safetensors file ({exc})"
    if 8 + n + end != size:
        return f"truncated or padded: its header says {8 + n + end} bytes, the file has {size}"
    return ""


def private_dir(path: Path) -> Path:
    """``path`` made as a folder only its owner can enter (0700), its missing parents too; an
    existing folder of ours is tightened to 0700. A shared folder (sticky, like ``/tmp``) is refused."""
    missing: list[Path] = []
    up = path
    while not up.exists() and up != up.parent:
        missing.append(up)
        up = up.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another process may make it first
    st = path.stat()
    if st.st_mode & stat.S_ISVTX:
        raise InvalidOptionError(f"{path} is a shared folder (sticky bit, like /tmp): dsagent keeps keys, records "
                                 "and logs in a folder only its owner can enter", "point DSAGENT_HOME at a folder of "
                                 "its own (the default is ~/.dsagent)", option="DSAGENT_HOME", value=str(path))
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        path.chmod(0o700)
    return path


def append_private(path: Path) -> int:
    """A file descriptor appending to ``path`` (a log): made mode 0600 in a 0700 folder, an
    existing one of ours tightened to 0600. The caller closes it."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    st = os.fstat(fd)
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.fchmod(fd, 0o600)
    return fd


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock`` (made 0600 in a 0700 folder) for the ``with`` block."""
    private_dir(lock.parent)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0600: a temporary file of this write alone,
    fsynced, renamed over ``path``, then the folder fsynced (the rename survives a crash)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)

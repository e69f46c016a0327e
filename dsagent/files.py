"""Reading model files: digests (sha256, git blob id) and the safetensors header.

The one copy of each, shared by the planner (exact weight bytes from headers) and fetch
(verification of downloads and of the store).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

__all__ = ["digest", "digest_text", "read_safetensors_header", "safetensors_problem"]

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

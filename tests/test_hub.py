"""fetch of hub models: the real huggingface_hub / modelscope clients against loopback fakes.

Every test runs with its own HF_HOME, MODELSCOPE_CACHE and DSAGENT_HOME, and with sockets
limited to 127.0.0.1 (a name other than localhost does not even resolve), so nothing here can
reach the real hubs.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from dsagent.weights import hub, sources
from dsagent.plan.catalog import resolve
from dsagent.errors import ChecksumError, DiskSpaceError, FetchError
from dsagent.weights.fetch import MANIFEST, fetch
from dsagent.settings import Settings

from fakehub import COMMIT, Faults, serve, tiny_repo

pytestmark = pytest.mark.timeout(90)

REPO = "deepseek-ai/Tiny-R1"
SHARD1 = "model-00001-of-00002.safetensors"
NEEDED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors.index.json", SHARD1, "model-00002-of-00002.safetensors"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own caches and home; loopback-only sockets; no inherited endpoint or order."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("DSAGENT_HOME", str(tmp_path / "home"))
    for var in ("HF_HUB_CACHE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "DSAGENT_FETCH_SOURCES", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test sandbox: {host} is not loopback")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture
def settings(tmp_path):
    return Settings.load(tmp_path / "home")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(settings, url, **kw):
    return fetch(resolve(REPO), settings=settings, sources="mirror", mirror=url, progress=False, **kw)


def test_dry_run_lists_only_what_vllm_needs_and_downloads_nothing(settings):
    repo = tiny_repo()
    with serve(repo) as fake:
        res = _fetch(settings, fake.url, dry_run=True)
        p = res.plan
        assert {f.path for f in p.listing.files} == NEEDED  # no *.bin, original/, README
        assert p.listing.commit == COMMIT == res.revision
        assert p.to_download == p.listing.total == sum(len(repo.files[n]) for n in NEEDED)
        assert not p.cached and p.fits and p.needed > p.to_download
        shard = next(f for f in p.listing.files if f.path == SHARD1)
        assert shard.sha256 == repo.sha256(SHARD1) and shard.size == len(repo.files[SHARD1])
        assert not any(fake.gets(n) for n in repo.files)
        text = p.table()
        assert "to fetch" in text and "disk: needs" in text and COMMIT in text
        json.dumps(p.to_json())

        _fetch(settings, fake.url)
        again = _fetch(settings, fake.url, dry_run=True).plan
        assert again.cached == NEEDED and again.to_download == 0 and again.needed == 0


def test_full_download_lands_in_the_hf_cache_verified_and_pinned(settings, tmp_path):
    repo = tiny_repo()
    with serve(repo) as fake:
        res = _fetch(settings, fake.url)
        assert res.path == tmp_path / "hf" / "hub" / "models--deepseek-ai--Tiny-R1" / "snapshots" / COMMIT
        assert {p.name for p in res.path.iterdir()} == NEEDED
        for name in NEEDED:
            assert _sha(res.path / name) == repo.sha256(name)
        assert res.revision == COMMIT and res.source == "mirror" and not res.reused
        record = json.loads((settings.models_dir / "tiny-r1" / MANIFEST).read_text())
        assert record["commit"] == COMMIT and record["files"][SHARD1]["sha256"] == repo.sha256(SHARD1)

        asked = len(fake.log)
        again = fetch(resolve(REPO), settings=settings, progress=False)  # what `up` calls: no network needed
        assert again.reused and again.path == res.path and again.revision == COMMIT
        assert len(fake.log) == asked


def test_a_dummy_weights_rehearsal_fetches_no_weights_and_the_real_fetch_still_does(settings):
    """`up --dummy-weights` for a hub model: config, tokenizer and template only (megabytes of a
    70B's 140 GB), no manifest; the next ordinary fetch downloads and verifies the weights and
    reuses what the rehearsal fetched."""
    repo = tiny_repo()
    weights = {n for n in NEEDED if n.endswith(".safetensors")}
    with serve(repo) as fake:
        plan = _fetch(settings, fake.url, dry_run=True, weights=False).plan
        assert {f.path for f in plan.listing.files} == NEEDED - weights
        res = _fetch(settings, fake.url, weights=False)
        assert {p.name for p in res.path.iterdir()} == NEEDED - weights
        assert not any(fake.gets(n) for n in weights)
        assert res.revision == COMMIT and not (settings.models_dir / "tiny-r1" / MANIFEST).exists()

        full = _fetch(settings, fake.url)
        assert {p.name for p in full.path.iterdir()} == NEEDED and full.path == res.path
        assert all(len(fake.gets(n)) == 1 for n in NEEDED)  # nothing fetched twice
        assert (settings.models_dir / "tiny-r1" / MANIFEST).is_file()
        asked = len(fake.log)
        assert _fetch(settings, fake.url, weights=False).reused and len(fake.log) == asked  # full model: reused


def test_a_local_folder_needs_only_its_config_for_a_rehearsal(settings, tmp_path):
    folder = tmp_path / "shape-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    spec = resolve(str(folder))
    assert fetch(spec, settings=settings, weights=False).path == folder
    with pytest.raises(FetchError, match="no weight files"):
        fetch(spec, settings=settings)


def test_a_cut_connection_resumes_with_a_range_request(settings):
    """The fake hangs up halfway through the first GET of a 24 MB shard (more than the client's
    10 MiB read chunk, so part of it is on disk); the client must ask for the rest with Range."""
    repo = tiny_repo(floats=6_000_000)
    with serve(repo, faults=Faults(cut_once={SHARD1})) as fake:
        res = _fetch(settings, fake.url)
        gets = fake.gets(SHARD1)
        assert len(gets) == 2 and gets[0][2] == ""
        offset = int(gets[1][2].removeprefix("bytes=").rstrip("-"))
        assert 0 < offset < len(repo.files[SHARD1])
        assert _sha(res.path / SHARD1) == repo.sha256(SHARD1)


def test_a_corrupt_download_is_detected_and_fetched_again(settings):
    repo = tiny_repo()
    with serve(repo, faults=Faults(corrupt_once={SHARD1})) as fake:
        res = _fetch(settings, fake.url)
        assert res.refetched == (SHARD1,)
        assert len(fake.gets(SHARD1)) == 2
        assert _sha(res.path / SHARD1) == repo.sha256(SHARD1)


def test_a_source_that_keeps_serving_bad_bytes_is_refused_by_file_name(settings):
    with serve(tiny_repo(), faults=Faults(corrupt_always={SHARD1})) as fake:
        with pytest.raises(ChecksumError, match=SHARD1) as info:
            _fetch(settings, fake.url)
    assert "--source" in info.value.remedy
    snap = settings.hf_cache / "models--deepseek-ai--Tiny-R1" / "snapshots" / COMMIT
    assert not (snap / SHARD1).exists()  # never left where vLLM would load it
    assert not (settings.models_dir / "tiny-r1" / MANIFEST).exists()


def test_verify_rechecks_the_cache_and_refetches_a_damaged_shard(settings):
    repo = tiny_repo()
    with serve(repo) as fake:
        res = _fetch(settings, fake.url)
        blob = (res.path / SHARD1).resolve()
        data = bytearray(blob.read_bytes())
        data[-10] ^= 0xFF  # same size, valid header: only a hash can tell
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
        assert fetch(resolve(REPO), settings=settings, progress=False).reused  # the quick check cannot see it
        checked = _fetch(settings, fake.url, deep_verify=True)
        assert checked.refetched == (SHARD1,)
        assert _sha(checked.path / SHARD1) == repo.sha256(SHARD1)


def test_disk_space_is_refused_before_any_byte_moves_at_the_exact_boundary(settings, monkeypatch):
    with serve(tiny_repo()) as fake:
        needed = _fetch(settings, fake.url, dry_run=True).plan.needed
        monkeypatch.setattr(hub, "disk_free", lambda path: needed - 1)
        with pytest.raises(DiskSpaceError) as info:
            _fetch(settings, fake.url)
        assert hub._size(needed) in info.value.problem and "HF_HOME" in info.value.remedy
        assert info.value.needed == needed and info.value.free == needed - 1
        assert not any(fake.gets(n) for n in NEEDED)
        monkeypatch.setattr(hub, "disk_free", lambda path: needed)
        assert _fetch(settings, fake.url).path.is_dir()


def test_fallback_skips_a_down_source_and_a_missing_mirror_with_reasons():
    with serve(tiny_repo(), faults=Faults(status=503)) as down, serve(tiny_repo()) as good:
        got = hub.fetch_model(REPO, order="mirror,hub,modelscope", endpoints={"hub": down.url, "modelscope": good.url},
                              progress=False)
    assert got.listing.source.name == "modelscope"
    reasons = dict(got.skipped)
    assert "no mirror configured" in reasons["mirror"] and "HTTP 503" in reasons["hub"]
    assert {p.name for p in got.path.iterdir()} == NEEDED


def test_fallback_from_a_refused_connection_to_the_mirror():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with serve(tiny_repo()) as good:
        got = hub.fetch_model(REPO, order="hub,mirror", endpoints={"hub": dead}, mirror=good.url, progress=False)
    assert got.listing.source.name == "mirror" and got.commit == COMMIT
    assert "cannot connect" in dict(got.skipped)["hub"]


def test_every_source_failing_names_each_reason():
    with serve(tiny_repo(), faults=Faults(status=500)) as down:
        with pytest.raises(FetchError) as info:
            hub.plan("deepseek-ai/Nothing-Here", order="hub,mirror", endpoints={"hub": down.url})
    msg = str(info.value)
    assert "hub: " in msg and "HTTP 500" in msg and "mirror: no mirror configured" in msg


def test_modelscope_source_through_the_real_client(monkeypatch, tmp_path):
    repo = tiny_repo()
    with serve(repo, faults=Faults(corrupt_once={SHARD1})) as fake:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        settings = Settings.load(tmp_path / "home")  # settings are read from the environment when loaded
        res = fetch(resolve(REPO), settings=settings, sources="modelscope", progress=False)
        assert res.source == "modelscope"
        assert res.path.is_relative_to(tmp_path / "ms")
        for name in NEEDED:
            assert _sha(res.path / name) == repo.sha256(name)
        plan = fetch(resolve(REPO), settings=settings, sources="modelscope", dry_run=True).plan
        assert plan.cached == NEEDED


def test_unknown_source_names_are_refused():
    from dsagent.errors import InputError

    with pytest.raises(InputError, match="unknown fetch source"):
        sources.sources("hub,gitlfs")


def test_cli_dry_run_json_and_table(settings, capsys):
    from dsagent.cli import main

    with serve(tiny_repo()) as fake:
        assert main(["fetch", REPO, "--mirror", fake.url, "--source", "mirror", "--dry-run", "--json"]) == 0
        out = capsys.readouterr()
        data = json.loads(out.out)
        assert data["commit"] == COMMIT and {f["path"] for f in data["files"]} == NEEDED and data["fits"]
        assert out.err == ""
        assert main(["fetch", REPO, "--mirror", fake.url, "--source", "mirror", "--dry-run"]) == 0
        assert "disk: needs" in capsys.readouterr().out
        assert main(["fetch", REPO, "--mirror", fake.url, "--source", "mirror", "--json"]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["revision"] == COMMIT and out.err == ""

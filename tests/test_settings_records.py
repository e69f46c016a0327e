"""State on disk: the API key file and deployment records."""

from __future__ import annotations

import stat

from dsagent.deploy.record.store import Deployment, create, list_all, load
from dsagent.settings import Settings


def test_home_comes_from_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DSAGENT_HOME", str(tmp_path / "env"))
    assert Settings.load().home == tmp_path / "env"
    assert Settings.load(tmp_path / "arg").home == tmp_path / "arg"


def test_api_key_is_made_once_with_mode_0600(tmp_settings):
    key = tmp_settings.api_key()
    assert key.startswith("dsa-") and len(key) > 20
    assert stat.S_IMODE(tmp_settings.api_key_file.stat().st_mode) == 0o600
    assert tmp_settings.api_key() == key


def test_records_round_trip_and_list(tmp_settings):
    dep = Deployment(name="m", model="m", model_path="/p", host="0.0.0.0", port=9, api_key_file="/k",
                     log_file="/l", argv=["x"], measured={"kv_cache_tokens": 5})
    create(tmp_settings, dep)
    again = load(tmp_settings, "m")
    assert again == dep
    assert again.base_url == "http://127.0.0.1:9/v1"  # a wildcard bind is called on loopback
    assert [d.name for d in list_all(tmp_settings)] == ["m"]
    assert load(tmp_settings, "other") is None

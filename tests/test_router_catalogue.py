"""The router's catalogue file and its packing plan (pure: no server)."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import run_cli

from dsagent.deploy.launch.argv import plan_serve
from dsagent.deploy.launch.options import ServeOptions
from dsagent.errors import InvalidOptionError
from dsagent.router.catalogue import Entry, add, catalogue_file, load, remove
from dsagent.router.packing import SLEEP_RESIDUE_GIB, Capacity, Need, Resident, need_of, plan_load
from dsagent.settings import Settings


def test_entries_round_trip_through_the_file_which_is_private(tmp_settings):
    a = Entry("chat", "deepseek-r1-distill-qwen-7b", ServeOptions(port=0, device="gpu", max_model_len=8192,
                                                                  gpus=(1,), extra_args=('--x={"a": "b"}',)),
              ttl=60, always_on=True)
    b = Entry("tiny", "smollm2-135m-instruct", ServeOptions(port=0, device="cpu"), sleep=False)
    add(tmp_settings, a)
    add(tmp_settings, b)
    assert load(tmp_settings) == [a, b]
    assert stat.S_IMODE(os.stat(catalogue_file(tmp_settings)).st_mode) == 0o600
    with pytest.raises(InvalidOptionError, match="already has a model named 'chat'"):
        add(tmp_settings, a)
    assert remove(tmp_settings, "chat") == [b]
    with pytest.raises(InvalidOptionError, match="it has: tiny"):
        remove(tmp_settings, "chat")


@pytest.mark.parametrize(("table", "message"), [
    ({"model": "x", "tpp": 2}, "unknown key"),
    ({"tp": 2}, "has no `model`"),
    ({"model": "x", "tp": "2"}, "tp takes a int"),
    ({"model": "x", "ttl": -1}, "ttl is seconds"),
    ({"model": "x", "always_on": "yes"}, "always_on is true or false"),
    ({"model": "x", "gpus": 1}, "gpus takes a list"),
])
def test_a_bad_entry_is_refused_naming_the_key(tmp_settings, table, message):
    path = catalogue_file(tmp_settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
    path.write_text("[models.m]\n" + "\n".join(lines).replace("True", "true") + "\n")
    with pytest.raises(InvalidOptionError, match=message):
        load(tmp_settings)


def test_a_bad_name_and_bad_toml_are_refused(tmp_settings):
    with pytest.raises(InvalidOptionError, match="is not allowed"):
        Entry.from_table("../x", {"model": "m"})
    path = catalogue_file(tmp_settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[models.m\n")
    with pytest.raises(InvalidOptionError, match="not valid TOML"):
        load(tmp_settings)


def test_models_add_and_remove_through_the_cli(tmp_path):
    env = {"DSAGENT_HOME": str(tmp_path / "home")}
    out = run_cli("models", "add", "a", "--device", "cpu", "--ttl", "30", "--max-model-len", "1024", env=env)
    assert out.returncode == 0, out.stderr
    (entry,) = load(Settings.load(tmp_path / "home"))
    assert (entry.name, entry.model, entry.ttl, entry.options.max_model_len) == ("a", "smollm2-135m-instruct", 30, 1024)
    listed = run_cli("models", env=env)
    assert "the router's catalogue" in listed.stdout and "a " in listed.stdout
    assert run_cli("models", "remove", "b", env=env).returncode == 2
    assert run_cli("models", "remove", "a", env=env).returncode == 0
    assert load(Settings.load(tmp_path / "home")) == []


def test_gpus_and_sleep_mode_reach_the_engine(tmp_settings, tmp_path):
    opts = ServeOptions(port=9000, device="gpu", gpus=(2, 3), sleep_mode=True)
    plan = plan_serve("m", tmp_path, tmp_settings, opts)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2,3" and plan.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--enable-sleep-mode" in plan.argv
    cpu = plan_serve("m", tmp_path, tmp_settings, ServeOptions(port=9000, device="cpu", sleep_mode=True))
    assert "--enable-sleep-mode" not in cpu.argv and "VLLM_SERVER_DEV_MODE" not in cpu.env  # vLLM sleeps on GPUs only


# --- packing ------------------------------------------------------------------------------

GPU80 = Capacity(gpus=(80.0,))


def test_two_small_models_share_a_gpu_each_with_its_share():
    a = Resident("a", Need(per_gpu=30.0, gpus=1), gpus=(0,))
    p = plan_load("b", Need(per_gpu=30.0, gpus=1), [a], GPU80)
    assert p.fits and p.evict == () and p.gpus == (0,) and p.gpu_memory_utilization == 0.35  # (30 - 2) / 80


def test_the_least_recently_used_idle_model_sleeps_first():
    old = Resident("old", Need(per_gpu=50.0, gpus=1), gpus=(0,), last_used=1.0)
    new = Resident("new", Need(per_gpu=20.0, gpus=1), gpus=(0,), last_used=2.0)
    p = plan_load("big", Need(per_gpu=50.0, gpus=1), [old, new], GPU80)
    assert p.fits and p.evict == (("old", "sleep"),)


def test_busy_always_on_and_loading_models_are_never_evicted():
    busy = Resident("busy", Need(per_gpu=50.0, gpus=1), gpus=(0,), busy=1)
    pinned = Resident("pinned", Need(per_gpu=20.0, gpus=1), gpus=(0,), always_on=True)
    p = plan_load("big", Need(per_gpu=50.0, gpus=1), [busy, pinned], GPU80)
    assert not p.fits and "busy (ready, busy)" in p.reason and "always on" in p.reason
    loading = Resident("l", Need(per_gpu=50.0, gpus=1), gpus=(0,), state="loading")
    assert not plan_load("big", Need(per_gpu=50.0, gpus=1), [loading], GPU80).fits


def test_a_model_that_may_not_sleep_is_stopped_and_sleeping_ones_hold_only_their_residue():
    a = Resident("a", Need(per_gpu=60.0, gpus=1), gpus=(0,), can_sleep=False)
    assert plan_load("b", Need(per_gpu=60.0, gpus=1), [a], GPU80).evict == (("a", "stop"),)
    asleep = [Resident(f"s{i}", Need(per_gpu=60.0, gpus=1), gpus=(0,), state="sleeping") for i in range(3)]
    p = plan_load("b", Need(per_gpu=80.0 - 3 * SLEEP_RESIDUE_GIB, gpus=1), asleep, GPU80)
    assert p.fits and p.evict == ()
    p = plan_load("b", Need(per_gpu=79.5, gpus=1), asleep, GPU80)  # the residues must go: oldest first
    assert p.fits and [a for _, a in p.evict] == ["stop"] * 3


def test_on_the_cpu_the_idle_model_is_stopped_for_room():
    a = Resident("a", Need(host=3.0), last_used=5.0)
    p = plan_load("b", Need(host=3.0), [a], Capacity(host=4.5))
    assert p.fits and p.evict == (("a", "stop"),) and p.gpu_memory_utilization is None
    assert plan_load("b", Need(host=3.0), [a], Capacity(host=6.5)).evict == ()
    assert not plan_load("b", Need(host=5.0), [], Capacity(host=4.5)).fits


def test_pinned_gpus_and_tensor_parallel_models_are_placed_on_enough_gpus():
    two = Capacity(gpus=(80.0, 80.0))
    a = Resident("a", Need(per_gpu=60.0, gpus=1), gpus=(0,), busy=1)
    assert plan_load("b", Need(per_gpu=60.0, gpus=1), [a], two).gpus == (1,)
    assert not plan_load("b", Need(per_gpu=60.0, gpus=1), [a], two, pinned=(0,)).fits
    assert not plan_load("tp2", Need(per_gpu=30.0, gpus=2), [a], two).fits
    assert plan_load("tp2", Need(per_gpu=15.0, gpus=2), [a], two).gpus == (0, 1)


def test_the_need_comes_from_the_estimate():
    from dsagent.plan.estimate import estimate

    plan = estimate("deepseek-r1-distill-qwen-7b", gpu_memory_gib=79.18, gpus=1, tp=1, pp=1, max_model_len=8192)
    need = need_of(plan.to_dict(), device="gpu")
    w = plan.to_dict()["detail"]["workers"][0]
    fixed = w["weights_gib"] + w["activation_gib"] + w["non_torch_gib"] + w["cuda_graph_gib"]
    kv = plan.kv_cache_gib / plan.kv_cache_tokens * 8192 * 8  # 8 full sequences, not the whole card
    assert need.per_gpu == pytest.approx(fixed + kv + 2.0, abs=0.01) and need.gpus == 1  # + CUDA outside the share
    assert 21 < need.per_gpu < 23  # 7B in bf16 (14.3 GiB) beside 3.5 GiB of KV: three of them share an H100


def test_the_router_runs_as_a_systemd_unit_restarted_on_failure(tmp_path):
    """``dsagent router service`` writes a unit whose ExecStart is ``dsagent router serve`` with the
    router's flags; a `serve` (up's alias) without --foreground is still refused."""
    from dsagent.deploy.supervise.service import parse_unit, render_unit

    env = {"DSAGENT_HOME": str(tmp_path / "home")}
    out = run_cli("router", "service", "--user", "--dir", str(tmp_path / "units"), "--port", "8090", env=env)
    assert out.returncode == 0, out.stderr
    unit = parse_unit((tmp_path / "units" / "dsagent-router.service").read_text())
    exec_start = unit["Service"]["ExecStart"][0]
    assert exec_start.split()[3:] == ["router", "serve", "--host", "127.0.0.1", "--port", "8090", "--wait", "60.0"]
    assert unit["Service"]["Restart"] == ["on-failure"]
    assert stat.S_IMODE(os.stat(tmp_path / "units" / "dsagent-router.env").st_mode) == 0o600
    with pytest.raises(InvalidOptionError, match="foreground"):
        render_unit("s", ["python", "-m", "dsagent.cli", "serve", "smol"], {}, user=True, folder=tmp_path)


def test_router_stop_never_signals_a_process_that_is_not_the_router(tmp_settings):
    """A record naming a live stranger (its real pid and start time, no mark, not `router serve`)
    is refused and the stranger lives on."""
    import json
    import subprocess
    import time

    import psutil

    from dsagent.errors import StopError
    from dsagent.files import write_private
    from dsagent.router.serve import stop

    stranger = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": stranger.pid, "started_at": psutil.Process(stranger.pid).create_time(), "host": "127.0.0.1",
                  "port": 9, "models": {}, "updated": time.time()}
        write_private(tmp_settings.home / "router.json", json.dumps(record))
        with pytest.raises(StopError, match="is not this home's router"):
            stop(tmp_settings, timeout=2)
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_the_gpus_page_draws_each_gpu_with_its_holder_and_history():
    """The GPUs page's view on a machine that has a GPU (none exists here: the data is NVML's shape)."""
    from dsagent.console.views import gpus_page

    html = gpus_page([{"index": 0, "name": "H100", "total_gib": 79.2, "free_gib": 30.0}], {0: "chat (40.0 GiB)"},
                     {0: [10.0, 20.0, 49.2]})
    assert "GPU 0 H100: 49.2 of 79.2 GiB used by chat (40.0 GiB)" in html
    assert 'style="width:62.1%"' in html and "<polyline" in html and "No GPU" not in html
    assert "No GPU" in gpus_page([], {})

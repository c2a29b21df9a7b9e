"""The real servers the backend tests talk to, and a TCP proxy that can make one "go down".

Addresses come from environment variables with the loopback defaults of a development machine::

    RECLAIM_TEST_POSTGRES  postgresql://postgres@127.0.0.1:5432/postgres
    RECLAIM_TEST_MYSQL     mysql://root@127.0.0.1:3306/test
    RECLAIM_TEST_REDIS     redis://127.0.0.1:6379/0
    RECLAIM_TEST_RABBITMQ  amqp://guest:guest@127.0.0.1:5672/%2F
    RECLAIM_TEST_RABBITMQ_API  http://guest:guest@127.0.0.1:15672
    RECLAIM_TEST_NATS      nats://127.0.0.1:4222
    RECLAIM_TEST_MQTT      mqtt://127.0.0.1:1883

A test that needs a server which is not reachable is skipped with the reason, unless
``RECLAIM_REQUIRE_SERVICES=1`` (CI sets it): then it fails, so a missing service is never a
silent green.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Final
from urllib.parse import urlsplit

import pytest

DEFAULTS: Final = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mysql": "mysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "rabbitmq_api": "http://guest:guest@127.0.0.1:15672",
    "nats": "nats://127.0.0.1:4222",
    "mqtt": "mqtt://127.0.0.1:1883",
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


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to a real server; :meth:`stop` makes the server look down.

    A stopped proxy refuses connections and has cut every open one, as a server that went away
    would; :meth:`start` brings it back on the same port. Tests point a backend at the proxy to
    prove a release that meets a dead server is kept as failed and done by a later sweep,
    without stopping the real server other tests use.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def closed_port() -> int:
    """A port of 127.0.0.1 that nobody listens on (bound, then closed): a server that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

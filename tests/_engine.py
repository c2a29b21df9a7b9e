"""The container engine the docker backend's tests use, and the local image their containers run.

One engine, two addresses:

- **local**: ``DOCKER_HOST``; else the socket ``.ci/run`` serves podman on
  (``$RECLAIM_PODMAN_DIR/podman.sock``, ``/tmp/reclaim-podman`` by default) when it exists; else
  ``unix:///var/run/docker.sock``. The backend's own tests use it.
- **tcp**: ``RECLAIM_TEST_DOCKER`` (``tcp://127.0.0.1:2375``, in tests/_services.py), for what must
  go through a :class:`~reclaim.testing.TcpProxy` (``check_outage``), which forwards TCP and cannot
  forward a unix socket. ``.ci/run`` serves the same podman on it.

The image is ``RECLAIM_TEST_DOCKER_IMAGE`` (``localhost/reclaim-test-busybox``: busybox-static's
binary and its applet links, which ``.ci/run`` imports with ``podman import``). Nothing is ever
pulled: the machines have no registry to pull from. Containers run ``sleep``.

A test whose engine does not answer, or lacks the image, is skipped with the reason, unless
``RECLAIM_REQUIRE_SERVICES=1`` (CI): then it fails.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any, Final

import pytest

from _services import require

__all__ = ["PODMAN_DIR", "TEST_IMAGE", "client", "local_engine", "tcp_engine"]

#: Where .ci/run keeps podman's configuration, storage and sockets.
PODMAN_DIR: Final = Path(os.environ.get("RECLAIM_PODMAN_DIR") or "/tmp/reclaim-podman")

#: The local image the tests' containers run (never pulled).
TEST_IMAGE: Final = os.environ.get("RECLAIM_TEST_DOCKER_IMAGE") or "localhost/reclaim-test-busybox"

#: The command of the tests' containers: long enough to outlive any test, killed by removal.
SLEEP: Final = ["sleep", "600"]


def _local_url() -> str:
    configured = os.environ.get("DOCKER_HOST", "").strip()
    if configured:
        return configured
    podman = PODMAN_DIR / "podman.sock"
    if podman.exists():
        return f"unix://{podman}"
    return "unix:///var/run/docker.sock"


def local_engine() -> str:
    """The local engine's URL, once it answers and holds the test image; skip (or fail in CI)
    otherwise."""
    url = _local_url()
    _usable(url)
    return url


def tcp_engine() -> str:
    """The engine's ``tcp://`` URL (for a TcpProxy), once it answers and holds the test image."""
    url = require("docker")
    _usable(url)
    return url


def client(url: str) -> Any:
    """A plain docker SDK client: what the tests make and check objects with, behind reclaim's
    back. Its API version comes from ``/_ping`` (the SDK's own negotiation asks ``/version``,
    which podman answers in about 0.4 s)."""
    import docker  # type: ignore[import-untyped]  # noqa: PLC0415  (only tests that need an engine)
    import docker.constants  # type: ignore[import-untyped]  # noqa: PLC0415

    if url.startswith("unix://"):  # the SDK leaves its socket unclosed when it cannot connect
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as knock:
            knock.settimeout(10)
            knock.connect(url.removeprefix("unix://"))
    probe = docker.DockerClient(
        base_url=url, timeout=10, version=docker.constants.DEFAULT_DOCKER_API_VERSION
    )
    try:
        answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=10)
        answer.raise_for_status()
        version = answer.headers.get("Api-Version") or "auto"
    finally:
        probe.close()
    return docker.DockerClient(base_url=url, timeout=30, version=version)


def _usable(url: str) -> None:
    reason = _why_not(url)
    if reason is None:
        return
    if os.environ.get("RECLAIM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"RECLAIM_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@functools.cache
def _why_not(url: str) -> str | None:
    """Why the engine at ``url`` cannot run the tests, or None when it can (asked once)."""
    try:
        import docker  # noqa: PLC0415  (only tests that need an engine)
        import docker.errors  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return "the docker SDK is not installed (uv sync installs the dev group)"
    try:
        engine = client(url)
    except Exception as exc:
        return f"no container engine answers at {url} ({type(exc).__name__}: {exc}); see .ci/run"
    try:
        engine.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        return (
            f"the engine at {url} has no image {TEST_IMAGE} (nothing is pulled; .ci/run imports"
            " it from busybox-static, or set RECLAIM_TEST_DOCKER_IMAGE to a local image)"
        )
    except Exception as exc:
        return f"the engine at {url} did not answer ({type(exc).__name__}: {exc})"
    finally:
        engine.close()
    return None

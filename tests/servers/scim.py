"""scim2-server, a real SCIM 2.0 server (PyPI ``scim2-server``, a dev dependency), for ``ScimUser``.

Its own command line (``scim2_server.testserver.cli``) runs in a Python process of its own,
users in memory, with one static bearer token drawn per start. The token is handed over in the
environment and put into the command's arguments inside that process, so ``ps`` never shows it.
:func:`scim_server` starts it; :func:`user` is a factory for ``reclaim.testing.check_crash``,
configured by ``SCIM_BASE_URL`` and ``SCIM_TOKEN``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

from reclaim.backends.accounts import ScimUser
from servers import ServerProcess, free_ports, start, unavailable

__all__ = ["ScimServer", "scim_server", "user"]

#: The ``scim2-server`` command, with the token taken from the environment (not argv).
_LAUNCH: Final = (
    "import os, sys\n"
    "from scim2_server.testserver.cli import main\n"
    "sys.argv[1:1] = ['--bearer-token', os.environ.pop('RECLAIM_SCIM_TOKEN')]\n"
    "sys.argv[0] = 'scim2-server'\n"
    "main()\n"
)


@dataclasses.dataclass(frozen=True)
class ScimServer:
    """A running scim2-server: its base URL, its token, and direct calls (not reclaim's)."""

    base_url: str
    token: str = dataclasses.field(repr=False)
    process: ServerProcess = dataclasses.field(repr=False)

    def env(self) -> dict[str, str]:
        return {"SCIM_BASE_URL": self.base_url, "SCIM_TOKEN": self.token}

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/scim+json",
            "Accept": "application/scim+json",
        }
        return httpx.request(
            method, f"{self.base_url}{path}", headers=headers, timeout=10, **kwargs
        )

    def users(self) -> dict[str, str]:
        """Every user, id to userName, as the server lists them."""
        response = self._call("GET", "/Users", params={"count": "1000"})
        response.raise_for_status()
        return {r["id"]: r["userName"] for r in response.json().get("Resources", [])}

    def user_names(self) -> set[str]:
        return set(self.users().values())

    def wipe(self) -> None:
        """Delete every user (the server is the tests' alone)."""
        for user_id in self.users():
            self.delete(user_id)

    def add(self, user_name: str) -> str:
        """A user made outside reclaim; its id."""
        body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name}
        response = self._call("POST", "/Users", json=body)
        if response.status_code in (400, 409):  # a name it does not take, or taken (any case)
            raise ValueError(f"scim2-server refuses the user name {user_name!r}")
        response.raise_for_status()
        user_id = response.json()["id"]
        assert isinstance(user_id, str)
        return user_id

    def has(self, user_id: str) -> bool:
        response = self._call("GET", f"/Users/{quote(user_id, safe='')}")
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True

    def delete(self, user_id: str) -> None:
        self._call("DELETE", f"/Users/{quote(user_id, safe='')}").raise_for_status()


@contextlib.contextmanager
def scim_server(workdir: Path) -> Iterator[ScimServer]:
    """scim2-server on a free port; stopped at the end."""
    if importlib.util.find_spec("scim2_server") is None:
        unavailable("scim2-server is not installed (a dev dependency: uv sync)")
    (port,) = free_ports(1)
    base_url = f"http://127.0.0.1:{port}/v2"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "RECLAIM_SCIM_TOKEN": token}

    def ready() -> bool:
        headers = {"Authorization": f"Bearer {token}"}
        response = httpx.get(f"{base_url}/ServiceProviderConfig", headers=headers, timeout=2)
        return response.status_code == 200

    process = start(
        "scim2-server",
        [sys.executable, "-c", _LAUNCH, "--hostname", "127.0.0.1", "--port", str(port)],
        ready=ready,
        log=workdir / f"scim-{port}.log",
        env=env,
    )
    try:
        yield ScimServer(base_url, token, process)
    finally:
        process.stop()


def user() -> ScimUser:
    """A user of the server ``SCIM_BASE_URL`` and ``SCIM_TOKEN`` name."""
    return ScimUser()

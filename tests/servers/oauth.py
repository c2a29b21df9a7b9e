"""node-oidc-provider, a real OpenID provider (npm ``oidc-provider``), for ``OAuthGrant``.

``tests/servers/oidc/provider.mjs`` runs it on Node.js with the client credentials grant,
revocation and introspection on, and one confidential client whose secret is drawn per start
and passed in the environment (never argv). :func:`oidc_provider` starts it; :func:`grant` and
:func:`given_grant` are factories for ``reclaim.testing.check_crash``, configured by the
``OAUTH_*`` variables of the environment the crash kit's child inherits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx

from reclaim.backends.oauth import OAuthGrant
from servers import SERVERS_DIR, ServerProcess, free_ports, start, unavailable

__all__ = ["OIDC_DIR", "OidcProvider", "given_grant", "grant", "oidc_provider"]

OIDC_DIR: Final = SERVERS_DIR / "oidc"
CLIENT_ID: Final = "reclaim-tests"


@dataclasses.dataclass(frozen=True)
class OidcProvider:
    """A running provider: its issuer, its one client, and ways to ask it directly (not through
    reclaim) what became of a token."""

    issuer: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    process: ServerProcess = dataclasses.field(repr=False)

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def revocation_url(self) -> str:
        return f"{self.issuer}/token/revocation"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/token/introspection"

    def env(self) -> dict[str, str]:
        """The ``OAUTH_*`` variables that make ``OAuthGrant()`` use this provider by discovery."""
        return {
            "OAUTH_ISSUER": self.issuer,
            "OAUTH_CLIENT_ID": self.client_id,
            "OAUTH_CLIENT_SECRET": self.client_secret,
        }

    def mint(self) -> str:
        """A fresh access token of the client, as a test's own login flow would get one."""
        return _mint(self.token_url, self.client_id, self.client_secret)

    def introspect(self, token: str) -> dict[str, Any]:
        response = httpx.post(
            self.introspection_url,
            data={"token": token},
            auth=(self.client_id, self.client_secret),
            timeout=10,
        )
        response.raise_for_status()
        info = response.json()
        assert isinstance(info, dict)
        return info

    def active(self, token: str) -> bool:
        """What introspection says (RFC 7662), asked of the provider itself."""
        return self.introspect(token).get("active") is True

    def events(self, name: str) -> int:
        """How many ``client_credentials.<name>`` events (``saved``: a token issued,
        ``destroyed``: revoked) the provider has logged."""
        line = f"event client_credentials.{name} {self.client_id}"
        return sum(1 for got in self.process.output().splitlines() if got == line)


def _mint(token_url: str, client_id: str, client_secret: str) -> str:
    response = httpx.post(
        token_url,
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        timeout=10,
    )
    response.raise_for_status()
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


@contextlib.contextmanager
def oidc_provider(workdir: Path, *, revocation: bool = True) -> Iterator[OidcProvider]:
    """node-oidc-provider on a free port (``revocation=False``: one whose metadata names no
    revocation endpoint); stopped at the end."""
    node = shutil.which("node")
    if node is None:
        unavailable("Node.js (node) is not installed: node-oidc-provider runs on it")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        unavailable("npm's oidc-provider is not installed: run `npm ci` in tests/servers/oidc")
    (port,) = free_ports(1)
    issuer = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": secret,
        "OIDC_NO_REVOCATION": "" if revocation else "1",
    }

    def ready() -> bool:
        url = f"{issuer}/.well-known/openid-configuration"
        return httpx.get(url, timeout=2).status_code == 200

    process = start(
        "node-oidc-provider",
        [node, "provider.mjs"],
        ready=ready,
        log=workdir / f"oidc-{port}.log",
        env=env,
        cwd=OIDC_DIR,
    )
    try:
        yield OidcProvider(issuer, CLIENT_ID, secret, process)
    finally:
        process.stop()


def grant() -> OAuthGrant:
    """A client-credentials grant of the provider the ``OAUTH_*`` variables name (the issuer
    only: the endpoints are discovered)."""
    return OAuthGrant()


def given_grant() -> OAuthGrant:
    """A token the child mints itself, handed to reclaim as a test's login flow would."""
    issuer = os.environ["OAUTH_ISSUER"]
    client_id, secret = os.environ["OAUTH_CLIENT_ID"], os.environ["OAUTH_CLIENT_SECRET"]
    return OAuthGrant(access_token=_mint(f"{issuer}/token", client_id, secret))

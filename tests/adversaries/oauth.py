"""Adversaries of ``oauth.grant`` and ``oauth.github``: live grants of a user at the stand-in
authorization servers of tests/providers/oauth.py.

A token carries no name, so these kinds cannot ask the server whether a token is reclaim's: the
foreign records are a user's live tokens under names that are not whole reclaim names, which the
guard refuses (docs/backends/oauth.md says what reclaim can and cannot check).
"""

from __future__ import annotations

import pytest

from adversaries import Adversary, Factory, Foreign
from providers.oauth import (
    CLIENT_ID,
    CLIENT_SECRET,
    GITHUB_CLIENT_ID,
    GITHUB_CLIENT_SECRET,
    GithubServer,
    OAuthServer,
)
from reclaim.backends.oauth import GithubGrant, OAuthGrant

GOOD = "rc_0badf00d_t0a1b2_1"
BAD_NAMES = ("alice", f"{GOOD}_backup", f"myapp_{GOOD}", GOOD.upper())


def grant(request: pytest.FixtureRequest) -> Adversary:
    server = OAuthServer().start()
    request.addfinalizer(server.stop)
    made: dict[str, str] = {}

    def create(name: str) -> None:  # a grant "for" a name: tokens carry none
        made[name] = server.issue()[0]

    access, refresh = server.issue()  # the user's own login
    backend = OAuthGrant(
        server.url,
        access_token=access,
        refresh_token=refresh,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )

    def present() -> bool:
        return server.active(access) and refresh is not None and server.active(refresh)

    return Adversary(
        kind="oauth.grant",
        leftovers_url=None,
        create=create,
        present=lambda name: name in made and server.active(made[name]),
        remove=lambda name: None,
        foreign=[
            Foreign(f"a user's grant under the name {bad!r}", backend.plan(bad), present)
            for bad in BAD_NAMES
        ],
    )


def github(request: pytest.FixtureRequest) -> Adversary:
    server = GithubServer().start()
    request.addfinalizer(server.stop)
    made: dict[str, str] = {}

    def create(name: str) -> None:
        made[name] = server.issue()

    token = server.issue(user="alice")
    backend = GithubGrant(
        token, client_id=GITHUB_CLIENT_ID, client_secret=GITHUB_CLIENT_SECRET, api_url=server.url
    )
    return Adversary(
        kind="oauth.github",
        leftovers_url=None,
        create=create,
        present=lambda name: name in made and server.valid(made[name]),
        remove=lambda name: None,
        foreign=[
            Foreign(
                f"alice's authorization under the name {bad!r}",
                backend.plan(bad),
                lambda: server.valid(token),
            )
            for bad in BAD_NAMES
        ],
    )


KINDS: dict[str, Factory] = {"oauth.grant": grant, "oauth.github": github}

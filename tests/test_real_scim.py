"""ScimUser against a real SCIM 2.0 server: PyPI's ``scim2-server``, started by
``tests/servers/scim.py``; the stand-in tests are in test_backend_accounts.py.

Proves, on the real server: the conformance kit (``reclaim.testing.check_backend``) with the
user name as reclaim's name and as an e-mail address made of it, including users named like
reclaim's that are made outside it and must survive a sweep and a registry-less leftover pass;
a SIGKILLed owner's user is deleted by its watchdog, and by a sweep when the watchdog died too
(``reclaim.testing.check_crash``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import CHILD_TIMEOUT
from reclaim.backends import Record
from reclaim.backends.accounts import ScimUser
from reclaim.testing import check_backend, check_crash
from servers.scim import ScimServer, scim_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimServer]:
    with scim_server(tmp_path_factory.mktemp("scim")) as running:
        yield running


@pytest.fixture
def scim(server: ScimServer) -> Iterator[ScimServer]:
    """The server, emptied of every user after the test (also when it failed)."""
    yield server
    server.wipe()


@pytest.mark.parametrize("domain", [None, "example.test"], ids=["username", "email"])
def test_conformance(
    scim: ScimServer, tmp_path: Path, registry_path: str, domain: str | None
) -> None:
    def delete_outside(record: Record) -> None:
        scim.delete(record["id"])

    made: set[str] = set()

    def make_lookalike(name: str) -> Callable[[], bool]:
        user_id = scim.add(f"{name}@{domain}" if domain else name)
        made.add(user_id)
        return lambda: scim.has(user_id)

    parts = urlsplit(scim.base_url)
    check_backend(
        lambda: ScimUser(scim.base_url, token=scim.token, email_domain=domain),
        registry=tmp_path / "kit.sqlite3",
        delete_outside=delete_outside,
        make_lookalike=make_lookalike,
        leftovers_url=f"scim+http://:{scim.token}@{parts.netloc}{parts.path}",
    )
    assert made, "scim2-server took none of the look-alike names"
    left = {n for i, n in scim.users().items() if i not in made}
    assert not left, f"the kit left users behind: {sorted(left)}"


def test_sigkill_the_watchdog_or_a_sweep_deletes_the_user(
    scim: ScimServer, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in scim.env().items():  # the crash kit's child inherits them
        monkeypatch.setenv(name, value)
    check_crash("servers.scim:user", registry=registry_path, timeout=CHILD_TIMEOUT)
    assert scim.user_names() == set()

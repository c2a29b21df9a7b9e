"""OAuthGrant against a real OpenID provider: node-oidc-provider (npm ``oidc-provider``) on
Node.js, started by ``tests/servers/oauth.py``; the stand-in tests are in test_backend_oauth.py.

Proves, on the real server: given only the issuer, acquire discovers the endpoints (the
provider serves revocation at ``/token/revocation``, not at the ``{issuer}/revoke`` reclaim
once guessed) and journals them; a client-credentials token and a given token are revoked at
release (introspection, asked of the provider itself, says inactive), and a given token's
planned record finds the endpoints at release; endpoints given explicitly are used without
discovery; a provider whose metadata names no revocation endpoint, or an issuer with no
metadata and nothing at the guessed path, is refused before a token is minted (the provider's
own log says none was); a SIGKILLed owner's tokens are revoked by its watchdog, and by a sweep
when the watchdog died too (``reclaim.testing.check_crash``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

import reclaim
from _services import closed_port
from conftest import CHILD_TIMEOUT, wait_until
from reclaim import AcquireError, NotCreatedError
from reclaim._registry import open_registry
from reclaim.backends import make_name
from reclaim.backends.oauth import OAuthGrant
from reclaim.testing import check_crash
from servers.oauth import OidcProvider, oidc_provider

RUN = "5e7a0c1d"


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with oidc_provider(tmp_path_factory.mktemp("oidc")) as provider:
        yield provider


@pytest.fixture(scope="module")
def unrevocable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """A provider with revocation turned off: its metadata names no revocation endpoint."""
    with oidc_provider(tmp_path_factory.mktemp("oidc-norevoke"), revocation=False) as provider:
        yield provider


def client(provider: OidcProvider, issuer: str | None = None, **kwargs: object) -> OAuthGrant:
    return OAuthGrant(
        issuer or provider.issuer,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        **kwargs,  # type: ignore[arg-type]
    )


def entries(registry_path: str) -> list[object]:
    reg = open_registry(registry_path)
    try:
        return list(reg.resources())
    finally:
        reg.close()


def test_client_credentials_by_discovery_are_journaled_and_revoked(oidc: OidcProvider) -> None:
    saved, destroyed = oidc.events("saved"), oidc.events("destroyed")
    grant, record = client(oidc).acquire(make_name(RUN, 1))
    record = json.loads(json.dumps(record))
    assert record["token_url"] == oidc.token_url
    assert record["revocation_url"] == oidc.revocation_url, "discovered, not guessed"
    assert record["introspection_url"] == oidc.introspection_url
    assert record["metadata_url"].startswith(f"{oidc.issuer}/.well-known/")
    assert record["endpoints_from"] == dict.fromkeys(
        ("token_url", "revocation_url", "introspection_url"), "metadata"
    )
    assert grant.access_token is not None
    assert oidc.active(grant.access_token)
    assert OAuthGrant.exists(record)
    assert oidc.events("saved") == saved + 1
    OAuthGrant.release(record)
    assert not oidc.active(grant.access_token), "introspection says inactive after release"
    assert not OAuthGrant.exists(record)
    assert oidc.events("destroyed") == destroyed + 1
    OAuthGrant.release(record)  # revoked already: RFC 7009 answers 200, a no-op (I3)


def test_a_given_token_is_checked_owned_and_revoked(oidc: OidcProvider) -> None:
    token = oidc.mint()
    grant, record = client(oidc, access_token=token).acquire(make_name(RUN, 2))
    assert grant.access_token == token
    assert grant.expires_at is not None, "introspection's exp"
    assert record["revocation_url"] == oidc.revocation_url
    OAuthGrant.release(record)
    assert not oidc.active(token)
    with pytest.raises(NotCreatedError, match="not active"):
        client(oidc, access_token=token).acquire(make_name(RUN, 3))


def test_the_planned_record_of_a_given_token_finds_the_endpoints_at_release(
    oidc: OidcProvider,
) -> None:
    """The owner died between plan and acquire: the planned record has the issuer, not yet the
    endpoints; release discovers them and revokes (I1)."""
    token = oidc.mint()
    planned = json.loads(json.dumps(client(oidc, access_token=token).plan(make_name(RUN, 4))))
    assert planned["revocation_url"] is None
    assert OAuthGrant.exists(planned)
    OAuthGrant.release(planned)
    assert not oidc.active(token)
    assert not OAuthGrant.exists(planned)


def test_explicit_endpoints_win_and_skip_discovery(oidc: OidcProvider) -> None:
    """The issuer points where nothing listens: only the endpoints given are ever asked."""
    backend = client(
        oidc,
        f"http://127.0.0.1:{closed_port()}",
        token_url=oidc.token_url,
        revocation_url=oidc.revocation_url,
        introspection_url=oidc.introspection_url,
    )
    grant, record = backend.acquire(make_name(RUN, 5))
    assert record["metadata_url"] is None
    assert set(record["endpoints_from"].values()) == {"given"}
    assert grant.access_token is not None
    OAuthGrant.release(record)
    assert not oidc.active(grant.access_token)


def test_async_face_by_discovery(oidc: OidcProvider) -> None:
    async def main() -> str:
        async with reclaim.Fixture("async-oidc") as fx:
            grant = await fx.aacquire(client(oidc))
            assert grant.access_token is not None
            assert oidc.active(grant.access_token)
            return grant.access_token

    token = asyncio.run(main())
    assert not oidc.active(token)


def test_no_revocation_endpoint_refuses_before_a_token_is_minted(
    unrevocable: OidcProvider, registry_path: str
) -> None:
    saved = unrevocable.events("saved")
    with pytest.raises(NotCreatedError, match="names no revocation_endpoint") as info:
        client(unrevocable).acquire(make_name(RUN, 6))
    assert "no token is asked for" in str(info.value)
    assert unrevocable.client_secret not in str(info.value)
    with reclaim.Fixture("unrevocable") as fx, pytest.raises(AcquireError) as caught:
        fx.acquire(client(unrevocable))
    assert "nothing was created" in str(caught.value)
    assert entries(registry_path) == [], "nothing journaled: nothing to revoke"
    assert unrevocable.events("saved") == saved, "no token was minted"

    token = unrevocable.mint()
    with pytest.raises(NotCreatedError, match="does not take the token it was given"):
        client(unrevocable, access_token=token).acquire(make_name(RUN, 7))
    assert unrevocable.active(token), "the test's own token is left as it was"


def test_no_metadata_and_nothing_at_the_guess_is_refused(oidc: OidcProvider) -> None:
    """An issuer the provider publishes no metadata for: the conventional endpoints are
    guessed, and the guessed revocation endpoint is asked before a token is: it is not there
    (404), so nothing is acquired."""
    saved = oidc.events("saved")
    backend = client(oidc, f"{oidc.issuer}/tenant-without-metadata")
    with pytest.raises(NotCreatedError, match=r"is not a revocation endpoint \(HTTP 404\)"):
        backend.acquire(make_name(RUN, 8))
    assert oidc.events("saved") == saved


@pytest.mark.parametrize("factory", ["servers.oauth:grant", "servers.oauth:given_grant"])
def test_sigkill_the_watchdog_or_a_sweep_revokes(
    oidc: OidcProvider, registry_path: str, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    for name, value in oidc.env().items():  # the crash kit's child inherits them
        monkeypatch.setenv(name, value)
    destroyed = oidc.events("destroyed")
    check_crash(factory, registry=registry_path, timeout=CHILD_TIMEOUT)
    if factory.endswith(":grant"):  # the provider's own word: both crashes' tokens revoked
        wait_until(lambda: oidc.events("destroyed") == destroyed + 2, timeout=10)

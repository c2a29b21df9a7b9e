"""OAuth grants against local stand-in servers (``tests/providers/oauth.py``): an RFC 7009/7662
authorization server and GitHub's OAuth-app endpoints.

Proves, for a token the test was given and for a client-credentials token: the planned record
already revokes a given token (I1); release revokes (refresh token first, with its access
tokens), a second release and a release after someone else revoked are no-ops (I3); introspection
decides when the server refuses a revocation; the sweeper revokes from the registry alone (I2);
tokens and client secrets never reach an error, the registry or ``reclaim status`` (I7); 429 and
GitHub's 403 with Retry-After are retried. An acquire that provably owns nothing (a token
endpoint that cannot be reached or refuses the client, given tokens that are all dead) leaves no
entry; a given token that cannot be checked stays journaled, to be revoked.

The crash kits run every grant on these stand-ins (tests/test_crash_kit.py): a given pair, a
client-credentials token and a GitHub grant, each revoked by the watchdog of a SIGKILLed owner
(GitHub's after a 429), or by a sweep when the watchdog died too (``check_crash``); a server
that is down keeps the entry failed, no token or client secret shown, until a later sweep
(``check_outage``).

``reclaim.testing.check_backend`` does not apply: it checks a resource that acquire *creates*,
while a given token exists before reclaim owns it, and a client-credentials token is not in the
planned record (see ``reclaim.backends.oauth``). Each of its checks that does apply is made
here."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import reclaim
from _services import closed_port
from conftest import reclaim_cli
from providers.oauth import (
    CLIENT_ID,
    CLIENT_SECRET,
    GITHUB_CLIENT_ID,
    GITHUB_CLIENT_SECRET,
    GithubServer,
    OAuthServer,
)
from reclaim import AcquireError, NotCreatedError, ReleaseError, sweep
from reclaim._registry import open_registry
from reclaim._run import end_run
from reclaim.backends import Record, _http, load_backend
from reclaim.backends import make_name as _make_name
from reclaim.backends.oauth import GithubGrant, Grant, OAuthGrant
from reclaim.testing import dead_identity

RUN = "0a1b2c3d"
NOW = 1_800_000_000  # one creation time for every name made here: the same name, every call


def make_name(run_id: str, seq: int) -> str:
    return _make_name(run_id, seq, now=NOW)


@pytest.fixture
def auth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture
def github() -> Iterator[GithubServer]:
    with GithubServer() as server:
        yield server


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits the backend asks for, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(_http, "_pause", seen.append)
    return seen


def given(server: OAuthServer, **kwargs: Any) -> tuple[OAuthGrant, str, str | None]:
    access, refresh = server.issue()
    backend = OAuthGrant(
        server.url,
        access_token=access,
        refresh_token=refresh,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        **kwargs,
    )
    return backend, access, refresh


def github_grant(server: GithubServer, token: str, **kwargs: Any) -> GithubGrant:
    return GithubGrant(
        token,
        client_id=GITHUB_CLIENT_ID,
        client_secret=GITHUB_CLIENT_SECRET,
        api_url=server.url,
        **kwargs,
    )


def round_trip(record: Record) -> Record:
    again: Record = json.loads(json.dumps(record))
    assert again == record
    return again


def test_kinds_load_through_entry_points() -> None:
    assert load_backend("oauth.grant") is OAuthGrant
    assert load_backend("oauth.github") is GithubGrant


# --- a token the test was given ----------------------------------------------------------------


def test_given_tokens_are_owned_from_the_planned_record(auth: OAuthServer) -> None:
    """I1: the token is journaled before acquire, so the planned record alone revokes it."""
    backend, access, refresh = given(auth)
    planned = round_trip(backend.plan(make_name(RUN, 1)))
    assert OAuthGrant.exists(planned)
    OAuthGrant.release(planned)
    assert not auth.active(access)
    assert refresh is not None
    assert not auth.active(refresh)
    with pytest.raises(AcquireError, match="refresh token it was given is not active"):
        backend.acquire(make_name(RUN, 1))


def test_given_tokens_acquire_release_twice(auth: OAuthServer) -> None:
    backend, access, refresh = given(auth)
    grant, record = backend.acquire(make_name(RUN, 2))
    record = round_trip(record)
    assert isinstance(grant, Grant)
    assert grant.access_token == access
    assert grant.refresh_token == refresh
    assert grant.headers() == {"Authorization": f"Bearer {access}"}
    assert grant.scope == "openid profile"
    assert grant.expires_at is not None
    assert access not in repr(grant)
    assert OAuthGrant.exists(record)
    OAuthGrant.release(record)
    assert not OAuthGrant.exists(record)
    assert auth.live_tokens() == []
    OAuthGrant.release(record)  # revocation answers 200 for a revoked token (RFC 7009)
    revokes = [s for m, p, s in auth.answered if p == "/revoke"]
    # The first: acquire's check that the guessed revocation endpoint is there (no metadata).
    assert revokes == [200] * 5
    assert auth.revoked == [refresh], "the refresh token first; its access token went with it"


def test_release_after_someone_else_revoked(auth: OAuthServer) -> None:
    backend, _, _ = given(auth)
    _, record = backend.acquire(make_name(RUN, 3))
    for token in auth.tokens.values():
        token.active = False
    assert not OAuthGrant.exists(record)
    OAuthGrant.release(record)


def test_access_tokens_the_server_will_not_revoke(registry_path: str) -> None:
    """RFC 7009 section 2.2.1: ``unsupported_token_type`` for access tokens. With a refresh token
    the grant goes all the same (introspection says so); with only an access token the release
    fails, and says why."""
    with OAuthServer(access_revocable=False) as server:
        backend, _, _ = given(server)
        _, record = backend.acquire(make_name(RUN, 4))
        OAuthGrant.release(record)
        assert server.live_tokens() == []

        lone, _ = server.issue(refresh=False)
        only_access = OAuthGrant(
            server.url, access_token=lone, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        _, record = only_access.acquire(make_name(RUN, 5))
        with pytest.raises(ReleaseError, match=r"HTTP 400 \(unsupported_token_type\)") as info:
            OAuthGrant.release(record)
        assert lone not in str(info.value)
        assert server.active(lone)


def test_client_auth_basic_or_post(auth: OAuthServer) -> None:
    for client_auth, basic in (("basic", True), ("post", False)):
        backend, _, _ = given(auth, client_auth=client_auth)
        _, record = backend.acquire(make_name(RUN, 6))
        OAuthGrant.release(record)
        revokes = [r for r in auth.requests if r.path == "/revoke"][-2:]
        assert len(revokes) == 2
        for revoke in revokes:
            assert (revoke.basic() == (CLIENT_ID, CLIENT_SECRET)) is basic
            assert ("client_secret" in revoke.form()) is not basic
    assert auth.live_tokens() == []


# --- client credentials ------------------------------------------------------------------------


def test_client_credentials_grant(registry_path: str) -> None:
    with OAuthServer(refresh_on_client_credentials=True) as server:
        backend = OAuthGrant(
            server.url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, scope="api:read"
        )
        planned = backend.plan(make_name(RUN, 7))
        assert planned["access_token"] is None
        assert not OAuthGrant.exists(planned)
        OAuthGrant.release(planned)  # nothing known, nothing to do
        grant, record = backend.acquire(make_name(RUN, 7))
        record = round_trip(record)
        assert grant.scope == "api:read"
        assert grant.refresh_token is not None
        assert record["expires_at"] is not None
        assert OAuthGrant.exists(record)
        OAuthGrant.release(record)
        assert server.live_tokens() == []
        OAuthGrant.release(record)


def test_bad_client_secret_is_clear_and_secret_free(auth: OAuthServer) -> None:
    wrong = "wrong-client-secret-1f2e"
    backend = OAuthGrant(auth.url, client_id=CLIENT_ID, client_secret=wrong)
    with pytest.raises(AcquireError) as info:
        backend.acquire(make_name(RUN, 8))
    text = str(info.value)
    assert "HTTP 401 (invalid_client: client authentication failed)" in text
    assert "oauth.grant" in text
    assert wrong not in text


def test_a_provider_quoting_secrets_is_redacted(auth: OAuthServer) -> None:
    """Called directly (no Fixture, no reaper to redact after it), the error has no secret."""
    backend, access, refresh = given(auth)
    _, record = backend.acquire(make_name(RUN, 18))
    echo = {"error": "server_error", "error_description": f"{refresh} {access} {CLIENT_SECRET}"}
    auth.inject(3, 500, echo)  # both revocations, then the introspection that would decide
    with pytest.raises(ReleaseError) as info:
        OAuthGrant.release(record)
    text = str(info.value)
    assert "HTTP 500 (server_error: *** *** ***)" in text
    for secret in (access, refresh, CLIENT_SECRET):
        assert secret is not None
        assert secret not in text
    OAuthGrant.release(record)
    assert auth.live_tokens() == []


def test_constructor_errors_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OAUTH_ISSUER", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_REVOCATION_URL"):
        monkeypatch.delenv(var, raising=False)
    token = "at-x"
    with pytest.raises(ValueError, match="OAUTH_REVOCATION_URL"):
        OAuthGrant(access_token=token)
    with pytest.raises(ValueError, match="client credentials grant"):
        OAuthGrant("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="http:// or https://"):
        OAuthGrant("ftp://auth.test", access_token=token)
    monkeypatch.setenv("OAUTH_ISSUER", "http://127.0.0.1:1/realms/e2e")
    backend = OAuthGrant(access_token=token, introspection_url="http://127.0.0.1:1/i")
    assert backend.revocation_url is None  # discovered (or guessed and checked) at acquire
    assert backend.issuer == "http://127.0.0.1:1/realms/e2e"
    assert backend.introspection_url == "http://127.0.0.1:1/i"


# --- rate limits and secrets -------------------------------------------------------------------


def test_429_and_503_are_retried_after_retry_after(auth: OAuthServer, waits: list[float]) -> None:
    backend, _, _ = given(auth)
    _, record = backend.acquire(make_name(RUN, 9))
    auth.throttle(1, retry_after="2")
    auth.throttle(1, retry_after="3", status=503)
    OAuthGrant.release(record)
    assert waits == [2.0, 3.0]
    assert auth.live_tokens() == []


def test_sweeper_revokes_from_the_registry_alone_and_keeps_secrets(
    auth: OAuthServer, registry_path: str
) -> None:
    backend, access, refresh = given(auth)
    reg = open_registry(registry_path)
    try:
        reg.open_run(RUN, dead_identity(), label="oauth")
        name = make_name(RUN, 10)
        rid = reg.plan(RUN, "oauth", backend.kind, name, backend.plan(name))
        _, record = backend.acquire(name)
        reg.mark_acquired(rid, record)
        echo = {"error": "server_error", "error_description": f"cannot revoke {refresh}"}
        auth.inject(9, 500, echo)
        assert sweep(reg, grace=0).failed == 1
        kept = reg.get_resource(rid)
        assert kept is not None
        assert kept.last_error is not None
        assert "HTTP 500 (server_error: cannot revoke ***)" in kept.last_error
        for secret in (access, refresh, CLIENT_SECRET):
            assert secret is not None
            assert secret not in kept.last_error
        for args in (("status", "--json"), ("status",)):
            out = reclaim_cli(*args).stdout
            assert "failed" in out
            for secret in (access, refresh, CLIENT_SECRET):
                assert secret is not None
                assert secret not in out
        assert auth.active(access)
        auth.heal()
        assert sweep(reg, grace=0).released == 1
        assert auth.live_tokens() == []
    finally:
        reg.close()


def test_missing_httpx_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from reclaim.backends.oauth import OAuthGrant\n"
        "b = OAuthGrant('http://127.0.0.1:1', access_token='at')\n"
        "try:\n"
        "    b.acquire('rc_0a1b2c3d_a_1')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("MissingExtraError")
    assert "pip install 'reclaim[http]'" in out.stdout


# --- GitHub ------------------------------------------------------------------------------------


def test_github_grant_release_twice(github: GithubServer) -> None:
    token = github.issue()
    sibling = github.issue()  # another token of the same user for the same app
    stranger = github.issue(user="hubot")
    backend = github_grant(github, token)
    planned = round_trip(backend.plan(make_name(RUN, 11)))
    grant, record = backend.acquire(make_name(RUN, 11))
    assert round_trip(record) == planned
    assert grant.access_token == token
    assert grant.scope == "read:user"
    assert token not in repr(grant)
    assert GithubGrant.exists(record)
    GithubGrant.release(record)
    assert not GithubGrant.exists(record)
    assert not github.valid(sibling), "the whole grant went"
    assert github.valid(stranger)
    GithubGrant.release(record)  # the check answers 404: nothing to do
    deletes = [r for r in github.requests if r.method == "DELETE"]
    assert len(deletes) == 1
    assert deletes[0].path == f"/applications/{GITHUB_CLIENT_ID}/grant"
    assert deletes[0].basic() == (GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET)
    assert deletes[0].json() == {"access_token": token}


def test_github_revoke_one_token(github: GithubServer) -> None:
    token, sibling = github.issue(), github.issue()
    _, record = github_grant(github, token, revoke="token").acquire(make_name(RUN, 12))
    GithubGrant.release(record)
    assert not github.valid(token)
    assert github.valid(sibling)


def test_github_acquire_refuses_a_dead_token(github: GithubServer) -> None:
    with pytest.raises(AcquireError, match="does not know the token"):
        github_grant(github, "gho_revoked_or_never_valid").acquire(make_name(RUN, 13))


def test_github_refused_delete_stays_failed(github: GithubServer) -> None:
    token = github.issue()
    _, record = github_grant(github, token).acquire(make_name(RUN, 14))
    echo = {"message": f"Validation Failed for {token}"}
    github.inject(1, 422, echo, method="DELETE")
    with pytest.raises(ReleaseError, match=r"HTTP 422 \(Validation Failed for \*\*\*\)") as info:
        GithubGrant.release(record)
    assert token not in str(info.value)
    assert GITHUB_CLIENT_SECRET not in str(info.value)
    assert github.valid(token), "the check still knows it: not released, and not pretended"
    GithubGrant.release(record)
    assert not github.valid(token)


def test_github_secondary_rate_limit_is_retried(github: GithubServer, waits: list[float]) -> None:
    token = github.issue()
    _, record = github_grant(github, token).acquire(make_name(RUN, 15))
    github.throttle(1, retry_after="4", status=403)
    GithubGrant.release(record)
    assert waits == [4.0]
    assert not github.valid(token)


def test_github_client_id_cannot_leave_its_path(github: GithubServer) -> None:
    with pytest.raises(ValueError, match="not a GitHub client id"):
        GithubGrant(
            "gho_x",
            client_id="../../orgs/acme",
            client_secret=GITHUB_CLIENT_SECRET,
            api_url=github.url,
        )
    record = github_grant(github, github.issue()).plan(make_name(RUN, 16))
    record["client_id"] = "x/../../orgs/acme"  # a tampered registry
    with pytest.raises(ValueError, match="not a GitHub client id"):
        GithubGrant.release(record)
    assert github.requests == []


def test_github_credentials_come_from_the_environment(
    github: GithubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_CLIENT_ID", raising=False)
    with pytest.raises(ValueError, match="GITHUB_CLIENT_ID"):
        GithubGrant("gho_x")
    monkeypatch.setenv("GITHUB_CLIENT_ID", GITHUB_CLIENT_ID)
    monkeypatch.setenv("GITHUB_CLIENT_SECRET", GITHUB_CLIENT_SECRET)
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    token = github.issue()
    _, record = GithubGrant(token).acquire(make_name(RUN, 17))
    GithubGrant.release(record)
    assert not github.valid(token)


# --- an acquire that owns nothing (issue 11) ---------------------------------------------------


def entries(registry_path: str) -> list[Any]:
    reg = open_registry(registry_path)
    try:
        return list(reg.resources())
    finally:
        reg.close()


def test_an_unreachable_token_endpoint_leaves_no_entry(registry_path: str) -> None:
    backend = OAuthGrant(
        f"http://127.0.0.1:{closed_port()}", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    with pytest.raises(NotCreatedError, match="ConnectError"):
        backend.acquire(make_name(RUN, 40))
    with reclaim.Fixture("down") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(backend)
    assert not isinstance(caught.value, ReleaseError)
    assert "ConnectError" in str(caught.value), "the cause is named"
    assert CLIENT_SECRET not in str(caught.value)
    assert entries(registry_path) == []


def test_a_refused_client_leaves_no_entry(auth: OAuthServer, registry_path: str) -> None:
    wrong = "wrong-client-secret-7a6b"
    backend = OAuthGrant(auth.url, client_id=CLIENT_ID, client_secret=wrong)
    with pytest.raises(NotCreatedError, match="HTTP 401"):
        backend.acquire(make_name(RUN, 41))
    with reclaim.Fixture("wrong") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(backend)
    assert not isinstance(caught.value, ReleaseError)
    assert "invalid_client" in str(caught.value)
    assert wrong not in str(caught.value)
    assert wrong not in "".join(getattr(caught.value, "__notes__", []))
    assert entries(registry_path) == []
    # Refused (401) at the check of the revocation endpoint, before any token is asked for.
    paths = [p for _, p in auth.calls if not p.startswith("/.well-known/")]
    assert paths == ["/revoke", "/revoke"]
    assert auth.revoked == []


def test_given_tokens_that_are_all_dead_leave_no_entry(
    auth: OAuthServer, registry_path: str
) -> None:
    backend, access, refresh = given(auth)
    assert refresh is not None
    for token in (access, refresh):
        auth.tokens[token].active = False
    with reclaim.Fixture("dead") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(backend)
    assert "refresh token it was given is not active" in str(caught.value)
    assert "nothing was created" in str(caught.value)
    assert access not in str(caught.value)
    assert entries(registry_path) == []


def test_a_given_token_still_alive_is_revoked(auth: OAuthServer, registry_path: str) -> None:
    """The refresh token is dead but the access token lives: not "nothing": the Fixture's
    release revokes the live one."""
    backend, access, refresh = given(auth)
    assert refresh is not None
    auth.tokens[refresh].active = False
    with pytest.raises(AcquireError, match="though the other token is") as direct:
        backend.acquire(make_name(RUN, 42))
    assert not isinstance(direct.value, NotCreatedError)
    with reclaim.Fixture("half") as fixture, pytest.raises(AcquireError):
        fixture.acquire(backend)
    assert not auth.active(access)
    assert entries(registry_path) == []


def test_given_tokens_at_an_unreachable_server_stay_journaled(registry_path: str) -> None:
    """Nothing is created for a given token, but it is owned from the plan on: a server that
    cannot be asked is no proof the token is dead, so it stays to be revoked (AcquireError)."""
    with OAuthServer() as server:
        backend, access, _ = given(server)
        server.down()
        with pytest.raises(AcquireError, match="ConnectError") as direct:
            backend.acquire(make_name(RUN, 43))
        assert not isinstance(direct.value, NotCreatedError)
        with reclaim.Fixture("down") as fixture, pytest.raises(AcquireError):
            fixture.acquire(backend)
        (entry,) = entries(registry_path)
        assert entry.state.value == "failed"
        server.up()
        end_run(registry_path)  # the run's end releases what it still holds: the token
        assert not server.active(access)
        assert entries(registry_path) == []


def test_github_unknown_token_leaves_no_entry(github: GithubServer, registry_path: str) -> None:
    token = "gho_revoked_or_never_valid"
    with pytest.raises(NotCreatedError, match="does not know the token"):
        github_grant(github, token).acquire(make_name(RUN, 44))
    with reclaim.Fixture("dead") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(github_grant(github, token))
    assert "nothing was created" in str(caught.value)
    assert token not in str(caught.value)
    assert entries(registry_path) == []

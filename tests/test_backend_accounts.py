"""User accounts through SCIM 2.0 and a generic REST API, against local stand-in servers
(``tests/providers/scim.py``): release finds an account whose id was never recorded by its exact
name and never touches another; hostile ids and names cannot leave their URL or filter; secrets
stay out of errors, the registry and ``reclaim status``; 429 is retried after Retry-After; an
acquire that provably created nothing (no connection, a refused token, a taken name) leaves no
entry and deletes nobody's account.

The kits run both kinds on these stand-ins: ``check_backend`` over every flavour of create
answer (tests/test_conformance.py); ``check_crash`` (a SIGKILLed owner's account is deleted by
its watchdog, which waits out a 429, or by a sweep when the watchdog died too) and
``check_outage`` (a provider that is down keeps the entry failed, no token shown, until a later
sweep) in tests/test_crash_kit.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import reclaim
from _services import closed_port
from conftest import reclaim_cli, registry_is_empty
from providers.scim import RestUsers, ScimServer
from reclaim import AcquireError, BackendError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim._registry import open_registry
from reclaim.backends import Backend, Record, _http, accounts, load_backend
from reclaim.backends import make_name as _make_name
from reclaim.backends.accounts import Account, RestAccount, ScimUser
from reclaim.testing import dead_identity

RUN = "0a1b2c3d"
NOW = 1_800_000_000  # one creation time for every name made here: the same name, every call


def make_name(run_id: str, seq: int) -> str:
    return _make_name(run_id, seq, now=NOW)


@pytest.fixture
def scim() -> Iterator[ScimServer]:
    with ScimServer() as server:
        yield server


@pytest.fixture
def rest() -> Iterator[RestUsers]:
    with RestUsers() as server:
        yield server


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits the backend asks for, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(_http, "_pause", seen.append)
    return seen


# --- the kinds ---------------------------------------------------------------------------------


def test_kinds_load_through_entry_points() -> None:
    assert load_backend("account.rest") is RestAccount
    assert load_backend("account.scim") is ScimUser


# --- I1: the planned record finds the account by its exact name --------------------------------


def test_scim_second_delete_is_404_and_release_is_a_no_op(scim: ScimServer) -> None:
    backend = ScimUser(scim.base_url, token=scim.token)
    _, record = backend.acquire(make_name(RUN, 1))
    ScimUser.release(record)
    ScimUser.release(record)
    # Each release first asks whose the id is (I8): the second one hears 404 and is done.
    deletes = [status for method, _, status in scim.answered if method == "DELETE"]
    assert deletes == [204]
    gets = [status for method, _, status in scim.answered if method == "GET"]
    assert gets == [200, 404]
    assert scim.users == {}


def test_lookup_deletes_only_the_exact_name(registry_path: str) -> None:
    """An API that ignores the filter and lists everyone: release of a planned record (no id)
    deletes the one account whose name field is exactly the planned name."""
    with RestUsers(ignore_filter=True) as server:
        name = make_name(RUN, 1)
        strangers = [f"{name}2", name.upper(), f"x{name}", "bob", f"{name}@example.test"]
        for stranger in strangers:
            server.add(stranger)
        backend = RestAccount(server.collection, token=server.token)
        planned = backend.plan(name)
        assert planned["id"] is None
        assert not RestAccount.exists(planned)
        backend.acquire(name)
        assert RestAccount.exists(planned)
        RestAccount.release(planned)
        assert server.usernames() == set(strangers)


def test_scim_lookup_is_case_insensitive_and_exact(scim: ScimServer) -> None:
    name = make_name(RUN, 3)
    scim.add(f"{name}0@example.test")
    scim.add(f"{name}@example.testing")
    backend = ScimUser(scim.base_url, token=scim.token, email_domain="example.test")
    planned = backend.plan(name)
    user_id = scim.add(f"{name}@EXAMPLE.TEST")  # created by a run that died before recording
    assert ScimUser.exists(planned)
    ScimUser.release(planned)
    assert user_id not in scim.users
    assert scim.user_names() == {f"{name}0@example.test", f"{name}@example.testing"}


def test_a_duplicate_is_refused_never_adopted(scim: ScimServer) -> None:
    name = make_name(RUN, 4)
    scim.add(name)
    with pytest.raises(AcquireError, match=r"409 \(uniqueness: .*never adopts") as info:
        ScimUser(scim.base_url, token=scim.token).acquire(name)
    assert info.value.kind == "account.scim"
    assert info.value.resource == name


def test_acquire_failure_in_a_fixture_leaves_nothing(registry_path: str) -> None:
    """The server creates the account but answers without an id: the Fixture releases the
    planned record, which finds the account by name (the window of I1, in-process)."""
    with RestUsers(hide_id=True) as server, reclaim.Fixture("half") as fixture:
        with pytest.raises(AcquireError, match="no id at 'id' and no Location header"):
            fixture.acquire(RestAccount(server.collection, token=server.token))
        assert [m for m, _ in server.calls] == ["POST", "GET", "DELETE"]
        assert server.users == {}


# --- hostile input -----------------------------------------------------------------------------


def test_an_id_of_a_users_account_is_refused(rest: RestUsers, scim: ScimServer) -> None:
    """I8: a record with a reclaim name but the id of a user's account deletes nothing; the
    server is asked whose the id is first. Before, both were deleted by id."""
    alice = rest.add("alice")
    planned = RestAccount(rest.collection, token=rest.token).plan(make_name(RUN, 7))
    hostile = {**planned, "id": alice}
    for call in (RestAccount.release, RestAccount.exists):
        with pytest.raises(ForeignNameError, match=r"refused.*'alice'"):
            call(hostile)
    assert rest.usernames() == {"alice"}
    carol = scim.add("carol")
    hostile = {**ScimUser(scim.base_url, token=scim.token).plan(make_name(RUN, 7)), "id": carol}
    for call in (ScimUser.release, ScimUser.exists):
        with pytest.raises(ForeignNameError, match=r"refused.*'carol'"):
            call(hostile)
    assert scim.user_names() == {"carol"}
    assert not [r for r in rest.requests + scim.requests if r.method == "DELETE"]
    with pytest.raises(ValueError, match="must be '\\{name\\}'"):
        RestAccount(rest.collection, {"username": "user_{name}"})


def test_a_hostile_id_stays_inside_its_url(rest: RestUsers) -> None:
    record = RestAccount(rest.collection, token=rest.token).plan(make_name(RUN, 5))
    victim = rest.add("admin")
    record["id"] = f"../{victim}?force=1"
    RestAccount.release(record)  # 404 for that odd id: gone, and nothing else was touched
    (get,) = [r for r in rest.requests if r.method == "GET"]
    assert get.raw_path == f"/api/users/..%2F{victim}%3Fforce%3D1"
    assert get.query == {}
    assert not [r for r in rest.requests if r.method == "DELETE"]
    assert rest.usernames() == {"admin"}
    for bad in ("..", "."):
        record["id"] = bad
        with pytest.raises(ReleaseError, match="cannot be used in a URL"):
            RestAccount.release(record)


def test_a_hostile_scim_name_stays_inside_its_filter(scim: ScimServer) -> None:
    keep = scim.add("rc_keep_me")
    record = ScimUser(scim.base_url, token=scim.token).plan(make_name(RUN, 6))
    record["user_name"] = '" or userName sw "rc'  # as a tampered registry could hold
    with pytest.raises(ForeignNameError, match="refused"):
        ScimUser.release(record)  # not the planned name's userName: nothing is sent (I8)
    assert scim.requests == []
    # The filter quotes whatever it is given: no value can end it early.
    lookup = accounts._scim_lookup(record)
    assert _http.Context(ScimUser, record).run(lookup, ReleaseError, "be looked up") == []
    assert keep in scim.users
    (query,) = [r for r in scim.requests if r.method == "GET"]
    assert query.arg("filter") == 'userName eq "\\" or userName sw \\"rc"'


def test_constructors_refuse_what_would_break_i1_or_inject() -> None:
    with pytest.raises(ValueError, match=r"must carry reclaim's name"):
        RestAccount("http://127.0.0.1:1/users", {"username": "fixed"})
    with pytest.raises(ValueError, match=r"\{id\}"):
        RestAccount("http://127.0.0.1:1/users", item_url="{collection}/x")
    with pytest.raises(ValueError, match="http:// or https://"):
        RestAccount("file:///etc/passwd")
    with pytest.raises(ValueError, match="no query"):
        RestAccount("http://127.0.0.1:1/users?tenant=a")
    with pytest.raises(ValueError, match="header"):
        RestAccount("http://127.0.0.1:1/users", headers={"X-A": "b\r\nInjected: yes"})
    with pytest.raises(ValueError, match="host name"):
        ScimUser("http://127.0.0.1:1/scim/v2", email_domain='x.test" or userName pr "')
    with pytest.raises(ValueError, match="cannot set userName"):
        ScimUser("http://127.0.0.1:1/scim/v2", attributes={"userName": "admin"})


def test_defaults_come_from_the_environment(
    scim: ScimServer, rest: RestUsers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCIM_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="SCIM_BASE_URL"):
        ScimUser()
    monkeypatch.setenv("SCIM_BASE_URL", scim.base_url)
    monkeypatch.setenv("SCIM_TOKEN", scim.token)
    monkeypatch.setenv("RECLAIM_ACCOUNT_URL", rest.collection)
    monkeypatch.setenv("RECLAIM_ACCOUNT_TOKEN", rest.token)
    for backend in (ScimUser(), RestAccount()):
        account, record = backend.acquire(make_name(RUN, 7))
        assert account.login == make_name(RUN, 7)
        type(backend).release(record)
    assert scim.users == {}
    assert rest.users == {}


# --- what a test gets --------------------------------------------------------------------------


def test_password_is_given_but_never_journaled(scim: ScimServer, rest: RestUsers) -> None:
    name = make_name(RUN, 8)
    attributes = {"displayName": "Sarah {name}", "name": {"givenName": "Sarah"}}
    backend = ScimUser(
        scim.base_url,
        token=scim.token,
        email_domain="example.test",
        password=True,
        attributes=attributes,
    )
    user, record = backend.acquire(name)
    assert isinstance(user, Account)
    assert user.password
    assert scim.passwords[user.id] == user.password
    assert user.password not in json.dumps(record)
    assert user.password not in repr(user)
    (body,) = scim.created_bodies
    assert body["displayName"] == f"Sarah {name}"
    assert body["emails"] == [{"value": f"{name}@example.test", "type": "work", "primary": True}]
    assert user.url == f"{scim.base_url}/Users/{user.id}"

    rest_backend = RestAccount(
        rest.collection, {"username": "{name}", "password": "{password}"}, token=rest.token
    )
    account, rest_record = rest_backend.acquire(name)
    assert account.password
    assert rest.passwords[account.id] == account.password
    assert account.password not in json.dumps(rest_record)
    assert "{password}" not in json.dumps(rest_record)
    ScimUser.release(record)
    RestAccount.release(rest_record)


def test_describe_names_the_account(scim: ScimServer) -> None:
    backend = ScimUser(scim.base_url, token=scim.token)
    _, record = backend.acquire(make_name(RUN, 9))
    assert ScimUser.describe(record) == f"SCIM user {make_name(RUN, 9)} id {record['id']}"
    ScimUser.release(record)


# --- secrets and errors ------------------------------------------------------------------------


def test_wrong_token_is_a_clear_error_without_the_token(scim: ScimServer) -> None:
    wrong = "wrong-token-9z8y7x"
    with pytest.raises(AcquireError) as info:
        ScimUser(scim.base_url, token=wrong).acquire(make_name(RUN, 10))
    text = str(info.value)
    assert "HTTP 401" in text
    assert "credentials were refused" in text
    assert make_name(RUN, 10) in text
    assert wrong not in text


def test_a_provider_quoting_the_token_is_redacted(scim: ScimServer) -> None:
    """Called directly (no Fixture, no reaper to redact after it), the error has no token."""
    _, record = ScimUser(scim.base_url, token=scim.token).acquire(make_name(RUN, 16))
    scim.inject(1, 403, {"detail": f"token {scim.token} may not delete"}, method="DELETE")
    with pytest.raises(ReleaseError, match="HTTP 403") as info:
        ScimUser.release(record)
    assert "token *** may not delete" in str(info.value)
    assert scim.token not in str(info.value)
    ScimUser.release(record)


def _dead_run_holding(registry_path: str, backend: Backend[Any]) -> tuple[int, Record]:
    """A run whose owner is dead, holding one acquired resource: for the sweeper."""
    reg = open_registry(registry_path)
    try:
        run_id = os.urandom(4).hex()
        reg.open_run(run_id, dead_identity(), label="accounts")
        name = make_name(run_id, 1)
        resource_id = reg.plan(run_id, "accounts", backend.kind, name, backend.plan(name))
        _, record = backend.acquire(name)
        reg.mark_acquired(resource_id, record)
        return resource_id, record
    finally:
        reg.close()


def test_secret_never_reaches_the_registry_or_status(scim: ScimServer, registry_path: str) -> None:
    """A provider that quotes the token in its error: the failed entry keeps a redacted error."""
    resource_id, record = _dead_run_holding(
        registry_path, ScimUser(scim.base_url, token=scim.token)
    )
    echo = {"detail": f"token {scim.token} may not delete users", "status": "403"}
    scim.inject(3, 403, echo, method="DELETE")
    failed = json.loads(reclaim_cli("sweep", "--grace", "0", "--json", check=False).stdout)
    assert failed["failed"] == 1
    reg = open_registry(registry_path)
    try:
        kept = reg.get_resource(resource_id)
        assert kept is not None
        assert kept.state == "failed"
        assert kept.last_error is not None
        assert "HTTP 403" in kept.last_error
        assert "may not delete users" in kept.last_error
        assert scim.token not in kept.last_error
    finally:
        reg.close()
    for args in (("status", "--json"), ("status",)):
        out = reclaim_cli(*args).stdout
        assert scim.token not in out
        assert "failed" in out
    assert record["id"] in scim.users
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 1
    assert scim.users == {}


def test_429_is_retried_after_retry_after(scim: ScimServer, waits: list[float]) -> None:
    backend = ScimUser(scim.base_url, token=scim.token)
    scim.throttle(2, retry_after="7")
    _, record = backend.acquire(make_name(RUN, 11))
    assert waits == [7.0, 7.0]
    scim.throttle(1, retry_after=None)  # no header: the back-off's own first wait
    scim.throttle(1, retry_after="120")  # capped
    ScimUser.release(record)
    assert waits[2:] == [0.5, _http.MAX_RETRY_AFTER]
    assert scim.users == {}
    assert [s for _, _, s in scim.injected] == [429, 429, 429, 429]


def test_429_without_end_fails_clearly(scim: ScimServer, waits: list[float]) -> None:
    backend = ScimUser(scim.base_url, token=scim.token)
    _, record = backend.acquire(make_name(RUN, 12))
    scim.throttle(_http.RATE_LIMIT_TRIES)
    with pytest.raises(ReleaseError, match=r"HTTP 429 .*slow down after 5 tries"):
        ScimUser.release(record)
    assert len(waits) == _http.RATE_LIMIT_TRIES - 1
    assert record["id"] in scim.users, "nothing deleted, nothing pretended"
    ScimUser.release(record)


def test_retry_after_as_a_date(scim: ScimServer, waits: list[float]) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    scim.throttle(1, retry_after=when)
    ScimUser.release(ScimUser(scim.base_url, token=scim.token).plan(make_name(RUN, 13)))
    assert waits == [_http.MAX_RETRY_AFTER]


def test_a_wrong_base_url_is_an_error_not_a_release(scim: ScimServer) -> None:
    """A lookup that meets a 404 (a wrong base URL) must not make a release look done."""
    backend = ScimUser(scim.base_url, token=scim.token)
    planned = backend.plan(make_name(RUN, 15))
    backend.acquire(make_name(RUN, 15))
    wrong = {**planned, "base_url": f"{scim.url}/scim/v1"}
    with pytest.raises(ReleaseError, match="HTTP 404"):
        ScimUser.release(wrong)
    assert scim.user_names() == {make_name(RUN, 15)}
    ScimUser.release(planned)


def test_exists_reports_an_unreachable_server() -> None:
    server = ScimServer().start()
    server.stop()
    token = "t-unreachable"
    record = ScimUser(server.url + "/scim/v2", token=token).plan(make_name(RUN, 14))
    with pytest.raises(BackendError, match=r"ConnectError.*is the server up"):
        ScimUser.exists(record)


def test_missing_httpx_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from reclaim.backends.accounts import ScimUser\n"
        "b = ScimUser('http://127.0.0.1:1/scim/v2', token='t')\n"
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


# --- the registry-less sweep -------------------------------------------------------------------


@pytest.mark.parametrize("operators", [("eq", "sw"), ("eq",)], ids=["sw", "eq-only"])
def test_leftovers_are_reclaim_names_only(operators: tuple[str, ...]) -> None:
    """Paged; a provider without ``sw`` is listed in full, and still only reclaim names come."""
    with ScimServer(page_size=2, operators=operators) as server:
        ours = [make_name(RUN, n) for n in (1, 2)] + [f"{make_name(RUN, 3)}@example.test"]
        foreign = [
            f"{make_name(RUN, 4)}_admin",
            f"x{make_name(RUN, 5)}",
            make_name(RUN, 6).upper(),
            "rc_admin",
            "rc_0a1b2c3d_zz",
            "bob@example.test",
        ]
        for name in ours + foreign:
            server.add(name)
        target = f"scim+http://:{server.token}@127.0.0.1:{server.port}/scim/v2"
        found = list(ScimUser.list_leftovers(target))
        assert sorted(f.record["user_name"] for f in found) == sorted(ours)
        assert {f.run_id for f in found} == {RUN}
        for leftover in found:
            assert server.token not in repr(leftover)
            ScimUser.release(leftover.record)
        assert server.user_names() == set(foreign)


# --- an acquire that created nothing (issue 11) ------------------------------------------------


def account_backends(url: str, token: str) -> list[Backend[Account]]:
    return [RestAccount(f"{url}/api/users", token=token), ScimUser(f"{url}/scim/v2", token=token)]


@pytest.mark.parametrize("which", [0, 1], ids=["rest", "scim"])
def test_an_unreachable_server_leaves_no_entry(which: int, registry_path: str) -> None:
    token = "tok-unreachable-5e4d"
    backend = account_backends(f"http://127.0.0.1:{closed_port()}", token)[which]
    with pytest.raises(NotCreatedError, match="ConnectError") as direct:
        backend.acquire(make_name(RUN, 40))
    assert token not in str(direct.value)
    with reclaim.Fixture("down") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(backend)
    assert not isinstance(caught.value, ReleaseError)
    assert "ConnectError" in str(caught.value), "the cause is named"
    assert "is the server up" in str(caught.value)
    assert token not in str(caught.value)
    assert registry_is_empty(registry_path), "nothing is left to fail at every sweep"


def test_a_refused_token_leaves_no_entry(
    rest: RestUsers, scim: ScimServer, registry_path: str
) -> None:
    wrong = "wrong-token-3c2b1a"
    backends = [RestAccount(rest.collection, token=wrong), ScimUser(scim.base_url, token=wrong)]
    for backend in backends:
        with pytest.raises(NotCreatedError, match="HTTP 401"):
            backend.acquire(make_name(RUN, 41))
        with reclaim.Fixture("wrong") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert not isinstance(caught.value, ReleaseError)
        assert "HTTP 401" in str(caught.value)
        assert "credentials were refused" in str(caught.value)
        assert wrong not in str(caught.value)
        assert wrong not in "".join(getattr(caught.value, "__notes__", []))
    assert registry_is_empty(registry_path)
    assert [m for m, _ in rest.calls] == ["POST", "POST"], "no compensating lookup or delete"
    assert [m for m, _ in scim.calls] == ["POST", "POST"]


def test_a_taken_name_is_somebody_elses_and_is_left_alone(
    rest: RestUsers, scim: ScimServer, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """409: the account that exists is not ours. Before, the compensating release found it by
    its (colliding) name and deleted it."""
    name = make_name(RUN, 45)
    theirs_rest = rest.add(name)
    theirs_scim = scim.add(name)
    with reclaim.Fixture("collide") as fixture:
        for backend in (
            RestAccount(rest.collection, token=rest.token),
            ScimUser(scim.base_url, token=scim.token),
        ):
            monkeypatch.setattr(type(backend), "adapt_name", lambda _self, _proposed: name)
            with pytest.raises(AcquireError, match="409") as caught:
                fixture.acquire(backend)
            assert "nothing was created" in str(caught.value)
    assert theirs_rest in rest.users, "the stranger's REST account is still there"
    assert theirs_scim in scim.users, "the stranger's SCIM user is still there"
    assert [m for m, _ in rest.calls] == ["POST"]
    assert [m for m, _ in scim.calls] == ["POST"]
    assert registry_is_empty(registry_path)


def test_a_server_error_on_create_is_not_proof(rest: RestUsers, registry_path: str) -> None:
    """A 5xx (or a 503 asked again, then a refusal) may have made the account: AcquireError,
    and the Fixture's release looks for it by name."""
    backend = RestAccount(rest.collection, token=rest.token)
    rest.inject(1, 500, {"error": "boom"}, method="POST")
    with pytest.raises(AcquireError, match="HTTP 500") as caught:
        backend.acquire(make_name(RUN, 42))
    assert not isinstance(caught.value, NotCreatedError)
    rest.inject(1, 503, {"error": "busy"}, {"Retry-After": "0"}, method="POST")
    rest.inject(1, 409, {"error": "conflict"}, method="POST")
    with pytest.raises(AcquireError, match="HTTP 409") as caught:
        backend.acquire(make_name(RUN, 43))
    assert not isinstance(caught.value, NotCreatedError), "the 503 may have made it"
    rest.throttle(1)  # a 429 refuses: the 409 after it is still proof
    rest.inject(1, 409, {"error": "conflict"}, method="POST")
    with pytest.raises(NotCreatedError, match="HTTP 409"):
        backend.acquire(make_name(RUN, 44))

"""Disposable inboxes (mail.tm, mailsac) against local stand-in servers (``tests/providers``):
a message is waited for and read, sync and async, and its link and code pulled out; mail.tm's
account is found from the journaled password alone (a stale token or a crash before the id was
recorded change nothing) and a stranger's address is never adopted; mail.tm's 8 requests per
second are respected and a 429 is retried after Retry-After, then reported; mailsac's public
inbox is emptied and its reserved address given back; leftovers are reclaim names only; hostile
names never reach a URL; secrets stay out of errors, the registry and ``reclaim status``; an
acquire that provably made nothing (no connection, a refused key, a stranger's address) leaves
no entry and touches nobody's inbox.

The kits run both kinds on these stand-ins: ``check_backend`` in tests/test_conformance.py;
``check_crash`` (a SIGKILLed owner's inbox is deleted by its watchdog, which waits out a 429, or
by a sweep when the watchdog died too) and ``check_outage`` (a provider that is down keeps the
entry failed until a later sweep; neither mailsac's key nor the password mail.tm's plan chose
is in the child's error or output, the entry or ``reclaim status``) in tests/test_crash_kit.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import reclaim
from _services import closed_port
from conftest import CHILD_TIMEOUT, reclaim_cli, registry_is_empty
from providers.mailsac import MailsacServer
from providers.mailtm import MailTmServer
from reclaim import (
    AcquireError,
    BackendError,
    ForeignNameError,
    MissingExtraError,
    NotCreatedError,
    ReleaseError,
)
from reclaim._reaper import RetryPolicy
from reclaim._registry import ResourceState, open_registry
from reclaim._sweep import sweep
from reclaim.backends import Backend, _http, load_backend, make_name
from reclaim.backends.email import (
    MailsacInbox,
    MailTmInbox,
    Message,
    find_code,
    find_links,
)
from reclaim.testing import dead_identity

RUN = "0a1b2c3d"


@pytest.fixture
def mailtm() -> Iterator[MailTmServer]:
    with MailTmServer() as server:
        yield server


@pytest.fixture
def mailsac() -> Iterator[MailsacServer]:
    with MailsacServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_domain_cache() -> None:
    """Stand-ins of earlier tests may have had this port and other domains."""
    MailTmInbox._domains.clear()


def name(seq: int) -> str:
    """A reclaim name of the run ``RUN`` (at a fixed time, so that it is the same each call)."""
    return make_name(RUN, seq, now=1_800_000_000)


# --- the kinds ---------------------------------------------------------------------------------


def test_kinds_load_through_entry_points() -> None:
    assert load_backend("email.mailtm") is MailTmInbox
    assert load_backend("email.mailsac") is MailsacInbox


# --- reading mail ------------------------------------------------------------------------------

WELCOME_TEXT = "Welcome! Confirm at https://app.example/verify?t=abc&u=7. Your code: 482910."
WELCOME_HTML = '<p><a href="https://app.example/verify?t=abc&amp;u=7">Confirm</a> code 482910</p>'


def test_mailtm_wait_read_link_and_code(mailtm: MailTmServer, registry_path: str) -> None:
    with reclaim.Fixture("signup") as persona:
        inbox = persona.acquire(MailTmInbox(base_url=mailtm.url))
        assert inbox.address.endswith("@reclaim-test.example"), "an active domain was picked"
        assert inbox.address.startswith("rc_")
        mailtm.deliver(inbox.address, subject="Newsletter", text="nothing to see")
        mailtm.deliver(
            inbox.address, subject="Confirm your account", text=WELCOME_TEXT, html=WELCOME_HTML
        )
        message = inbox.wait_for_message(subject="Confirm", timeout=10, interval=0.05)
        assert message.subject == "Confirm your account"
        assert message.link(contains="/verify") == "https://app.example/verify?t=abc&u=7"
        assert message.code() == "482910"
        assert message.sender == "noreply@example.com"
        # The newsletter is still there for whoever asks; the confirmation is not returned twice.
        assert inbox.wait_for_message(timeout=10, interval=0.05).subject == "Newsletter"
        with pytest.raises(TimeoutError, match="did not reach"):
            inbox.wait_for_message(timeout=0.2, interval=0.05)
        assert [m.subject for m in inbox.messages()] == ["Newsletter", "Confirm your account"]
    assert mailtm.addresses() == set()


def test_mailtm_async_flavour(mailtm: MailTmServer, registry_path: str) -> None:
    async def main() -> Message:
        async with reclaim.Fixture("async-signup") as persona:
            inbox = await persona.aacquire(MailTmInbox(base_url=mailtm.url))
            mailtm.deliver(inbox.address, subject="Your code", text="Code 1234 expires soon")
            message = await inbox.await_for_message(contains="Code", timeout=10, interval=0.05)
            assert [m.id for m in await inbox.amessages()] == [message.id]
            return message

    assert asyncio.run(main()).code(length=4) == "1234"
    assert mailtm.addresses() == set()


def test_mailtm_arelease_and_a_second_release(mailtm: MailTmServer) -> None:
    backend = MailTmInbox(base_url=mailtm.url)
    _inbox, record = asyncio.run(backend.aacquire(name(1)))
    asyncio.run(MailTmInbox.arelease(record))
    assert mailtm.addresses() == set()
    MailTmInbox.release(record)  # the token is refused now, so is the password: gone (I3)
    assert not MailTmInbox.exists(record)


def test_mailtm_expired_token_is_renewed_with_the_password(mailtm: MailTmServer) -> None:
    inbox, record = MailTmInbox(base_url=mailtm.url).acquire(name(1))
    mailtm.expire_tokens()
    mailtm.deliver(inbox.address, subject="Later", text="still readable")
    assert inbox.wait_for_message(timeout=10, interval=0.05).text == "still readable"
    mailtm.expire_tokens()
    MailTmInbox.release(record)
    assert mailtm.addresses() == set()


def test_mailtm_release_needs_no_account_id(mailtm: MailTmServer) -> None:
    """The crash between create and record: the planned record (address and password, no id)
    finds the account by logging in (I1)."""
    backend = MailTmInbox(base_url=mailtm.url)
    planned = backend.plan(name(1))
    assert "account_id" not in planned
    backend.acquire(name(1))
    assert MailTmInbox.exists(planned)
    MailTmInbox.release(planned)
    assert mailtm.addresses() == set()


def test_mailtm_never_adopts_a_strangers_address(mailtm: MailTmServer, registry_path: str) -> None:
    backend = MailTmInbox(base_url=mailtm.url)
    taken = f"{name(1)}@reclaim-test.example"
    mailtm.create_account(taken, "the-strangers-password")
    with pytest.raises(AcquireError, match=r"422.*already used.*only if its own password"):
        backend.acquire(name(1))
    MailTmInbox.release(backend.plan(name(1)))  # our password opens nothing: a no-op
    assert mailtm.addresses() == {taken}


def test_mailtm_picks_the_domain_it_is_given(registry_path: str) -> None:
    with MailTmServer(domains=("one.example", "two.example")) as server:
        backend = MailTmInbox(base_url=server.url, domain="two.example")
        inbox, record = backend.acquire(name(1))
        assert inbox.address == f"{name(1)}@two.example"
        MailTmInbox.release(record)


def test_a_retired_domain_is_asked_for_again(registry_path: str) -> None:
    with MailTmServer(domains=("old.example",)) as server:
        _inbox, first = MailTmInbox(base_url=server.url).acquire(name(1))
        assert first["address"].endswith("@old.example")
        server.domains = ["new.example"]  # mail.tm retires domains now and then
        with pytest.raises(AcquireError, match="not valid"):
            MailTmInbox(base_url=server.url).acquire(name(2))
        _inbox, third = MailTmInbox(base_url=server.url).acquire(name(3))
        assert third["address"].endswith("@new.example")
        for record in (first, third):
            MailTmInbox.release(record)
        assert server.addresses() == set()


def test_mailsac_public_inbox_is_emptied(mailsac: MailsacServer) -> None:
    backend = MailsacInbox(mailsac.api_key, base_url=mailsac.api_url)
    inbox, record = backend.acquire(name(1))
    assert inbox.address == f"{name(1)}@mailsac.com"
    assert mailsac.owners == {}, "a public inbox reserves nothing"
    assert not MailsacInbox.exists(record), "an empty public inbox holds nothing"
    mailsac.deliver(inbox.address, subject="Verify", html=WELCOME_HTML)
    mailsac.deliver(inbox.address, subject="Starred", text="kept by a delete-all", starred=True)
    message = inbox.wait_for_message(subject="Verify", timeout=10, interval=0.05)
    assert message.link() == "https://app.example/verify?t=abc&u=7"
    assert message.code(length=6) == "482910"
    assert MailsacInbox.exists(record)
    MailsacInbox.release(record)
    assert mailsac.messages(inbox.address) == [], "starred mail goes too"
    assert not MailsacInbox.exists(record)
    MailsacInbox.release(record)


def test_mailsac_reserved_address_second_release_is_400(mailsac: MailsacServer) -> None:
    backend = MailsacInbox(mailsac.api_key, base_url=mailsac.api_url, reserve=True)
    inbox, record = backend.acquire(name(1))
    mailsac.deliver(inbox.address, subject="hello", text="hi")
    MailsacInbox.release(record)
    assert mailsac.owners == {}
    assert mailsac.messages(inbox.address) == []
    before = len(mailsac.seen)
    MailsacInbox.release(record)  # 400 "already deleted" counts as done (I3)
    assert ("DELETE", f"/api/addresses/{inbox.address}") in mailsac.seen[before:]


def test_mailsac_address_owned_by_another_account(mailsac: MailsacServer) -> None:
    address = f"{name(1)}@mailsac.com"
    mailsac.reserve(address, "somebody-else")
    backend = MailsacInbox(mailsac.api_key, base_url=mailsac.api_url, reserve=True)
    with pytest.raises(AcquireError, match=r"401.*Owned by another account"):
        backend.acquire(name(1))
    with pytest.raises(ReleaseError, match="401"):
        MailsacInbox.release(backend.plan(name(1)))
    assert mailsac.owners == {address: "somebody-else"}


def test_mailsac_async_flavour(mailsac: MailsacServer, registry_path: str) -> None:
    async def main() -> str:
        backend = MailsacInbox(mailsac.api_key, base_url=mailsac.api_url, reserve=True)
        async with reclaim.Fixture("async") as persona:
            inbox = await persona.aacquire(backend)
            mailsac.deliver(inbox.address, subject="code", text="use 55667788")
            message = await inbox.await_for_message(timeout=10, interval=0.05)
            return message.code()

    assert asyncio.run(main()) == "55667788"
    assert mailsac.owners == {}
    assert mailsac.mail == []


def test_find_links_and_codes() -> None:
    text = "See https://a.example/x?y=1&amp;z=2, then (https://b.example/p). Code 0042 on 2026"
    assert find_links(text) == ["https://a.example/x?y=1&z=2", "https://b.example/p"]
    assert find_code(text) == "0042"
    assert find_code("ref https://x.example/123456 and 987654", length=6) == "987654"
    with pytest.raises(LookupError, match="no code of 6 digits"):
        find_code("only 1234 here", length=6)
    message = Message("1", "a@b.example", "s", "no links", "", "")
    with pytest.raises(LookupError, match="no link"):
        message.link()


# --- rate limits and 429 --------------------------------------------------------------------


def test_rate_limiter_books_slots() -> None:
    now = [100.0]
    limiter = _http.RateLimiter(8, 1.0, clock=lambda: now[0])
    assert [limiter.reserve() for _ in range(8)] == [0.0] * 8
    assert limiter.reserve() == pytest.approx(1.0), "the 9th waits for the 1st to age out"
    now[0] += 0.5
    assert limiter.reserve() == pytest.approx(0.5 + 0.0), "the 10th: the 2nd's slot + 1 s"
    now[0] += 5
    assert limiter.reserve() == pytest.approx(0.0)


def test_mailtm_stand_in_enforces_its_limit() -> None:
    with MailTmServer(rate=8, window=3600) as server:
        codes = [httpx.get(f"{server.url}/domains").status_code for _ in range(9)]
        assert codes == [200] * 8 + [429]


def test_mailtm_client_keeps_under_the_limit(registry_path: str) -> None:
    """The server allows 8 requests per 0.9 s (stricter than mail.tm); the client's pacing of 8
    per 1.05 s gets no 429 over some 30 requests, where an unpaced client would get many."""
    with MailTmServer(rate=8, window=0.9) as server:
        backend = MailTmInbox(base_url=server.url)
        records = [backend.acquire(name(n))[1] for n in range(1, 7)]
        for record in records:
            MailTmInbox.release(record)
            assert not MailTmInbox.exists(record)
        assert len(server.seen) >= 30
        assert server.too_many == 0
        assert server.addresses() == set()


def test_429_is_retried(mailtm: MailTmServer) -> None:
    backend = MailTmInbox(base_url=mailtm.url)
    _inbox, record = backend.acquire(name(1))
    mailtm.fail_next(3, 429)
    MailTmInbox.release(record)
    assert mailtm.injected == 3
    assert mailtm.addresses() == set()


def test_a_server_error_on_delete_is_not_a_release(mailtm: MailTmServer) -> None:
    _inbox, record = MailTmInbox(base_url=mailtm.url).acquire(name(1))
    mailtm.fail_next(10, 500, body={"hydra:description": "boom"}, only="DELETE /accounts/")
    with pytest.raises(ReleaseError, match=r"DELETE /accounts/\{id\} answered HTTP 500: boom"):
        MailTmInbox.release(record)
    assert mailtm.addresses() == {record["address"]}
    mailtm.clear_failures()
    MailTmInbox.release(record)
    assert mailtm.addresses() == set()


def test_retry_after_is_honoured_and_bounded() -> None:
    def response(value: str | None) -> httpx.Response:
        return httpx.Response(429, headers={} if value is None else {"Retry-After": value})

    assert _http._retry_after(response("3"), 0) == 3.0
    assert _http._retry_after(response("86400"), 0) == _http.MAX_RETRY_AFTER
    assert _http._retry_after(response(None), 0) == 0.5
    assert _http._retry_after(response(None), 2) == 2.0
    assert _http._retry_after(response("Wed, 21 Oct 2015 07:28:00 GMT"), 0) == 0.0
    assert _http._retry_after(response("soon"), 1) == 1.0


def test_endless_429_fails_then_a_later_sweep_releases(
    mailtm: MailTmServer, registry_path: str
) -> None:
    """429 for ever: bounded back-off, then the entry stays failed with a clear error (I5);
    once the provider answers again the sweep releases it."""
    reg = open_registry(registry_path)
    try:
        reg.open_run(RUN, dead_identity(), label="crashed")
        backend = MailTmInbox(base_url=mailtm.url)
        planned = backend.plan(name(1))
        rid = reg.plan(RUN, "f", backend.kind, name(1), planned)
        _inbox, record = backend.acquire(name(1))
        reg.mark_acquired(rid, record)
        mailtm.fail_next(1000, 429)
        fast = RetryPolicy(attempts=2, first_delay=0.01)
        first = sweep(reg, grace=0, policy=fast)
        assert (first.released, first.failed) == (0, 1)
        kept = reg.get_resource(rid)
        assert kept is not None
        assert kept.state == ResourceState.FAILED
        assert kept.last_error is not None
        assert "answered HTTP 429" in kept.last_error
        assert mailtm.addresses() == {record["address"]}
        mailtm.clear_failures()
        second = sweep(reg, grace=0, policy=fast)
        assert (second.released, second.failed) == (1, 0)
        assert mailtm.addresses() == set()
    finally:
        reg.close()


# --- names, URLs and secrets -------------------------------------------------------------------


def test_hostile_names_never_reach_a_url(mailtm: MailTmServer, mailsac: MailsacServer) -> None:
    with pytest.raises(ValueError, match="not valid"):
        MailTmInbox(base_url=mailtm.url, domain="evil.example/../accounts")
    with pytest.raises(ValueError, match="not valid"):
        MailsacInbox(mailsac.api_key, base_url=mailsac.api_url, domain="x.example?_mailsacKey=")
    with pytest.raises(ValueError, match="reclaim name"):
        MailTmInbox(base_url=mailtm.url, domain="reclaim-test.example").plan("../../accounts")
    hostile = {
        "name": name(1),
        "base_url": mailsac.api_url,
        "address": "x@mailsac.com/../../addresses",
        "api_key": mailsac.api_key,
        "reserve": True,
    }
    # An address that is not the name at a domain is refused before any I/O (I8).
    with pytest.raises(ForeignNameError, match="refused"):
        MailsacInbox.release(hostile)
    with pytest.raises(ForeignNameError, match="refused"):
        MailTmInbox.release({**hostile, "base_url": mailtm.url, "password": "x" * 10})
    with pytest.raises(ValueError, match="http"):
        MailTmInbox.release(
            {**hostile, "base_url": "file:///etc", "address": f"{name(1)}@b.example"}
        )
    assert mailsac.seen == []
    assert mailtm.seen == []


def test_secrets_stay_out_of_errors_registry_and_status(
    mailsac: MailsacServer, registry_path: str
) -> None:
    key = mailsac.api_key
    reg = open_registry(registry_path)
    try:
        reg.open_run(RUN, dead_identity(), label="crashed")
        backend = MailsacInbox(key, base_url=mailsac.api_url, reserve=True)
        rid = reg.plan(RUN, "f", backend.kind, name(1), backend.plan(name(1)))
        _inbox, record = backend.acquire(name(1))
        reg.mark_acquired(rid, record)
        # A provider whose error text quotes the key it was given.
        echo = {"message": f"internal error for key {key}", "error": "E_BROKEN"}
        mailsac.fail_next(1000, 500, body=echo)
        with pytest.raises(ReleaseError) as caught:
            MailsacInbox.release(record)
        assert "HTTP 500" in str(caught.value)
        assert "E_BROKEN" in str(caught.value), "the provider's code is named"
        assert key not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

        fast = RetryPolicy(attempts=2, first_delay=0.01)
        assert sweep(reg, grace=0, policy=fast).failed == 1
        kept = reg.get_resource(rid)
        assert kept is not None
        assert kept.last_error is not None
        assert "internal error for key ***" in kept.last_error
        status = reclaim_cli("status", "--json").stdout
        assert '"condition": "failed"' in status
        assert key not in status
        assert key not in reclaim_cli("status").stdout
        mailsac.clear_failures()
        assert sweep(reg, grace=0, policy=fast).released == 1
        assert mailsac.owners == {}
    finally:
        reg.close()


def test_a_wrong_key_is_a_clear_error_without_the_key(mailsac: MailsacServer) -> None:
    wrong = "k_wrong0123456789"
    with pytest.raises(AcquireError) as caught:
        MailsacInbox(wrong, base_url=mailsac.api_url).acquire(name(1))
    text = str(caught.value)
    assert "email.mailsac" in text
    assert name(1) in text
    assert "answered HTTP 401" in text
    assert wrong not in text


def test_an_unreachable_server_is_a_clear_error(mailtm: MailTmServer) -> None:
    _inbox, record = MailTmInbox(base_url=mailtm.url).acquire(name(1))
    mailtm.down()
    with pytest.raises(ReleaseError, match="cannot be reached") as caught:
        MailTmInbox.release(record)
    assert record["password"] not in str(caught.value)
    with pytest.raises(BackendError, match="could not be looked up"):
        MailTmInbox.exists(record)
    mailtm.up()
    MailTmInbox.release(record)
    assert mailtm.addresses() == set()


def test_credentials_and_urls_come_from_the_environment(
    mailsac: MailsacServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILSAC_KEY", mailsac.api_key)
    monkeypatch.setenv("RECLAIM_MAILSAC_URL", mailsac.api_url)
    backend = MailsacInbox()
    assert backend.plan(name(1))["base_url"] == mailsac.api_url
    assert backend.plan(name(1))["api_key"] == mailsac.api_key
    monkeypatch.delenv("MAILSAC_KEY")
    with pytest.raises(ValueError, match="MAILSAC_KEY"):
        MailsacInbox()


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_NO_HTTPX", ImportError("No module named 'httpx'"))
    with pytest.raises(MissingExtraError, match=r"reclaim\[http\]"):
        MailTmInbox()
    with pytest.raises(MissingExtraError, match=r"reclaim\[http\]"):
        MailsacInbox("k_x")


def test_the_module_imports_without_httpx() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from reclaim.backends.email import MailTmInbox\n"
        "from reclaim.backends.phone import TwilioNumber\n"
        "try:\n"
        "    MailTmInbox()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=CHILD_TIMEOUT,
    )
    assert "pip install 'reclaim[http]'" in out.stdout


# --- leftovers ---------------------------------------------------------------------------------


def test_mailsac_leftovers_are_reclaim_names_only(mailsac: MailsacServer) -> None:
    backend = MailsacInbox(mailsac.api_key, base_url=mailsac.api_url, reserve=True)
    _inbox, record = backend.acquire(name(1))
    ours = mailsac.api_keys[mailsac.api_key]
    lookalikes = [
        "rc_prod@mailsac.com",
        f"x{name(2)}@mailsac.com",
        f"{name(2)}_old@mailsac.com",
        f"{name(2)}.bak@mailsac.com",
        "rc_0A1B2C3D_abc_1@mailsac.com",
        "support@mailsac.com",
    ]
    for address in lookalikes:
        mailsac.reserve(address, ours)
    mailsac.reserve(f"{name(3)}@mailsac.com", "somebody-else")
    target = f"mailsac+http://{mailsac.api_key}@127.0.0.1:{mailsac.port}"
    found = list(MailsacInbox.list_leftovers(target))
    assert [f.record["address"] for f in found] == [record["address"]]
    assert found[0].run_id == RUN
    for leftover in found:
        MailsacInbox.release(leftover.record)
    assert set(mailsac.owners) == {*lookalikes, f"{name(3)}@mailsac.com"}
    assert MailsacInbox.url_schemes == ("mailsac", "mailsac+http")
    assert MailTmInbox.url_schemes == (), "mail.tm cannot list accounts"


# --- an acquire that made nothing (issue 11) ---------------------------------------------------


def test_an_unreachable_provider_leaves_no_entry(registry_path: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    key = "k_unreachable0123456789"
    backends: list[Backend[Any]] = [
        MailTmInbox(base_url=url),  # its plan asks for the domain: fails before any entry
        MailTmInbox(base_url=url, domain="reclaim-test.example"),  # fails at POST /accounts
        MailsacInbox(key, base_url=url),
        MailsacInbox(key, base_url=url, reserve=True),
    ]
    for backend in backends:
        with pytest.raises(NotCreatedError, match=r"cannot be reached.*ConnectError"):
            backend.acquire(name(40))
        with reclaim.Fixture("down") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert not isinstance(caught.value, ReleaseError)
        assert "ConnectError" in str(caught.value), "the cause is named"
        assert key not in str(caught.value)
    assert registry_is_empty(registry_path)


def test_an_unreachable_provider_async(registry_path: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    async def main() -> None:
        backends: list[Backend[Any]] = [
            MailTmInbox(base_url=url, domain="reclaim-test.example"),
            MailsacInbox("k_unreachable0123456789", base_url=url, reserve=True),
        ]
        for backend in backends:
            with pytest.raises(NotCreatedError, match="ConnectError"):
                await backend.aacquire(name(41))
            async with reclaim.Fixture("down") as fixture:
                with pytest.raises(AcquireError, match="ConnectError"):
                    await fixture.aacquire(backend)

    asyncio.run(main())
    assert registry_is_empty(registry_path)


def test_a_refused_key_leaves_no_entry(mailsac: MailsacServer, registry_path: str) -> None:
    wrong = "k_wrong9876543210"
    for reserve in (False, True):
        backend = MailsacInbox(wrong, base_url=mailsac.api_url, reserve=reserve)
        with reclaim.Fixture("wrong") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert not isinstance(caught.value, ReleaseError)
        assert "answered HTTP 401" in str(caught.value)
        assert "nothing was created" in str(caught.value)
        assert wrong not in str(caught.value)
        assert wrong not in "".join(getattr(caught.value, "__notes__", []))
    assert registry_is_empty(registry_path)
    assert not any(method == "DELETE" for method, _ in mailsac.seen), "no compensating release"


def test_a_strangers_address_is_left_alone(
    mailtm: MailTmServer,
    mailsac: MailsacServer,
    registry_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The address exists and is not ours (mail.tm 422 our password cannot open; mailsac 401
    owned by another account): nothing was made, and the entry is closed. Before, mailsac's
    compensating release was refused with 401 and the entry failed at every sweep."""
    collide = name(45)
    mailtm.create_account(f"{collide}@reclaim-test.example", "the-strangers-password")
    mailsac.reserve(f"{collide}@mailsac.com", "somebody-else")
    backends: list[Backend[Any]] = [
        MailTmInbox(base_url=mailtm.url),
        MailsacInbox(mailsac.api_key, base_url=mailsac.api_url, reserve=True),
    ]
    for backend in backends:
        monkeypatch.setattr(type(backend), "adapt_name", lambda _self, _proposed: collide)
        with reclaim.Fixture("collide") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert "nothing was created" in str(caught.value)
    assert mailtm.addresses() == {f"{collide}@reclaim-test.example"}
    assert mailsac.owners == {f"{collide}@mailsac.com": "somebody-else"}
    assert registry_is_empty(registry_path)


def test_no_credits_left_reserves_nothing(registry_path: str) -> None:
    with MailsacServer(credits=0) as server:
        backend = MailsacInbox(server.api_key, base_url=server.api_url, reserve=True)
        with pytest.raises(NotCreatedError, match="needs credits"):
            backend.acquire(name(46))
    assert registry_is_empty(registry_path)


def test_a_server_error_on_create_is_not_proof(mailtm: MailTmServer) -> None:
    backend = MailTmInbox(base_url=mailtm.url)
    mailtm.fail_next(1, 500, only="POST /accounts")
    with pytest.raises(AcquireError, match="HTTP 500") as caught:
        backend.acquire(name(47))
    assert not isinstance(caught.value, NotCreatedError)
    # Created, then the login fails: AcquireError, and the planned record finds the account.
    mailtm.fail_next(1, 500, only="POST /token")
    with pytest.raises(AcquireError, match="HTTP 500") as caught:
        backend.acquire(name(48))
    assert not isinstance(caught.value, NotCreatedError)
    assert len(mailtm.addresses()) == 1
    MailTmInbox.release(backend._planned[name(48)])  # what the Fixture journaled
    assert mailtm.addresses() == set()

"""Phone numbers (Twilio, sms-activate) against local stand-in servers (``tests/providers``):
SMS and codes are waited for, sync and async; a Twilio number bought but never recorded is found
by its FriendlyName (I1), across pages, and a 404 that is not Twilio's 20404 is never taken for
"released"; an sms-activate activation refused as too young (EARLY_CANCEL_DENIED) stays failed
until a later sweep cancels it, a used one is finished, every "already over" answer counts as
released, and a planned record never cancels a stranger's activation; leftovers are reclaim
names only; hostile ids never reach a URL; credentials stay out of errors, the registry,
``reclaim status`` and httpx's log; an acquire that provably bought or rented nothing (no
connection, refused credentials, no number, an answer that rents nothing) leaves no entry.

The kits run both kinds on these stand-ins: ``check_backend`` in tests/test_conformance.py;
``check_crash`` (a SIGKILLed owner's number is released by its watchdog, Twilio's after a 429,
or by a sweep when the watchdog died too) and ``check_outage`` (a provider that is down keeps
the entry failed, no token or key in the child's error or output, the entry or ``reclaim
status``, until a later sweep) in tests/test_crash_kit.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import reclaim
from _services import closed_port
from conftest import reclaim_cli, registry_is_empty
from providers._server import RawReply, RawRequest, json_reply
from providers.mailtm import MailTmServer
from providers.smsactivate import SmsActivateServer
from providers.twilio import TwilioServer
from reclaim import AcquireError, BackendError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim._reaper import RetryPolicy
from reclaim._registry import ResourceState, open_registry
from reclaim._run import end_run
from reclaim._sweep import sweep
from reclaim.backends import Backend, load_backend, make_name
from reclaim.backends.phone import SmsActivateNumber, TwilioNumber
from reclaim.testing import dead_identity

RUN = "0a1b2c3d"
FAST = RetryPolicy(attempts=2, first_delay=0.01)


def name(seq: int) -> str:
    """A reclaim name of the run ``RUN`` (at a fixed time, so that it is the same each call)."""
    return make_name(RUN, seq, now=1_800_000_000)


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server


@pytest.fixture
def sms() -> Iterator[SmsActivateServer]:
    with SmsActivateServer() as server:
        yield server


def twilio_number(server: TwilioServer, **kwargs: Any) -> TwilioNumber:
    return TwilioNumber(server.account_sid, server.auth_token, base_url=server.url, **kwargs)


def sms_number(server: SmsActivateServer, **kwargs: Any) -> SmsActivateNumber:
    return SmsActivateNumber(server.api_key, base_url=server.api_url, **kwargs)


# --- the kinds ---------------------------------------------------------------------------------


def test_kinds_load_through_entry_points() -> None:
    assert load_backend("phone.twilio") is TwilioNumber
    assert load_backend("phone.smsactivate") is SmsActivateNumber


# --- Twilio --------------------------------------------------------------------------------------


def test_twilio_sms_and_codes(twilio: TwilioServer, registry_path: str) -> None:
    with reclaim.Fixture("verify") as persona:
        phone = persona.acquire(twilio_number(twilio))
        assert twilio.owned() == {phone_name(twilio, phone.number): phone.number}
        twilio.deliver_sms(phone.number, "Your Example code is 551234", sender="+15550001111")
        twilio.deliver_sms(phone.number, "Second code: 9876")
        assert phone.wait_for_code(length=6, timeout=10, interval=0.05) == "551234"
        second = phone.wait_for_sms(contains="Second", timeout=10, interval=0.05)
        assert second.code() == "9876"
        with pytest.raises(TimeoutError, match="did not reach"):
            phone.wait_for_sms(timeout=0.2, interval=0.05)
        assert [s.sender for s in phone.messages()] == ["+15550001111", "+15017122661"]
    assert twilio.owned() == {}


def phone_name(server: TwilioServer, number: str) -> str:
    return next(n for n, owned in server.owned().items() if owned == number)


def test_twilio_async_flavour(twilio: TwilioServer, registry_path: str) -> None:
    async def main() -> str:
        async with reclaim.Fixture("async") as persona:
            phone = await persona.aacquire(twilio_number(twilio, area_code="500"))
            twilio.deliver_sms(phone.number, "code 4455")
            assert [s.body for s in await phone.amessages()] == ["code 4455"]
            sms = await phone.await_for_sms(timeout=10, interval=0.05)
            return sms.code()

    assert asyncio.run(main()) == "4455"
    assert twilio.owned() == {}
    _phone, record = asyncio.run(twilio_number(twilio).aacquire(name(1)))
    asyncio.run(TwilioNumber.arelease(record))
    assert twilio.owned() == {}


def test_twilio_friendly_name_finds_an_unrecorded_number(twilio: TwilioServer) -> None:
    """The crash between buying and recording the sid: the planned record finds the number by
    its FriendlyName and releases it; the numbers of other names are left alone."""
    backend = twilio_number(twilio)
    stranger = twilio.buy(twilio.available[-1], "production-line")
    planned = backend.plan(name(1))
    phone, _record = backend.acquire(name(1))
    assert twilio.owned()[name(1)] == phone.number
    assert TwilioNumber.exists(planned)
    TwilioNumber.release(planned)
    assert not TwilioNumber.exists(planned)
    assert list(twilio.owned()) == ["production-line"]
    assert stranger in twilio.numbers


def test_twilio_second_release_is_20404(twilio: TwilioServer) -> None:
    _phone, record = twilio_number(twilio).acquire(name(1))
    TwilioNumber.release(record)
    before = len(twilio.seen)
    TwilioNumber.release(record)
    # Release asks whose the sid is first (I8); Twilio's 20404 there means released already.
    assert twilio.seen[before:] == [
        (
            "GET",
            f"/2010-04-01/Accounts/{twilio.account_sid}/IncomingPhoneNumbers/{record['sid']}.json",
        )
    ]


def test_the_sid_of_a_users_number_is_refused(twilio: TwilioServer) -> None:
    """I8: a record with a reclaim name but the sid of a user's number releases nothing."""
    theirs = twilio.buy(twilio.available[-1], "Support line")
    hostile = {**twilio_number(twilio).plan(name(1)), "sid": theirs}
    for call in (TwilioNumber.release, TwilioNumber.exists):
        with pytest.raises(ForeignNameError, match=r"refused.*'Support line'"):
            call(hostile)
    assert theirs in twilio.numbers
    assert not [s for s in twilio.seen if s[0] == "DELETE"]


def test_a_404_that_is_not_twilios_is_not_a_release(twilio: TwilioServer) -> None:
    _phone, record = twilio_number(twilio).acquire(name(1))
    # Another server answers 404 without Twilio's code 20404.
    with MailTmServer() as stranger, pytest.raises(ReleaseError, match="HTTP 404"):
        TwilioNumber.release({**record, "base_url": stranger.url})
    assert twilio.owned() == {name(1): record["number"]}
    TwilioNumber.release(record)


def test_twilio_buys_the_number_it_is_given(twilio: TwilioServer) -> None:
    phone, record = twilio_number(twilio, phone_number="+15005550006").acquire(name(1))
    assert phone.number == "+15005550006"
    with pytest.raises(AcquireError, match=r"21422.*not available"):
        twilio_number(twilio, phone_number="+15005550006").acquire(name(2))
    TwilioNumber.release(record)
    assert twilio.owned() == {}


def test_twilio_lists_across_pages_and_only_reclaim_names(registry_path: str) -> None:
    with TwilioServer(page_size_limit=2) as server:
        backend = twilio_number(server)
        lookalikes = [
            "rc_prod",
            f"x{name(9)}",
            f"{name(9)} copy",
            f"{name(9)}_old",
            "rc_0A1B2C3D_abc_1",
        ]
        for friendly in lookalikes:
            server.buy(server.available[-1], friendly)
        ours = [backend.acquire(name(n))[1] for n in (1, 2)]
        target = f"twilio+http://{server.account_sid}:{server.auth_token}@127.0.0.1:{server.port}"
        found = list(TwilioNumber.list_leftovers(target))
        assert sorted(f.record["name"] for f in found) == [name(1), name(2)]
        assert {f.run_id for f in found} == {RUN}
        assert len([s for s in server.seen if s[1].endswith("IncomingPhoneNumbers.json")]) >= 4
        for leftover in found:
            TwilioNumber.release(leftover.record)
        assert sorted(server.owned()) == sorted(lookalikes)
        assert not any(TwilioNumber.exists(r) for r in ours)
    assert TwilioNumber.url_schemes == ("twilio", "twilio+http")
    assert SmsActivateNumber.url_schemes == (), "activations carry no name to list by"


class NextPageElsewhere(TwilioServer):
    """A Twilio whose listing points its next page at another host."""

    def handle(self, request: RawRequest) -> RawReply:
        if request.method == "GET" and request.path.endswith("/IncomingPhoneNumbers.json"):
            return json_reply(
                200,
                {"incoming_phone_numbers": [], "next_page_uri": "https://evil.example/steal"},
            )
        return super().handle(request)


def test_credentials_never_follow_a_next_page_elsewhere(registry_path: str) -> None:
    with NextPageElsewhere() as server:
        planned = twilio_number(server).plan(name(1))
        with pytest.raises(BackendError, match="unexpected next_page_uri"):
            TwilioNumber.exists(planned)
        with pytest.raises(ReleaseError, match="unexpected next_page_uri"):
            TwilioNumber.release(planned)


def test_twilio_hostile_values_never_reach_a_url(twilio: TwilioServer) -> None:
    with pytest.raises(ValueError, match="account SID"):
        TwilioNumber("AC../../Accounts/x", "t", base_url=twilio.url)
    with pytest.raises(ValueError, match="phone number"):
        twilio_number(twilio, phone_number="+1500/../../x")
    with pytest.raises(ValueError, match="country code"):
        twilio_number(twilio, country="US/../GB")
    with pytest.raises(ValueError, match="number_type"):
        twilio_number(twilio, number_type="Local.json?x=")
    with pytest.raises(ValueError, match="reclaim name"):
        twilio_number(twilio).plan("rc_../../x")
    record = twilio_number(twilio).plan(name(1))
    with pytest.raises(ValueError, match="number SID"):
        TwilioNumber.release({**record, "sid": "PN0/../../../Accounts"})
    with pytest.raises(ValueError, match="account SID"):
        TwilioNumber.release({**record, "account_sid": "AC1?PageSize=1"})
    assert twilio.seen == []


def test_twilio_429_is_retried(twilio: TwilioServer) -> None:
    _phone, record = twilio_number(twilio).acquire(name(1))
    twilio.fail_next(2, 429)
    TwilioNumber.release(record)
    assert twilio.injected == 2
    assert twilio.owned() == {}


def test_twilio_token_stays_out_of_errors_registry_and_status(
    twilio: TwilioServer, registry_path: str
) -> None:
    token = twilio.auth_token
    reg = open_registry(registry_path)
    try:
        reg.open_run(RUN, dead_identity(), label="crashed")
        backend = twilio_number(twilio)
        rid = reg.plan(RUN, "f", backend.kind, name(1), backend.plan(name(1)))
        _phone, record = backend.acquire(name(1))
        reg.mark_acquired(rid, record)
        echo = {"code": 20500, "message": f"Internal error for token {token}", "status": 500}
        twilio.fail_next(1000, 500, body=echo)
        with pytest.raises(ReleaseError) as caught:
            TwilioNumber.release(record)
        text = str(caught.value)
        assert "HTTP 500 (provider code 20500)" in text
        assert record["number"] in text, "the message names the number"
        assert token not in text
        assert sweep(reg, grace=0, policy=FAST).failed == 1
        kept = reg.get_resource(rid)
        assert kept is not None
        assert kept.state == ResourceState.FAILED
        assert kept.last_error is not None
        assert "token ***" in kept.last_error
        status = reclaim_cli("status", "--json").stdout
        assert '"condition": "failed"' in status
        assert token not in status
        assert token not in reclaim_cli("status").stdout
        twilio.clear_failures()
        assert sweep(reg, grace=0, policy=FAST).released == 1
        assert twilio.owned() == {}
    finally:
        reg.close()


def test_twilio_credentials_from_the_environment(
    twilio: TwilioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", twilio.account_sid)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", twilio.auth_token)
    monkeypatch.setenv("RECLAIM_TWILIO_URL", twilio.url)
    _phone, record = TwilioNumber().acquire(name(1))
    assert record["auth_token"] == twilio.auth_token, "release needs it: a secret field (I7)"
    assert "auth_token" in TwilioNumber.secret_fields
    TwilioNumber.release(record)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    with pytest.raises(ValueError, match="TWILIO_AUTH_TOKEN"):
        TwilioNumber()


# --- sms-activate -----------------------------------------------------------------------------


def test_smsactivate_code_then_finish(sms: SmsActivateServer, registry_path: str) -> None:
    with reclaim.Fixture("verify") as persona:
        activation = persona.acquire(sms_number(sms, service="tg", country=6))
        assert activation.number.startswith("+7999")
        assert activation.status() == "STATUS_WAIT_CODE"
        with pytest.raises(TimeoutError, match="no code"):
            activation.wait_for_code(timeout=0.2, interval=0.05)
        sms.deliver_sms(activation.activation_id, "Telegram code 73519")
        assert activation.wait_for_code(timeout=10, interval=0.05) == "73519"
    # A used activation cannot be cancelled: release finished it.
    assert sms.state(activation.activation_id) == "finish"
    assert sms.active() == {}


def test_smsactivate_async_flavour(sms: SmsActivateServer) -> None:
    async def main() -> str:
        activation, record = await sms_number(sms).aacquire(name(1))
        sms.deliver_sms(activation.activation_id, "code 8080")
        try:
            return await activation.await_for_code(timeout=10, interval=0.05)
        finally:
            await SmsActivateNumber.arelease(record)

    assert asyncio.run(main()) == "8080"
    assert sms.active() == {}


@pytest.mark.parametrize("http_errors", [False, True], ids=["original-200", "clone-400"])
@pytest.mark.parametrize("answer", ["ACCESS_CANCEL_ALREADY", "BAD_STATUS", "NO_ACTIVATION"])
def test_every_already_over_answer_is_released(answer: str, http_errors: bool) -> None:
    with SmsActivateServer(second_cancel=answer, http_errors=http_errors) as server:
        activation, record = sms_number(server).acquire(name(1))
        SmsActivateNumber.release(record)
        assert server.state(activation.activation_id) == "cancel"
        SmsActivateNumber.release(record)  # answered `answer`: over already (I3)
        assert not SmsActivateNumber.exists(record)
        assert server.seen.count(("GET", "/stubs/handler_api.php")) >= 3


def test_early_cancel_stays_failed_until_a_later_sweep(registry_path: str) -> None:
    with SmsActivateServer(min_cancel_age=3600) as server:
        reg = open_registry(registry_path)
        try:
            reg.open_run(RUN, dead_identity(), label="crashed")
            backend = sms_number(server, min_cancel_age=3600)
            rid = reg.plan(RUN, "f", backend.kind, name(1), backend.plan(name(1)))
            activation, record = backend.acquire(name(1))
            reg.mark_acquired(rid, record)
            first = sweep(reg, grace=0, policy=FAST)
            assert (first.released, first.failed) == (0, 1), "refused: never counted as done"
            kept = reg.get_resource(rid)
            assert kept is not None
            assert kept.state == ResourceState.FAILED
            assert kept.last_error is not None
            assert "EARLY_CANCEL_DENIED" in kept.last_error
            assert "3600 s after purchase" in kept.last_error
            assert server.state(activation.activation_id) == "wait"
            server.age(3600)
            second = sweep(reg, grace=0, policy=FAST)
            assert (second.released, second.failed) == (1, 0)
            assert server.state(activation.activation_id) == "cancel"
        finally:
            reg.close()


def test_early_cancel_in_a_fixture_is_reported(registry_path: str) -> None:
    with SmsActivateServer(min_cancel_age=3600) as server:
        with pytest.raises(BaseExceptionGroup) as caught, reclaim.Fixture("short") as persona:
            persona.acquire(sms_number(server, min_cancel_age=3600))
        (error,) = caught.value.exceptions
        assert isinstance(error, ReleaseError)
        assert "EARLY_CANCEL_DENIED" in str(error)
        assert "next `reclaim sweep` retries it" in str(error)
        reg = open_registry(registry_path)
        try:
            (entry,) = reg.resources()
            assert entry.state == ResourceState.FAILED
            server.age(3600)
            end_run(registry_path)  # the run's end retries what it still holds
            assert reg.resources() == []
        finally:
            reg.close()
        assert server.active() == {}


def test_planned_record_never_cancels_a_strangers_activation(sms: SmsActivateServer) -> None:
    """By default the gap is honest: a planned record without an activation id cancels
    nothing (an activation carries no name of ours), so a stranger's is never touched."""
    stranger = sms.rent("ot", 0)
    backend = sms_number(sms)
    planned = backend.plan(name(1))
    activation, record = backend.acquire(name(1))
    assert not SmsActivateNumber.exists(planned)
    SmsActivateNumber.release(planned)
    assert set(sms.active()) == {stranger, int(activation.activation_id)}
    SmsActivateNumber.release(record)
    assert set(sms.active()) == {stranger}


def test_find_unrecorded_cancels_only_what_started_after_the_plan(
    sms: SmsActivateServer,
) -> None:
    before = sms.rent("ot", 0)
    other_service = sms.rent("wa", 0)
    backend = sms_number(sms, find_unrecorded=True)
    planned = backend.plan(name(1))
    assert planned["known_before"] == [str(before)]
    activation, _record = backend.acquire(name(1))
    assert SmsActivateNumber.exists(planned)
    SmsActivateNumber.release(planned)
    assert sms.state(activation.activation_id) == "cancel"
    assert set(sms.active()) == {before, other_service}


def test_smsactivate_errors_are_clear_and_keyless(sms: SmsActivateServer) -> None:
    wrong = "wrong-key-0123456789"
    with pytest.raises(AcquireError) as caught:
        SmsActivateNumber(wrong, base_url=sms.api_url).acquire(name(1))
    assert "BAD_KEY (the API key was refused)" in str(caught.value)
    assert wrong not in str(caught.value)
    sms.refuse_numbers = "NO_NUMBERS"
    with pytest.raises(AcquireError, match=r"NO_NUMBERS \(no number is available"):
        sms_number(sms).acquire(name(1))
    with pytest.raises(AcquireError, match="BAD_SERVICE"):
        sms.refuse_numbers = None
        sms_number(sms, service="zz").acquire(name(1))


def test_api_key_never_reaches_httpx_log(
    sms: SmsActivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="httpx"):
        _activation, record = sms_number(sms).acquire(name(1))
        SmsActivateNumber.release(record)
    assert "action=getNumber" in caplog.text, "httpx logged the requests"
    assert "api_key=***" in caplog.text
    assert sms.api_key not in caplog.text


def test_smsactivate_hostile_values_never_reach_a_url(sms: SmsActivateServer) -> None:
    record = sms_number(sms).plan(name(1))
    with pytest.raises(ValueError, match="activation id"):
        SmsActivateNumber.release({**record, "activation_id": "1&status=6"})
    with pytest.raises(ValueError, match="service"):
        SmsActivateNumber.release({**record, "service": "ot&action=getBalance"})
    with pytest.raises(ValueError, match="service"):
        sms_number(sms, service="../x")
    assert sms.seen == []


def test_smsactivate_key_from_the_environment(
    sms: SmsActivateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMS_ACTIVATE_API_KEY", sms.api_key)
    monkeypatch.setenv("RECLAIM_SMS_ACTIVATE_URL", sms.api_url)
    monkeypatch.setenv("SMS_ACTIVATE_SERVICE", "wa")
    monkeypatch.setenv("SMS_ACTIVATE_COUNTRY", "12")
    _activation, record = SmsActivateNumber().acquire(name(1))
    assert (record["service"], record["country"]) == ("wa", 12)
    SmsActivateNumber.release(record)
    monkeypatch.delenv("SMS_ACTIVATE_API_KEY")
    with pytest.raises(ValueError, match="SMS_ACTIVATE_API_KEY"):
        SmsActivateNumber()


# --- an acquire that bought nothing (issue 11) -------------------------------------------------


def test_an_unreachable_provider_leaves_no_entry(registry_path: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    token, key = "f" * 32, "e" * 32
    sid = "AC" + "0" * 32
    backends: list[Backend[Any]] = [
        TwilioNumber(sid, token, base_url=url),
        TwilioNumber(sid, token, base_url=url, phone_number="+15005550006"),
        SmsActivateNumber(key, base_url=f"{url}/stubs/handler_api.php"),
        SmsActivateNumber(key, base_url=f"{url}/stubs/handler_api.php", find_unrecorded=True),
    ]
    for backend in backends:
        with pytest.raises(NotCreatedError, match=r"cannot be reached.*ConnectError"):
            backend.acquire(name(40))
        with reclaim.Fixture("down") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert not isinstance(caught.value, ReleaseError)
        assert "ConnectError" in str(caught.value), "the cause is named"
        assert token not in str(caught.value)
        assert key not in str(caught.value)

    async def main() -> None:
        with pytest.raises(NotCreatedError, match="ConnectError"):
            await backends[1].aacquire(name(41))
        with pytest.raises(NotCreatedError, match="ConnectError"):
            await backends[2].aacquire(name(41))

    asyncio.run(main())
    assert registry_is_empty(registry_path)


def test_refused_credentials_leave_no_entry(
    twilio: TwilioServer, sms: SmsActivateServer, registry_path: str
) -> None:
    wrong = "0123456789abcdef" * 2
    backends: list[Backend[Any]] = [
        TwilioNumber(twilio.account_sid, wrong, base_url=twilio.url),
        TwilioNumber(twilio.account_sid, wrong, base_url=twilio.url, phone_number="+15005550006"),
        SmsActivateNumber(wrong, base_url=sms.api_url),
    ]
    for backend in backends:
        with reclaim.Fixture("wrong") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert not isinstance(caught.value, ReleaseError)
        assert "401" in str(caught.value) or "BAD_KEY" in str(caught.value)
        assert "nothing was created" in str(caught.value)
        assert wrong not in str(caught.value)
        assert wrong not in "".join(getattr(caught.value, "__notes__", []))
    assert registry_is_empty(registry_path)
    assert twilio.owned() == {}
    assert sms.activations == {}


def test_no_number_to_buy_or_rent_leaves_no_entry(
    sms: SmsActivateServer, registry_path: str
) -> None:
    with (
        TwilioServer() as server,  # it offers numbers in the US only
        reclaim.Fixture("none") as fixture,
        pytest.raises(AcquireError, match="offers no"),
    ):
        fixture.acquire(twilio_number(server, country="GB"))
    # Every number it tries is taken: Twilio's 400 21422 bought nothing.
    with (
        TwilioServer(available=["+15005550007"]) as server,
        pytest.raises(NotCreatedError, match="21422"),
    ):
        twilio_number(server, phone_number="+15005550006").acquire(name(42))
    for word in ("NO_NUMBERS", "NO_BALANCE", "WRONG_MAX_PRICE:12.5"):
        sms.refuse_numbers = word
        with pytest.raises(NotCreatedError, match=word.partition(":")[0]):
            sms_number(sms).acquire(name(43))
    with reclaim.Fixture("none") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(sms_number(sms))
    assert "nothing was created" in str(caught.value)
    assert registry_is_empty(registry_path)


def test_clones_sending_error_words_with_400(registry_path: str) -> None:
    with SmsActivateServer(http_errors=True) as clone:
        clone.refuse_numbers = "NO_NUMBERS"
        with pytest.raises(NotCreatedError, match="NO_NUMBERS"):
            sms_number(clone).acquire(name(44))


def test_an_unclear_answer_is_not_proof(twilio: TwilioServer, sms: SmsActivateServer) -> None:
    """A 5xx to the purchase, or an answer sms-activate's list does not know: it may have been
    bought, so AcquireError (the Fixture then releases what the planned record finds)."""
    twilio.fail_next(1, 500, only="POST ")
    with pytest.raises(AcquireError, match="HTTP 500") as caught:
        twilio_number(twilio).acquire(name(45))
    assert not isinstance(caught.value, NotCreatedError)
    for word in ("ERROR_SQL", "SOMETHING_NEW"):
        sms.refuse_numbers = word
        with pytest.raises(AcquireError, match=word) as caught:
            sms_number(sms).acquire(name(46))
        assert not isinstance(caught.value, NotCreatedError)
    sms.refuse_numbers = None
    sms.fail_next(1, 500)
    with pytest.raises(AcquireError, match="HTTP 500") as caught:
        sms_number(sms).acquire(name(47))
    assert not isinstance(caught.value, NotCreatedError)

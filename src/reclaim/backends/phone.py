"""Phone numbers that receive SMS: ``TwilioNumber()`` and ``SmsActivateNumber()``.

The value a test gets carries the ``number`` (E.164, ``+15005550006``) to type into a form, and
a way to wait for the SMS that arrives and read its one-time code::

    with reclaim.Fixture("novice_sarah") as persona:
        phone = persona.acquire(TwilioNumber())
        start_phone_verification(phone.number)
        code = phone.wait_for_code(length=6, timeout=60)

**Twilio** (kind ``phone.twilio``, https://api.twilio.com) buys a number for the account
(``POST .../IncomingPhoneNumbers.json``) and releases it (``DELETE
.../IncomingPhoneNumbers/{sid}.json``; a 404 with Twilio's code 20404 means it was released
already, I3). The number's ``FriendlyName`` is the reclaim name, journaled before the purchase: a
crash between buying and recording the number's sid leaves a planned record whose release finds
the number by that name (``GET .../IncomingPhoneNumbers.json?FriendlyName=``), so nothing leaks
(I1). The same name lets ``reclaim sweep --leftovers twilio://SID:TOKEN@api.twilio.com`` find
numbers whose registry was lost. Only our own (I8): before a number is released by the sid in
its record, ``GET .../IncomingPhoneNumbers/{sid}.json`` must show that very name as its
FriendlyName; a record whose sid is a number of somebody else's is refused (``ForeignNameError``)
and nothing is released. Received SMS are read with ``GET .../Messages.json?To=``.
Twilio's test credentials can buy the magic number ``+15005550006`` but cannot delete numbers
(403), so release needs live credentials.

**sms-activate** and its clones (kind ``phone.smsactivate``, one endpoint ``handler_api.php``
with plain-text answers) rent a number for one activation (``action=getNumber`` ->
``ACCESS_NUMBER:id:phone``), read the code with ``action=getStatus`` and release by cancelling
(``action=setStatus&status=8``), or by finishing (``status=6``) once a code has arrived, since a
used activation cannot be cancelled. ``ACCESS_CANCEL_ALREADY``, ``NO_ACTIVATION`` and
``BAD_STATUS`` for an activation that is over all mean released (I3). The provider refuses to
cancel during the first minutes (``EARLY_CANCEL_DENIED``): release then fails on purpose, the
entry stays ``failed`` and a later ``reclaim sweep`` cancels it; it is never counted as done.

The activation id is known only once ``getNumber`` answers, and an activation carries no name
of ours, so a crash in that window cannot be repaired by name. What reclaim does about it:

- by default, nothing: the activation is not cancelled by reclaim. The provider ends an
  activation that received no SMS by itself (about 20 minutes) and refunds it; the window is
  one HTTP answer long. This gap is documented, not hidden: ``exists`` of such a planned record
  is false;
- with ``find_unrecorded=True`` (only for an API key that one run uses at a time), ``plan``
  journals the ids of the activations active before the purchase, and the release of a planned
  record cancels the activations of the same service and country that were not among them.

The same lack of a name limits what reclaim can check before it cancels (I8): a record's
``name`` must be a whole reclaim name, but whether the activation id in it is one reclaim rented
cannot be asked of the provider. A record with a reclaim name and somebody else's activation id
would be cancelled: registry rows are never to be written by hand.

Credentials come from arguments or the environment (``TWILIO_ACCOUNT_SID``,
``TWILIO_AUTH_TOKEN``; ``SMS_ACTIVATE_API_KEY``) and are kept in the record as secret fields,
because the watchdog and the sweeper release from the record alone (I2, I7). sms-activate takes
its key in the query string, so reclaim masks ``api_key=`` in httpx's request log. Base URLs
default to the real services (``RECLAIM_TWILIO_URL``, ``RECLAIM_SMS_ACTIVATE_URL``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    Record,
    refuse,
    split_url,
)

# The HTTP plumbing (one protocol generator for sync and async, rate limits asked again, error
# messages with secrets redacted) lives in _http, shared with every HTTP backend.
from reclaim.backends._http import (
    NOT_MADE,
    PAGES,
    TIMEOUT,
    Context,
    Flow,
    FlowBackend,
    FlowValue,
    HttpError,
    NothingMade,
    ProtocolError,
    Request,
    check_base_url,
    checked,
    expect,
    need_httpx,
    parse_json,
    poll,
    provider_error,
    request,
    send_json,
)
from reclaim.backends.email import find_code

if TYPE_CHECKING:
    import httpx

__all__ = ["Sms", "SmsActivateNumber", "SmsActivation", "TwilioNumber", "TwilioPhone"]

TWILIO_URL: Final = "https://api.twilio.com"
SMS_ACTIVATE_URL: Final = "https://api.sms-activate.org/stubs/handler_api.php"

_ACCOUNT_RE: Final = re.compile(r"AC[0-9a-fA-F]{32}")
_NUMBER_SID_RE: Final = re.compile(r"PN[0-9a-fA-F]{32}")
_MESSAGE_SID_RE: Final = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
_E164_RE: Final = re.compile(r"\+[1-9][0-9]{1,14}")
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
_AREA_RE: Final = re.compile(r"[0-9]{2,5}")
_NUMBER_TYPES: Final = ("Local", "Mobile", "TollFree")

NumberT = TypeVar("NumberT")


@dataclasses.dataclass(frozen=True)
class Sms:
    """One received SMS."""

    #: The provider's id of the message.
    id: str
    #: The sender's number (or name).
    sender: str
    body: str
    #: When it was received, as the provider writes it.
    received: str

    def code(self, length: int | None = None) -> str:
        """The one-time code in the message (see :func:`reclaim.backends.email.find_code`)."""
        return find_code(self.body, length)


# --- Twilio ----------------------------------------------------------------------------------


def _twilio_root(record: Mapping[str, Any]) -> str:
    account = checked(_ACCOUNT_RE, record["account_sid"], "Twilio account SID")
    return f"{record['base_url']}/2010-04-01/Accounts/{account}"


def _twilio_headers(record: Mapping[str, Any]) -> dict[str, str]:
    pair = f"{record['account_sid']}:{record['auth_token']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def _twilio_gone(response: httpx.Response) -> bool:
    """Twilio's "already gone": 404 with its own code 20404 (a bare 404 from a wrong URL is
    not proof that the number is released)."""
    return response.status_code == 404 and provider_error(response)[0] == "20404"


def _twilio_numbers(record: Mapping[str, Any], friendly_name: str | None) -> Flow[list[Any]]:
    """Every incoming number of the account (with this FriendlyName), across pages."""
    root = _twilio_root(record)
    prefix = urlsplit(root).path + "/IncomingPhoneNumbers.json"
    url = f"{root}/IncomingPhoneNumbers.json"
    first = {"PageSize": "1000"}
    if friendly_name is not None:
        first["FriendlyName"] = friendly_name
    params: dict[str, str] | None = first
    out: list[Any] = []
    what = "GET .../IncomingPhoneNumbers.json"
    for _ in range(PAGES):
        body = yield from send_json(
            Request("GET", url, what, params=params, headers=_twilio_headers(record), creates=False)
        )
        numbers = body.get("incoming_phone_numbers") if isinstance(body, dict) else None
        if not isinstance(numbers, list):
            raise ProtocolError(f"{what} answered no incoming_phone_numbers list")
        out.extend(numbers)
        following = body.get("next_page_uri")
        if not following:
            return out
        # Follow only the same listing on the same server: credentials go with the request.
        if not isinstance(following, str) or not following.startswith(prefix):
            raise ProtocolError(f"{what} answered an unexpected next_page_uri {following!r}")
        url, params = f"{record['base_url']}{following}", None
    raise ProtocolError(f"{what}: more than {PAGES} pages")


def _twilio_owned(record: Mapping[str, Any]) -> Flow[bool]:
    """Is the number with the record's sid there (False: released), and reclaim's? Refused
    (``ForeignNameError``) when Twilio says its FriendlyName is not the record's name (I8)."""
    sid = checked(_NUMBER_SID_RE, record["sid"], "Twilio number SID")
    what = "GET .../IncomingPhoneNumbers/{sid}.json"
    response = yield from request(
        Request(
            "GET",
            f"{_twilio_root(record)}/IncomingPhoneNumbers/{sid}.json",
            what,
            headers=_twilio_headers(record),
        )
    )
    if _twilio_gone(response):
        return False
    found = parse_json(expect(response, what), what)
    friendly = found.get("friendly_name") if isinstance(found, dict) else None
    if friendly != record["name"]:
        shown = repr(friendly)[:80] if friendly is not None else "none"
        raise refuse(
            TwilioNumber.kind,
            "sid",
            sid,
            f"the sid of the number named {record['name']!r} (Twilio's number {sid} has the"
            f" FriendlyName {shown})",
            name=TwilioNumber.name_style.parse(record["name"]),
        )
    return True


def _twilio_sids(record: Mapping[str, Any]) -> Flow[list[str]]:
    """The sids of the numbers the record names."""
    if record.get("sid"):
        # A sid is Twilio's: release it only once Twilio says it carries this name (I8).
        owned = yield from _twilio_owned(record)
        return [checked(_NUMBER_SID_RE, record["sid"], "Twilio number SID")] if owned else []
    # A planned record: the purchase may have happened before the sid was journaled. The
    # FriendlyName (the reclaim name) finds it (I1).
    listed = yield from _twilio_numbers(record, record["name"])
    return [
        checked(_NUMBER_SID_RE, item.get("sid"), "Twilio number SID")
        for item in listed
        if isinstance(item, dict) and item.get("friendly_name") == record["name"]
    ]


class _NumberKind(FlowBackend[NumberT]):
    """What both kinds share: the name rules and the description of a record."""

    def adapt_name(self, proposed: str) -> str:
        return self.name_style.spell(proposed)

    @classmethod
    def describe(cls, record: Record) -> str:
        number = record.get("number")
        return f"{number} ({record.get('name')})" if number else str(record.get("name", "?"))


def _whole_name(backend: Backend[Any], name: str) -> str:
    """``name`` when it is a whole reclaim name in the backend's style; ValueError otherwise."""
    if backend.name_style.parse(name) is None:
        raise ValueError(f"{name!r} is not a whole reclaim name (rc_<run>_<time>_<seq>)")
    return name


class _WantedSms:
    def __init__(self, contains: str | None, sender: str | None) -> None:
        self.contains, self.sender = contains, sender

    def __call__(self, sms: Sms) -> bool:
        if self.contains is not None and self.contains not in sms.body:
            return False
        return self.sender is None or self.sender in sms.sender

    def __str__(self) -> str:
        parts = [f"containing {self.contains!r}"] if self.contains is not None else []
        parts += [f"from {self.sender!r}"] if self.sender is not None else []
        return "an SMS " + (" ".join(parts) if parts else "of any kind")


class TwilioPhone(FlowValue):
    """A Twilio number of the account (the value of :class:`TwilioNumber`).

    Successive :meth:`wait_for_sms` calls return successive messages. Every method has an async
    twin (``amessages``, ``await_for_sms``, ``await_for_code``).
    """

    def __init__(self, number: str, sid: str, context: Context) -> None:
        super().__init__(context)
        #: The number, E.164.
        self.number = number
        #: Twilio's id of the number (``PN...``).
        self.sid = sid
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        return f"<TwilioPhone {self.number}>"

    def __str__(self) -> str:
        return self.number

    def _messages_flow(self) -> Flow[list[Sms]]:
        record = self._context.record
        body = yield from send_json(
            Request(
                "GET",
                f"{_twilio_root(record)}/Messages.json",
                "GET .../Messages.json",
                params={"To": self.number, "PageSize": "100"},
                headers=_twilio_headers(record),
            )
        )
        items = body.get("messages") if isinstance(body, dict) else None
        out = []
        for item in reversed(items if isinstance(items, list) else []):  # oldest first
            if not isinstance(item, dict) or not str(item.get("direction", "")).startswith(
                "inbound"
            ):
                continue
            out.append(
                Sms(
                    id=checked(_MESSAGE_SID_RE, item.get("sid"), "Twilio message SID"),
                    sender=str(item.get("from", "")),
                    body=str(item.get("body", "")),
                    received=str(item.get("date_created", "")),
                )
            )
        return out

    def _look_flow(self, wanted: _WantedSms) -> Flow[Sms | None]:
        for sms in (yield from self._messages_flow()):
            if sms.id not in self._seen and wanted(sms):
                self._seen.add(sms.id)
                return sms
        return None

    def _wait_flow(self, wanted: _WantedSms, timeout: float, interval: float) -> Flow[Sms]:
        def missed() -> str:
            return f"{wanted} did not reach {self.number} within {timeout:g} s"

        return poll(lambda: self._look_flow(wanted), timeout, interval, missed)

    def messages(self) -> list[Sms]:
        """Every SMS received by the number, oldest first."""
        return self._run(self._messages_flow(), "could not list its SMS")

    async def amessages(self) -> list[Sms]:
        """Async twin of :meth:`messages`."""
        return await self._arun(self._messages_flow(), "could not list its SMS")

    def wait_for_sms(
        self,
        *,
        contains: str | None = None,
        sender: str | None = None,
        timeout: float = 60.0,
        interval: float = 1.0,
    ) -> Sms:
        """Wait for an SMS not returned before.

        Raises:
            TimeoutError: none arrived in time.
        """
        flow = self._wait_flow(_WantedSms(contains, sender), timeout, interval)
        return self._run(flow, "could not read its SMS")

    async def await_for_sms(
        self,
        *,
        contains: str | None = None,
        sender: str | None = None,
        timeout: float = 60.0,
        interval: float = 1.0,
    ) -> Sms:
        """Async twin of :meth:`wait_for_sms`."""
        flow = self._wait_flow(_WantedSms(contains, sender), timeout, interval)
        return await self._arun(flow, "could not read its SMS")

    def wait_for_code(
        self, *, length: int | None = None, timeout: float = 60.0, interval: float = 1.0
    ) -> str:
        """Wait for the next SMS and return the code in it (see :meth:`Sms.code`)."""
        return self.wait_for_sms(timeout=timeout, interval=interval).code(length)

    async def await_for_code(
        self, *, length: int | None = None, timeout: float = 60.0, interval: float = 1.0
    ) -> str:
        """Async twin of :meth:`wait_for_code`."""
        return (await self.await_for_sms(timeout=timeout, interval=interval)).code(length)


class TwilioNumber(_NumberKind[TwilioPhone]):
    """A phone number bought for the Twilio account, named after the resource, released at the
    end.

    Args:
        account_sid: ``AC...``; ``TWILIO_ACCOUNT_SID`` by default.
        auth_token: the account's auth token; ``TWILIO_AUTH_TOKEN`` by default.
        base_url: ``RECLAIM_TWILIO_URL`` or https://api.twilio.com by default.
        phone_number: buy this number (E.164) instead of searching; e.g. Twilio's magic test
            number ``+15005550006``.
        area_code: search numbers with this area code (US, CA).
        country: ISO country code of the search.
        number_type: ``Local``, ``Mobile`` or ``TollFree``.
        timeout: seconds per HTTP request.
    """

    kind = "phone.twilio"
    secret_fields = frozenset({"auth_token"})
    url_schemes = ("twilio", "twilio+http")
    _creating = "be bought"
    _releasing = "be released"

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        base_url: str | None = None,
        phone_number: str | None = None,
        area_code: str | None = None,
        country: str = "US",
        number_type: str = "Local",
        timeout: float = TIMEOUT,
    ) -> None:
        need_httpx(self.kind)
        account_sid = account_sid or os.environ.get("TWILIO_ACCOUNT_SID")
        auth_token = auth_token or os.environ.get("TWILIO_AUTH_TOKEN")
        if not account_sid or not auth_token:
            raise ValueError(
                "TwilioNumber needs an account SID and auth token: pass account_sid= and"
                " auth_token=, or set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
            )
        self.account_sid = checked(_ACCOUNT_RE, account_sid, "Twilio account SID")
        self.auth_token = auth_token
        self.base_url = check_base_url(
            base_url or os.environ.get("RECLAIM_TWILIO_URL") or TWILIO_URL, "Twilio base_url"
        )
        self.phone_number = (
            None if phone_number is None else checked(_E164_RE, phone_number, "phone number")
        )
        self.area_code = None if area_code is None else checked(_AREA_RE, area_code, "area code")
        self.country = checked(_COUNTRY_RE, country, "country code")
        if number_type not in _NUMBER_TYPES:
            raise ValueError(f"number_type must be one of {_NUMBER_TYPES}, not {number_type!r}")
        self.number_type = number_type
        self.timeout = float(timeout)

    def plan(self, name: str) -> Record:
        # I1: the FriendlyName the number will carry is the name journaled here.
        return {
            "name": _whole_name(self, name),
            "base_url": self.base_url,
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "timeout": self.timeout,
        }

    def _acquired(self, record: Record, bought: Mapping[str, Any]) -> tuple[TwilioPhone, Record]:
        record = dict(record)
        record["sid"] = checked(_NUMBER_SID_RE, bought.get("sid"), "Twilio number SID")
        record["number"] = checked(_E164_RE, bought.get("phone_number"), "Twilio phone number")
        phone = TwilioPhone(record["number"], record["sid"], Context(type(self), record))
        return phone, record

    def _create_flow(self, record: Record) -> Flow[Any]:
        root, headers = _twilio_root(record), _twilio_headers(record)
        if self.phone_number is not None:
            candidates = [self.phone_number]
        else:
            what = "GET .../AvailablePhoneNumbers/{country}/{type}.json"
            params = {"SmsEnabled": "true", "PageSize": "5"}
            if self.area_code is not None:
                params["AreaCode"] = self.area_code
            body = yield from send_json(
                Request(
                    "GET",
                    f"{root}/AvailablePhoneNumbers/{self.country}/{self.number_type}.json",
                    what,
                    params=params,
                    headers=headers,
                    creates=False,
                )
            )
            offered = body.get("available_phone_numbers") if isinstance(body, dict) else None
            candidates = [
                checked(_E164_RE, item.get("phone_number"), "Twilio phone number")
                for item in (offered if isinstance(offered, list) else [])
            ]
            if not candidates:
                raise ProtocolError(
                    f"Twilio offers no SMS-capable {self.number_type} number in {self.country}"
                    + (f" with area code {self.area_code}" if self.area_code else "")
                )
        last: HttpError | None = None
        definite = True  # every purchase so far was refused with a status that makes nothing
        what = "POST .../IncomingPhoneNumbers.json"
        for number in candidates:
            response = yield from request(
                Request(
                    "POST",
                    f"{root}/IncomingPhoneNumbers.json",
                    what,
                    data={"PhoneNumber": number, "FriendlyName": record["name"]},
                    headers=headers,
                )
            )
            if response.status_code in (200, 201):
                bought = parse_json(response, what)
                if not isinstance(bought, dict):
                    raise ProtocolError(f"{what} answered no phone number object")
                return bought
            last = HttpError(what, response)
            definite = definite and response.status_code in NOT_MADE
            if last.code != "21422":  # 21422: that number is no longer available; try the next
                break
        assert last is not None
        # A 400, 401, 403, 404 (Twilio's test credentials, a wrong account, a number taken) bought
        # nothing; after a 5xx nobody knows.
        raise NothingMade(last) if definite else last

    @classmethod
    def _context(cls, record: Record) -> Context:
        # Checked before anything is sent: a hostile record never reaches a URL (I7).
        check_base_url(str(record["base_url"]), "Twilio base_url")
        checked(_ACCOUNT_RE, record["account_sid"], "Twilio account SID")
        if record.get("sid"):
            checked(_NUMBER_SID_RE, record["sid"], "Twilio number SID")
        return Context(cls, record)

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        root, headers = _twilio_root(record), _twilio_headers(record)
        what = "DELETE .../IncomingPhoneNumbers/{sid}.json"
        for sid in (yield from _twilio_sids(record)):
            response = yield from request(
                Request("DELETE", f"{root}/IncomingPhoneNumbers/{sid}.json", what, headers=headers)
            )
            if response.status_code not in (200, 204) and not _twilio_gone(response):
                raise HttpError(what, response)

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        return bool((yield from _twilio_sids(record)))

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Numbers of the account whose FriendlyName is a reclaim name.

        ``target`` is ``twilio://[SID:TOKEN@]HOST[:PORT]`` (https; ``twilio+http://`` for a
        local stand-in); the credentials default to ``TWILIO_ACCOUNT_SID`` and
        ``TWILIO_AUTH_TOKEN``, the host to api.twilio.com.
        """
        url = split_url(target, kind=cls.kind, schemes=cls.url_schemes, need_host=False)
        scheme = {"twilio": "https", "twilio+http": "http"}[url.scheme]
        host = url.host or "api.twilio.com"
        netloc = host if url.port is None else f"{host}:{url.port}"
        account_sid = url.username or os.environ.get("TWILIO_ACCOUNT_SID") or ""
        auth_token = url.password or os.environ.get("TWILIO_AUTH_TOKEN") or ""
        probe: Record = {
            "name": "leftovers",
            "base_url": check_base_url(urlunsplit((scheme, netloc, "", "", "")), "Twilio URL"),
            "account_sid": checked(_ACCOUNT_RE, account_sid, "Twilio account SID"),
            "auth_token": auth_token,
            "timeout": TIMEOUT,
        }
        listed = Context(cls, probe).run(
            _twilio_numbers(probe, None), BackendError, "could not list the account's numbers"
        )
        for item in listed:
            name = str(item.get("friendly_name", "")) if isinstance(item, dict) else ""
            parsed = cls.name_style.parse(name)
            if parsed is None:
                continue  # never anything without reclaim's whole name
            record = {
                **probe,
                "name": name,
                "sid": checked(_NUMBER_SID_RE, item.get("sid"), "Twilio number SID"),
                "number": checked(_E164_RE, item.get("phone_number"), "Twilio phone number"),
            }
            yield Leftover.of(record, parsed)


# --- sms-activate ----------------------------------------------------------------------------

#: Answers to a cancel that mean "this activation is over already" (I3).
_OVER: Final = frozenset(
    {"ACCESS_CANCEL", "ACCESS_CANCEL_ALREADY", "NO_ACTIVATION", "WRONG_ACTIVATION_ID"}
)
#: Actions of ``handler_api.php`` that change nothing.
_READS: Final = frozenset({"getActiveActivations", "getStatus", "getBalance"})
#: ``getNumber``'s answers that rent nothing: no number, no money, a wrong key, service,
#: country, operator or price, a banned account (``BANNED:<until>``, ``WRONG_MAX_PRICE:<min>``).
#: ``ERROR_SQL`` and words this list does not know are not proof.
_NOT_RENTED: Final = frozenset(
    {
        "NO_NUMBERS",
        "NO_BALANCE",
        "NO_KEY",
        "BAD_KEY",
        "BAD_ACTION",
        "BAD_SERVICE",
        "BAD_COUNTRY",
        "WRONG_SERVICE",
        "WRONG_COUNTRY",
        "WRONG_OPERATOR",
        "WRONG_MAX_PRICE",
        "BANNED",
        "CHANNELS_LIMIT",
    }
)
_ANSWER_RE: Final = re.compile(r"[A-Z][A-Z0-9_]*(?::.*)?", re.DOTALL)
_ACTIVATION_RE: Final = re.compile(r"[0-9]{1,20}")
_SERVICE_RE: Final = re.compile(r"[a-z0-9_]{1,20}")

_HINTS: Final = {
    "BAD_KEY": "the API key was refused",
    "NO_BALANCE": "the account has no money left",
    "NO_NUMBERS": "no number is available for this service and country now",
    "BAD_SERVICE": "the service code is unknown",
    "BAD_ACTION": "the provider does not know this action",
    "ERROR_SQL": "the provider had an internal error",
    "BANNED": "the account is banned until the time given",
}


class _AnswerError(ProtocolError):
    """sms-activate answered with one of its error words."""

    def __init__(self, action: str, answer: str) -> None:
        hint = _HINTS.get(answer.partition(":")[0], "")
        super().__init__(f"action={action} answered {answer}" + (f" ({hint})" if hint else ""))
        self.answer = answer


class _KeyFilter(logging.Filter):
    """Masks ``api_key=...`` in httpx's request log: sms-activate wants the key in the URL."""

    _KEY = re.compile(r"(api_key=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any("api_key=" in str(a) for a in record.args):
            record.args = tuple(
                self._KEY.sub(r"\1***", str(a)) if "api_key=" in str(a) else a for a in record.args
            )
        return True


_key_filter = _KeyFilter()


def _hide_key_in_logs() -> None:
    logger = logging.getLogger("httpx")
    if _key_filter not in logger.filters:
        logger.addFilter(_key_filter)


def _handler(record: Mapping[str, Any], action: str, **params: str) -> Flow[str]:
    """One call of ``handler_api.php``: the provider's answer as text."""
    what = f"action={action}"
    response = yield from request(
        Request(
            "GET",
            record["base_url"],
            what,
            params={"api_key": record["api_key"], "action": action, **params},
            creates=action not in _READS,
        )
    )
    text = response.text.strip()
    # The original answers everything with 200; clones send their error words with 4xx.
    if response.status_code < 500 and (_ANSWER_RE.fullmatch(text) or text[:1] in "{["):
        if response.status_code >= 400 and text[:1] in "{[":
            raise HttpError(what, response)
        return text
    raise HttpError(what, response)


def _active(record: Mapping[str, Any]) -> Flow[list[dict[str, Any]]]:
    """Every active activation of the account, across pages."""
    out: list[dict[str, Any]] = []
    for page in range(PAGES):
        text = yield from _handler(
            record, "getActiveActivations", start=str(page * 100), limit="100"
        )
        if text == "NO_ACTIVATIONS":
            return out
        if text[:1] != "{":
            raise _AnswerError("getActiveActivations", text)
        body = json.loads(text)
        if body.get("status") != "success":
            if body.get("error") == "NO_ACTIVATIONS":
                return out
            raise _AnswerError("getActiveActivations", str(body.get("error") or body)[:200])
        items = body.get("activeActivations")
        if not isinstance(items, list):
            items = body.get("data")  # clones (hero-sms) put the list here
        items = [i for i in (items if isinstance(items, list) else []) if isinstance(i, dict)]
        out.extend(items)
        if len(items) < 100:
            return out
    raise ProtocolError(f"getActiveActivations: more than {PAGES * 100} activations")


def _strangers(record: Mapping[str, Any], active: list[dict[str, Any]]) -> list[str]:
    """Active activations of this record's service and country not known before its plan (at
    plan time, before ``known_before`` is set: all of them)."""
    known = set(record.get("known_before") or [])
    return [
        checked(_ACTIVATION_RE, str(item.get("activationId")), "activation id")
        for item in active
        if str(item.get("serviceCode")) == record["service"]
        and str(item.get("countryCode")) == str(record["country"])
        and str(item.get("activationId")) not in known
    ]


def _cancel(record: Mapping[str, Any], activation: str) -> Flow[None]:
    answer = yield from _handler(record, "setStatus", id=activation, status="8")
    if answer in _OVER:
        return
    if answer == "EARLY_CANCEL_DENIED":
        acquired = record.get("acquired_at")
        after = ""
        if isinstance(acquired, int | float):
            at = time.strftime(
                "%H:%M:%S", time.localtime(acquired + float(record.get("min_cancel_age", 120)))
            )
            after = f", from about {at}"
        raise _AnswerError(
            "setStatus",
            f"EARLY_CANCEL_DENIED: activation {activation} is too young to cancel"
            f" (the provider allows it about {record.get('min_cancel_age', 120):g} s after"
            f" purchase{after}); it is not released yet",
        )
    if answer != "BAD_STATUS":
        raise _AnswerError("setStatus", answer)
    # BAD_STATUS: the activation cannot be cancelled in its state. Over already, or a code
    # arrived (a used activation is finished, not cancelled).
    status = yield from _handler(record, "getStatus", id=activation)
    if status.startswith("STATUS_OK"):
        done = yield from _handler(record, "setStatus", id=activation, status="6")
        if done in ("ACCESS_ACTIVATION", "BAD_STATUS") or done in _OVER:
            return
        raise _AnswerError("setStatus(6)", done)
    if status == "STATUS_CANCEL" or status in _OVER:
        return
    raise _AnswerError("setStatus", f"BAD_STATUS while the activation is in {status}")


class SmsActivation(FlowValue):
    """A rented number for one activation (the value of :class:`SmsActivateNumber`)."""

    def __init__(self, number: str, activation_id: str, context: Context) -> None:
        super().__init__(context)
        #: The number, E.164.
        self.number = number
        #: The provider's activation id.
        self.activation_id = activation_id

    def __repr__(self) -> str:
        return f"<SmsActivation {self.number} #{self.activation_id}>"

    def __str__(self) -> str:
        return self.number

    def _status_flow(self) -> Flow[str]:
        return (yield from _handler(self._context.record, "getStatus", id=self.activation_id))

    def _look_flow(self) -> Flow[str | None]:
        status = yield from self._status_flow()
        if status.startswith("STATUS_OK:"):
            return status.partition(":")[2]
        if not status.startswith("STATUS_WAIT"):
            raise _AnswerError("getStatus", status)
        return None

    def _code_flow(self, timeout: float, interval: float) -> Flow[str]:
        def missed() -> str:
            return f"no code reached {self.number} within {timeout:g} s"

        return poll(self._look_flow, timeout, interval, missed)

    def status(self) -> str:
        """The provider's status word (``STATUS_WAIT_CODE``, ``STATUS_OK:<code>``, ...)."""
        return self._run(self._status_flow(), "could not be looked up")

    def wait_for_code(self, *, timeout: float = 60.0, interval: float = 2.0) -> str:
        """Wait until the provider reports the code an SMS brought, and return it.

        Raises:
            TimeoutError: no code arrived in time.
        """
        return self._run(self._code_flow(timeout, interval), "could not read its code")

    async def await_for_code(self, *, timeout: float = 60.0, interval: float = 2.0) -> str:
        """Async twin of :meth:`wait_for_code`."""
        return await self._arun(self._code_flow(timeout, interval), "could not read its code")


class SmsActivateNumber(_NumberKind[SmsActivation]):
    """A number rented from sms-activate (or a clone speaking its protocol) for one activation.

    Args:
        api_key: ``SMS_ACTIVATE_API_KEY`` by default.
        service: the provider's service code (``SMS_ACTIVATE_SERVICE``, else ``ot``: any
            other service).
        country: the provider's country number (``SMS_ACTIVATE_COUNTRY``, else 0).
        operator: restrict to these operators (comma-separated, as the provider takes them).
        max_price: do not pay more than this.
        base_url: the ``handler_api.php`` URL; ``RECLAIM_SMS_ACTIVATE_URL`` or sms-activate's.
        min_cancel_age: seconds after purchase from which the provider allows a cancel; only
            used to tell when a refused cancel can succeed.
        find_unrecorded: let the release of a planned record cancel activations of this service
            and country that started after the plan (see the module's docstring); only for an
            API key that one run uses at a time.
        timeout: seconds per HTTP request.
    """

    kind = "phone.smsactivate"
    secret_fields = frozenset({"api_key"})
    _creating = "rent a number"
    _releasing = "be cancelled"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        service: str | None = None,
        country: int | None = None,
        operator: str | None = None,
        max_price: float | None = None,
        base_url: str | None = None,
        min_cancel_age: float = 120.0,
        find_unrecorded: bool = False,
        timeout: float = TIMEOUT,
    ) -> None:
        need_httpx(self.kind)
        api_key = api_key or os.environ.get("SMS_ACTIVATE_API_KEY")
        if not api_key:
            raise ValueError(
                "SmsActivateNumber needs an API key: pass api_key= or set SMS_ACTIVATE_API_KEY"
            )
        self.api_key = api_key
        self.service = checked(
            _SERVICE_RE, service or os.environ.get("SMS_ACTIVATE_SERVICE") or "ot", "service"
        )
        self.country = int(
            country if country is not None else os.environ.get("SMS_ACTIVATE_COUNTRY") or 0
        )
        self.operator = operator
        self.max_price = max_price
        self.base_url = check_base_url(
            base_url or os.environ.get("RECLAIM_SMS_ACTIVATE_URL") or SMS_ACTIVATE_URL,
            "sms-activate base_url",
        )
        self.min_cancel_age = float(min_cancel_age)
        self.find_unrecorded = bool(find_unrecorded)
        self.timeout = float(timeout)
        self._planned: dict[str, Record] = {}
        _hide_key_in_logs()

    def plan(self, name: str) -> Record:
        record: Record = {
            "name": _whole_name(self, name),
            "base_url": self.base_url,
            "api_key": self.api_key,
            "service": self.service,
            "country": self.country,
            "min_cancel_age": self.min_cancel_age,
            "find_unrecorded": self.find_unrecorded,
            "timeout": self.timeout,
        }
        if self.find_unrecorded:
            # The activations that are not ours: whatever is active now (see I1 above).
            active = Context(type(self), record).run(
                _active(record), AcquireError, "could not list the active activations"
            )
            record["known_before"] = sorted(_strangers(record, active))
            self._planned[name] = record
        return dict(record)

    def _create_flow(self, record: Record) -> Flow[tuple[str, str]]:
        params = {"service": self.service, "country": str(self.country)}
        if self.operator:
            params["operator"] = self.operator
        if self.max_price is not None:
            params["maxPrice"] = f"{self.max_price:g}"
        try:
            answer = yield from _handler(record, "getNumber", **params)
        except HttpError as exc:
            # A clone's JSON error with a 4xx rented nothing; a 5xx or a strange 200 may have.
            if exc.status in NOT_MADE:
                raise NothingMade(exc) from exc
            raise
        match = re.fullmatch(r"ACCESS_NUMBER:([0-9]{1,20}):([0-9]{4,15})", answer)
        if match is None:
            error = _AnswerError("getNumber", answer)
            if answer.partition(":")[0] in _NOT_RENTED:
                raise NothingMade(error)
            raise error
        return match.group(1), match.group(2)

    def _acquired(self, record: Record, got: tuple[str, str]) -> tuple[SmsActivation, Record]:
        record = dict(record)
        record["activation_id"], number = got
        record["number"] = "+" + number
        record["acquired_at"] = time.time()
        value = SmsActivation(record["number"], got[0], Context(type(self), record))
        return value, record

    def _record_for(self, name: str) -> Record:
        # The record plan() journaled (its snapshot of active activations), not a fresh one.
        return self._planned.pop(name, None) or self.plan(name)

    @classmethod
    def _context(cls, record: Record) -> Context:
        # Checked before anything is sent: a hostile record never reaches a URL (I7).
        check_base_url(str(record["base_url"]), "sms-activate base_url")
        checked(_SERVICE_RE, record["service"], "service")
        if record.get("activation_id"):
            checked(_ACTIVATION_RE, str(record["activation_id"]), "activation id")
        _hide_key_in_logs()
        return Context(cls, record)

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        if record.get("activation_id"):
            activations = [checked(_ACTIVATION_RE, str(record["activation_id"]), "activation id")]
        elif record.get("find_unrecorded"):
            activations = _strangers(record, (yield from _active(record)))
        else:
            return  # the documented gap: see the module's docstring
        for activation in activations:
            yield from _cancel(record, activation)

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        if not record.get("activation_id") and not record.get("find_unrecorded"):
            return False
        active = yield from _active(record)
        if not record.get("activation_id"):
            return bool(_strangers(record, active))
        return str(record["activation_id"]) in {str(i.get("activationId")) for i in active}

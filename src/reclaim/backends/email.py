"""Disposable inboxes: ``MailTmInbox()`` and ``MailsacInbox()`` give a :class:`Mailbox`.

The value a test gets is a mailbox: its ``address`` to type into a sign-up form, and a way to
wait for the message that arrives there and read it (:meth:`Mailbox.wait_for_message`, with
:meth:`Message.link` and :meth:`Message.code` to pull out a verification link or code)::

    with reclaim.Fixture("novice_sarah") as persona:
        inbox = persona.acquire(MailTmInbox())
        sign_up(email=inbox.address)
        link = inbox.wait_for_message(subject="Confirm", timeout=60).link(contains="/verify")

**mail.tm** (kind ``email.mailtm``, https://api.mail.tm) creates a real account. reclaim picks the
address (the reclaim name at one of mail.tm's public domains) and a random password *before* the
account exists, and journals both (I1): release logs in with that password (``POST /token``; a
token from acquire may have expired by then) and deletes the account (``DELETE
/accounts/{id}``). A login refused with 401 means the account does not exist (never created, or
deleted already): release is then done (I3). mail.tm allows 8 requests per second per IP; every
request of this process goes through one limiter per server, and a 429 is retried after
``Retry-After``. mail.tm cannot list accounts, so this kind has no registry-less sweep.

**mailsac** (kind ``email.mailsac``, https://mailsac.com/api) accepts mail for any address
without an account: by default the inbox ``<name>@mailsac.com`` is public and nothing is
created; release deletes every message in it. With ``reserve=True`` the address is reserved as
a private address of the account (``POST /addresses/{email}``, a paid feature) and release
gives it back with its messages (``DELETE /addresses/{email}?deleteAddressMessages=true``; a
second release answers 400 "not owned or already deleted", which counts as done). Reserved
addresses can be listed, so ``reclaim sweep --leftovers mailsac://KEY@mailsac.com`` finds them.

Credentials: mail.tm needs none (the password is reclaim's own, a secret field). mailsac needs an
API key (``api_key=`` or ``MAILSAC_KEY``), kept in the record as a secret field because the
watchdog and the sweeper release from the record alone (I2, I7). Base URLs default to the real
services (``RECLAIM_MAILTM_URL`` and ``RECLAIM_MAILSAC_URL`` override them). httpx is the only
driver (``pip install 'reclaim[http]'``).
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import quote, urlunsplit

from reclaim.backends import (
    NAMES,
    AcquireError,
    BackendError,
    Leftover,
    ReclaimName,
    Record,
    split_url,
)
from reclaim.backends._http import (
    PAGES,
    TIMEOUT,
    Context,
    Flow,
    FlowBackend,
    FlowValue,
    HttpError,
    NothingMade,
    ProtocolError,
    RateLimiter,
    Request,
    check_base_url,
    checked,
    expect,
    limiter_for,
    need_httpx,
    parse_json,
    poll,
    refused,
    request,
    send,
    send_json,
)

__all__ = [
    "MailTmInbox",
    "MailTmMailbox",
    "Mailbox",
    "MailsacInbox",
    "MailsacMailbox",
    "Message",
    "find_code",
    "find_links",
]

MAILTM_URL: Final = "https://api.mail.tm"
MAILSAC_URL: Final = "https://mailsac.com/api"

#: mail.tm's documented limit: 8 requests per second per IP. A little slack on our side keeps
#: the server's window and ours from disagreeing by a few milliseconds.
MAILTM_RATE: Final = (8, 1.05)

_DOMAIN_TTL: Final = 600.0  # seconds a process trusts the mail.tm domain it was given

# What reaches a URL path is checked against these first (I7: never pasted unchecked).
_LOCAL_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.+-]{0,63}")
_DOMAIN_RE: Final = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


# --- messages ------------------------------------------------------------------------------

_URL_RE: Final = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
_TAG_RE: Final = re.compile(r"<[^>]*>")


def find_links(text: str) -> list[str]:
    """Every http(s) URL in ``text`` (plain or HTML), in order, without duplicates.

    HTML entities are decoded (``&amp;`` becomes ``&``) and trailing punctuation that ends a
    sentence is dropped.
    """
    out: list[str] = []
    for match in _URL_RE.finditer(html.unescape(text)):
        url = match.group(0).rstrip(".,;:!?)]}")
        if url not in out:
            out.append(url)
    return out


def find_code(text: str, length: int | None = None) -> str:
    """The first stand-alone run of digits in ``text``: a one-time code.

    Digits inside links and HTML tags are ignored. Without ``length`` a run of 4 to 8 digits is
    taken; give the exact length when the text holds other numbers (a year, an amount).

    Raises:
        LookupError: there is no such number.
    """
    plain = _URL_RE.sub(" ", _TAG_RE.sub(" ", html.unescape(text)))
    digits = "{4,8}" if length is None else f"{{{int(length)}}}"
    match = re.search(rf"(?<!\d)\d{digits}(?!\d)", plain)
    if match is None:
        wanted = "4 to 8" if length is None else str(length)
        raise LookupError(f"no code of {wanted} digits in the text: {plain.strip()[:200]!r}")
    return match.group(0)


@dataclasses.dataclass(frozen=True)
class Message:
    """One received message, read in full."""

    #: The provider's id of the message.
    id: str
    #: The sender's address.
    sender: str
    subject: str
    #: The plain-text body ("" when the message has none).
    text: str
    #: The HTML body ("" when the message has none).
    html: str
    #: When the provider received it (ISO 8601, as the provider gives it).
    received: str

    def links(self) -> list[str]:
        """Every link in the message, text body first, then HTML."""
        return find_links(f"{self.text}\n{self.html}")

    def link(self, contains: str | None = None) -> str:
        """The first link (containing ``contains``, when given): a verification link.

        Raises:
            LookupError: no such link.
        """
        for url in self.links():
            if contains is None or contains in url:
                return url
        wanted = f" containing {contains!r}" if contains else ""
        raise LookupError(f"no link{wanted} in the message {self.subject!r} from {self.sender}")

    def code(self, length: int | None = None) -> str:
        """The one-time code in the message (see :func:`find_code`)."""
        return find_code(self.text or self.html, length)


@dataclasses.dataclass(frozen=True)
class _Summary:
    id: str
    sender: str
    subject: str
    received: str


# --- checking what reaches a URL ------------------------------------------------------------


def _address(value: object) -> str:
    text = value if isinstance(value, str) else ""
    local, _, domain = text.partition("@")
    if not (_LOCAL_RE.fullmatch(local) and _DOMAIN_RE.fullmatch(domain)):
        raise ValueError(f"{value!r} is not an email address reclaim can use in a URL")
    return text


def _reclaim_name(name: str) -> str:
    """reclaim's names are the local part of the address: only a whole one is accepted."""
    if NAMES.parse(name) is None:
        raise ValueError(f"{name!r} is not a whole reclaim name (rc_<run>_<time>_<seq>)")
    return name


def _address_of(name: ReclaimName, actual: object) -> str:
    """The address a record of this name must hold: the name as its whole local part, at a
    domain (a host name)."""
    text = actual if isinstance(actual, str) else ""
    domain = text.rpartition("@")[2] if "@" in text else ""
    return f"{name.text}@{domain}" if _DOMAIN_RE.fullmatch(domain) else f"{name.text}@<a domain>"


MailboxT = TypeVar("MailboxT")


class _AddressKind(FlowBackend[MailboxT]):
    """What both inbox kinds share: the address release acts on carries the whole name (I8)."""

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The address release logs in to or empties: ``<name>@<domain>``, nothing else."""
        return (("address", record.get("address"), _address_of(name, record.get("address"))),)

    def adapt_name(self, proposed: str) -> str:
        return self.name_style.spell(proposed)


# --- mailboxes: the value a test gets ---------------------------------------------------------


class _Wanted:
    """What a waiting test looks for."""

    def __init__(self, subject: str | None, sender: str | None, contains: str | None) -> None:
        self.subject, self.sender, self.contains = subject, sender, contains

    def first_look(self, summary: _Summary) -> bool:
        if self.subject is not None and self.subject not in summary.subject:
            return False
        return self.sender is None or self.sender.lower() in summary.sender.lower()

    def full_look(self, message: Message) -> bool:
        return self.contains is None or self.contains in f"{message.text}\n{message.html}"

    def __str__(self) -> str:
        parts = [
            f"{label} {value!r}"
            for label, value in (
                ("subject containing", self.subject),
                ("from", self.sender),
                ("with text containing", self.contains),
            )
            if value is not None
        ]
        return "a message " + (", ".join(parts) if parts else "of any kind")


class Mailbox(FlowValue):
    """A disposable inbox: its :attr:`address`, and the messages that arrive there.

    Successive :meth:`wait_for_message` calls return successive messages: a message returned
    once is not returned again. Every method has an async twin (``amessages``,
    ``await_for_message``).
    """

    def __init__(self, address: str, context: Context) -> None:
        super().__init__(context)
        #: The address to give out.
        self.address = address
        self._seen: set[str] = set()
        self._read: dict[str, Message] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"

    def __str__(self) -> str:
        return self.address

    # Provider-specific conversations.
    def _list_flow(self) -> Flow[list[_Summary]]:
        raise NotImplementedError

    def _read_flow(self, summary: _Summary) -> Flow[Message]:
        raise NotImplementedError

    def _all_flow(self) -> Flow[list[Message]]:
        out = []
        for summary in (yield from self._list_flow()):
            out.append((yield from self._cached_read(summary)))
        return out

    def _cached_read(self, summary: _Summary) -> Flow[Message]:
        message = self._read.get(summary.id)
        if message is None:
            message = yield from self._read_flow(summary)
            self._read[summary.id] = message
        return message

    def _look_flow(self, wanted: _Wanted) -> Flow[Message | None]:
        for summary in (yield from self._list_flow()):
            if summary.id in self._seen or not wanted.first_look(summary):
                continue
            message = yield from self._cached_read(summary)
            if wanted.full_look(message):
                self._seen.add(message.id)
                return message
        return None

    def _wait_flow(self, wanted: _Wanted, timeout: float, interval: float) -> Flow[Message]:
        def missed() -> str:
            others = sum(1 for m in self._read if m not in self._seen)
            return (
                f"{wanted} did not reach {self.address} within {timeout:g} s"
                f" ({others} other message(s) there did not match)"
            )

        return poll(lambda: self._look_flow(wanted), timeout, interval, missed)

    def messages(self) -> list[Message]:
        """Every message in the inbox now, oldest first, read in full."""
        return self._run(self._all_flow(), "could not list its messages")

    async def amessages(self) -> list[Message]:
        """Async twin of :meth:`messages`."""
        return await self._arun(self._all_flow(), "could not list its messages")

    def wait_for_message(
        self,
        *,
        subject: str | None = None,
        sender: str | None = None,
        contains: str | None = None,
        timeout: float = 60.0,
        interval: float = 1.0,
    ) -> Message:
        """Wait for a message not returned before, and return it read in full.

        Args:
            subject: only a message whose subject contains this.
            sender: only a message whose sender's address contains this (case-insensitive).
            contains: only a message whose text or HTML body contains this.
            timeout: seconds to wait in all.
            interval: seconds between two looks at the inbox.

        Raises:
            TimeoutError: no such message arrived in time.
        """
        flow = self._wait_flow(_Wanted(subject, sender, contains), timeout, interval)
        return self._run(flow, "could not read its messages")

    async def await_for_message(
        self,
        *,
        subject: str | None = None,
        sender: str | None = None,
        contains: str | None = None,
        timeout: float = 60.0,
        interval: float = 1.0,
    ) -> Message:
        """Async twin of :meth:`wait_for_message`."""
        flow = self._wait_flow(_Wanted(subject, sender, contains), timeout, interval)
        return await self._arun(flow, "could not read its messages")


def _sorted(summaries: list[_Summary]) -> list[_Summary]:
    return sorted(summaries, key=lambda s: s.received)  # oldest first (ISO 8601 sorts)


# --- mail.tm ---------------------------------------------------------------------------------


def _mailtm_login(base: str, address: str, password: str) -> Flow[tuple[str, str] | None]:
    """``POST /token``: (account id, token), or None when the credentials are refused (401),
    which is what mail.tm answers for an account that does not exist."""
    what = "POST /token"
    response = yield from request(
        Request(
            "POST",
            f"{base}/token",
            what,
            json={"address": address, "password": password},
            creates=False,  # a login makes nothing to release
        )
    )
    if response.status_code == 401:
        return None
    body = parse_json(expect(response, what), what)
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} answered {type(body).__name__}, not an object")
    account_id = checked(_ID_RE, body.get("id"), "mail.tm account id")
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise ProtocolError(f"{what} answered no token")
    return account_id, token


def _mailtm_domain(base: str) -> Flow[str]:
    what = "GET /domains"
    body = yield from send_json(
        Request("GET", f"{base}/domains", what, params={"page": "1"}, creates=False)
    )
    members = body.get("hydra:member", []) if isinstance(body, dict) else body
    for domain in members if isinstance(members, list) else []:
        if isinstance(domain, dict) and domain.get("isActive") and not domain.get("isPrivate"):
            return checked(_DOMAIN_RE, str(domain.get("domain", "")).lower(), "mail.tm domain")
    raise ProtocolError(f"{what} lists no active public domain")


class MailTmMailbox(Mailbox):
    """A mail.tm account's inbox (the value of :class:`MailTmInbox`)."""

    def __init__(
        self, address: str, password: str, account_id: str, token: str, context: Context
    ) -> None:
        super().__init__(address, context)
        #: The account's id at mail.tm.
        self.account_id = account_id
        self._base = str(context.record["base_url"])
        self._password = password
        self._token: str | None = token

    def _get(self, path: str, what: str, params: Mapping[str, str] | None = None) -> Flow[Any]:
        # A token expires: log in again with the password once, then give up.
        for _ in range(2):
            if self._token is None:
                login = yield from _mailtm_login(self._base, self.address, self._password)
                if login is None:
                    raise ProtocolError(
                        f"mail.tm refuses the password of {self.address}: the account is gone"
                    )
                self._token = login[1]
            headers = {"Authorization": f"Bearer {self._token}"}
            response = yield from request(
                Request("GET", f"{self._base}{path}", what, params=params, headers=headers)
            )
            if response.status_code != 401:
                return parse_json(expect(response, what), what)
            self._token = None
        raise HttpError(what, response, "a fresh token was refused too")

    def _list_flow(self) -> Flow[list[_Summary]]:
        out: list[_Summary] = []
        for page in range(1, PAGES + 1):
            body = yield from self._get("/messages", "GET /messages", {"page": str(page)})
            members = body.get("hydra:member", []) if isinstance(body, dict) else body
            if not isinstance(members, list):
                raise ProtocolError("GET /messages answered no list of messages")
            for item in members:
                sender = item.get("from") or {}
                out.append(
                    _Summary(
                        id=checked(_ID_RE, item.get("id"), "mail.tm message id"),
                        sender=str(sender.get("address", "")),
                        subject=str(item.get("subject", "")),
                        received=str(item.get("createdAt", "")),
                    )
                )
            if len(members) < 30:  # mail.tm pages hold 30
                break
        return _sorted(out)

    def _read_flow(self, summary: _Summary) -> Flow[Message]:
        item = yield from self._get(f"/messages/{summary.id}", "GET /messages/{id}")
        if not isinstance(item, dict):
            raise ProtocolError("GET /messages/{id} answered no message object")
        body_html = item.get("html") or []
        return Message(
            id=summary.id,
            sender=summary.sender,
            subject=str(item.get("subject", summary.subject)),
            text=str(item.get("text") or ""),
            html="\n".join(body_html) if isinstance(body_html, list) else str(body_html),
            received=summary.received,
        )


class MailTmInbox(_AddressKind[MailTmMailbox]):
    """A real mail.tm account whose address is the reclaim name, deleted at release.

    Args:
        base_url: the API; ``RECLAIM_MAILTM_URL`` or https://api.mail.tm by default.
        domain: one of mail.tm's domains; by default the first active public one
            (``GET /domains``, asked once per process and server), or ``MAILTM_DOMAIN``.
        timeout: seconds per HTTP request.
    """

    kind = "email.mailtm"
    secret_fields = frozenset({"password"})

    #: base URL -> (domain, when it was asked): mail.tm retires domains now and then.
    _domains: ClassVar[dict[str, tuple[str, float]]] = {}

    def __init__(
        self, *, base_url: str | None = None, domain: str | None = None, timeout: float = TIMEOUT
    ) -> None:
        need_httpx(self.kind)
        self.base_url = check_base_url(
            base_url or os.environ.get("RECLAIM_MAILTM_URL") or MAILTM_URL, "mail.tm base_url"
        )
        domain = domain or os.environ.get("MAILTM_DOMAIN") or None
        self.domain = None if domain is None else checked(_DOMAIN_RE, domain, "mail.tm domain")
        self.timeout = float(timeout)
        self._planned: dict[str, Record] = {}

    @staticmethod
    def _limiter(base_url: str) -> RateLimiter:
        return limiter_for(base_url, MAILTM_RATE)

    @classmethod
    def _context(cls, record: Record) -> Context:
        # Checked before anything is sent: a hostile record never reaches a URL (I7).
        base = check_base_url(str(record["base_url"]), "mail.tm base_url")
        _address(record["address"])
        return Context(cls, record, cls._limiter(base))

    def _pick_domain(self, name: str) -> str:
        if self.domain is not None:
            return self.domain
        cached = self._domains.get(self.base_url)
        if cached is not None and time.monotonic() - cached[1] < _DOMAIN_TTL:
            return cached[0]
        record = {"name": name, "base_url": self.base_url, "timeout": self.timeout}
        context = Context(type(self), record, self._limiter(self.base_url))
        domain = context.run(_mailtm_domain(self.base_url), AcquireError, "found no domain to use")
        self._domains[self.base_url] = (domain, time.monotonic())
        return domain

    def plan(self, name: str) -> Record:
        # I1: the address and the password are decided, and journaled, before the account
        # exists; with them release can log in and delete whatever acquire went on to create.
        record = {
            "name": name,
            "base_url": self.base_url,
            "address": f"{_reclaim_name(name)}@{self._pick_domain(name)}",
            "password": secrets.token_urlsafe(18),
            "timeout": self.timeout,
        }
        self._planned[name] = record
        return dict(record)

    def _record_for(self, name: str) -> Record:
        # The record plan() journaled (its password), not a fresh one.
        record = self._planned.get(name)
        if record is None:
            self.plan(name)
            record = self._planned[name]
        return record

    def _create_flow(self, record: Record) -> Flow[tuple[str, str]]:
        try:
            return (yield from self._new_account(record))
        except BaseException:
            # Refused, perhaps because the cached domain was retired: ask again next time.
            self._domains.pop(self.base_url, None)
            raise

    @staticmethod
    def _new_account(record: Record) -> Flow[tuple[str, str]]:
        base, address, password = record["base_url"], record["address"], record["password"]
        what = "POST /accounts"
        response = yield from request(
            Request(
                "POST", f"{base}/accounts", what, json={"address": address, "password": password}
            )
        )
        if response.status_code == 422:
            # Taken: ours if our password opens it (an acquire retried after a crash), else a
            # stranger's, which reclaim never adopts, nor deletes: nothing was made.
            login = yield from _mailtm_login(base, address, password)
            if login is None:
                hint = "reclaim adopts an address only if its own password opens it"
                raise NothingMade(HttpError(what, response, hint))
            return login
        if response.status_code not in (200, 201):
            raise refused(what, response)
        login = yield from _mailtm_login(base, address, password)
        if login is None:
            raise ProtocolError("the account was created, but POST /token refuses its password")
        return login

    def _acquired(self, record: Record, login: tuple[str, str]) -> tuple[MailTmMailbox, Record]:
        self._planned.pop(record["name"], None)
        record = {**record, "account_id": login[0]}
        box = MailTmMailbox(
            record["address"], record["password"], login[0], login[1], self._context(record)
        )
        return box, record

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        base = record["base_url"]
        login = yield from _mailtm_login(base, record["address"], record["password"])
        if login is None:
            return  # never created, or deleted already (I3)
        account_id, token = login
        what = "DELETE /accounts/{id}"
        response = yield from request(
            Request(
                "DELETE",
                f"{base}/accounts/{account_id}",
                what,
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        if response.status_code in (200, 202, 204, 404):
            return
        # 401: the old token of a deleted account is refused; gone if the password is too.
        if response.status_code == 401 and (
            (yield from _mailtm_login(base, record["address"], record["password"])) is None
        ):
            return
        raise HttpError(what, response)

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        login = yield from _mailtm_login(record["base_url"], record["address"], record["password"])
        return login is not None

    @classmethod
    def describe(cls, record: Record) -> str:
        return str(record.get("address", record.get("name", "?")))


# --- mailsac ---------------------------------------------------------------------------------


def _mailsac_headers(api_key: str) -> dict[str, str]:
    return {"Mailsac-Key": api_key}


def _mailsac_path(address: str) -> str:
    return quote(_address(address), safe="@")


class MailsacMailbox(Mailbox):
    """A mailsac inbox (the value of :class:`MailsacInbox`)."""

    def __init__(self, address: str, api_key: str, context: Context) -> None:
        super().__init__(address, context)
        self._base = str(context.record["base_url"])
        self._headers = _mailsac_headers(api_key)

    def _get(self, path: str, what: str, params: Mapping[str, str] | None = None) -> Flow[Any]:
        req = Request("GET", f"{self._base}{path}", what, params=params, headers=self._headers)
        return (yield from send(req))

    def _list_flow(self) -> Flow[list[_Summary]]:
        what = "GET /addresses/{email}/messages"
        path = f"/addresses/{_mailsac_path(self.address)}/messages"
        response = yield from self._get(path, what, {"limit": "100"})
        items = parse_json(response, what)
        if not isinstance(items, list):
            raise ProtocolError(f"{what} answered no list of messages")
        out = []
        for item in items:
            senders = item.get("from") or [{}]
            out.append(
                _Summary(
                    id=checked(_ID_RE, item.get("_id"), "mailsac message id"),
                    sender=str(senders[0].get("address", "")) if senders else "",
                    subject=str(item.get("subject", "")),
                    received=str(item.get("received", "")),
                )
            )
        return _sorted(out)

    def _read_flow(self, summary: _Summary) -> Flow[Message]:
        where = f"{_mailsac_path(self.address)}/{summary.id}"
        text = yield from self._get(f"/text/{where}", "GET /text/{email}/{id}")
        dirty = yield from self._get(f"/dirty/{where}", "GET /dirty/{email}/{id}")
        return Message(
            id=summary.id,
            sender=summary.sender,
            subject=summary.subject,
            text=text.text,
            html=dirty.text,
            received=summary.received,
        )


class MailsacInbox(_AddressKind[MailsacMailbox]):
    """A mailsac inbox ``<name>@<domain>``, emptied (and given back, if reserved) at release.

    Args:
        api_key: the account's API key; ``MAILSAC_KEY`` by default.
        base_url: the API; ``RECLAIM_MAILSAC_URL`` or https://mailsac.com/api by default.
        domain: ``mailsac.com``, or a custom domain of the account.
        reserve: reserve the address as a private address (a paid feature): nobody else can
            read its mail, and leftovers can be listed. Without it the inbox is public.
        timeout: seconds per HTTP request.
    """

    kind = "email.mailsac"
    secret_fields = frozenset({"api_key"})
    url_schemes = ("mailsac", "mailsac+http")
    _creating = "be set up"
    _releasing = "be emptied"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        domain: str = "mailsac.com",
        reserve: bool = False,
        timeout: float = TIMEOUT,
    ) -> None:
        need_httpx(self.kind)
        api_key = api_key or os.environ.get("MAILSAC_KEY")
        if not api_key:
            raise ValueError("MailsacInbox needs an API key: pass api_key= or set MAILSAC_KEY")
        self.api_key = api_key
        self.base_url = check_base_url(
            base_url or os.environ.get("RECLAIM_MAILSAC_URL") or MAILSAC_URL, "mailsac base_url"
        )
        self.domain = checked(_DOMAIN_RE, domain.lower(), "mailsac domain")
        self.reserve = bool(reserve)
        self.timeout = float(timeout)

    def plan(self, name: str) -> Record:
        return {
            "name": name,
            "base_url": self.base_url,
            "address": f"{_reclaim_name(name)}@{self.domain}",
            "api_key": self.api_key,
            "reserve": self.reserve,
            "timeout": self.timeout,
        }

    @classmethod
    def _context(cls, record: Record) -> Context:
        # Checked before anything is sent: a hostile record never reaches a URL (I7).
        check_base_url(str(record["base_url"]), "mailsac base_url")
        _address(record["address"])
        return Context(cls, record)

    @staticmethod
    def _reserve_flow(record: Record) -> Flow[None]:
        base, path = record["base_url"], _mailsac_path(record["address"])
        headers = _mailsac_headers(record["api_key"])
        what = "POST /addresses/{email}"
        response = yield from request(
            Request("POST", f"{base}/addresses/{path}", what, headers=headers)
        )
        if response.status_code == 400:
            # "Already reserved by the current user" (an acquire retried after a crash), or no
            # credits left: ours only if the address now says we own it.
            owned = yield from send_json(
                Request(
                    "GET", f"{base}/addresses/{path}", "GET /addresses/{email}", headers=headers,
                    creates=False,
                )
            )  # fmt: skip
            if isinstance(owned, dict) and owned.get("owner"):
                return
            # Not reserved by this account: the 400 made nothing.
            raise NothingMade(
                HttpError(what, response, "reserving private addresses needs credits")
            )
        if response.status_code != 200:
            raise refused(what, response)

    def _create_flow(self, record: Record) -> Flow[None]:
        if self.reserve:
            yield from self._reserve_flow(record)
        else:
            # Nothing to create for a public inbox; check now that the key works and nobody
            # owns the address, rather than fail at release.
            yield from self._exists_flow(record)

    def _acquired(self, record: Record, _result: None) -> tuple[MailsacMailbox, Record]:
        return MailsacMailbox(record["address"], self.api_key, Context(type(self), record)), record

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        base, path = record["base_url"], _mailsac_path(record["address"])
        headers = _mailsac_headers(record["api_key"])
        if record.get("reserve"):
            # 400: "not currently owned by the current account, or already deleted" (I3).
            yield from send(
                Request(
                    "DELETE",
                    f"{base}/addresses/{path}",
                    "DELETE /addresses/{email}",
                    params={"deleteAddressMessages": "true"},
                    headers=headers,
                ),
                200, 204, 400,
            )  # fmt: skip
        # A public inbox (or starred mail) keeps its messages: delete them one by one, which
        # mailsac allows to anybody on a public inbox.
        listing = Request(
            "GET",
            f"{base}/addresses/{path}/messages",
            "GET /addresses/{email}/messages",
            params={"limit": "100"},
            headers=headers,
        )
        for _ in range(PAGES):
            items = yield from send_json(listing)
            if not items:
                return
            for item in items if isinstance(items, list) else []:
                message_id = checked(_ID_RE, item.get("_id"), "mailsac message id")
                yield from send(
                    Request(
                        "DELETE",
                        f"{base}/addresses/{path}/messages/{message_id}",
                        "DELETE /addresses/{email}/messages/{id}",
                        headers=headers,
                    ),
                    200, 204, 404,
                )  # fmt: skip
        raise ProtocolError(f"messages keep arriving at {record['address']} while it is emptied")

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        base, path = record["base_url"], _mailsac_path(record["address"])
        headers = _mailsac_headers(record["api_key"])
        if record.get("reserve"):
            owned = yield from send_json(
                Request(
                    "GET", f"{base}/addresses/{path}", "GET /addresses/{email}", headers=headers,
                    creates=False,
                )
            )  # fmt: skip
            if isinstance(owned, dict) and owned.get("owner"):
                return True
        counted = yield from send_json(
            Request(
                "GET",
                f"{base}/addresses/{path}/message-count",
                "GET /addresses/{email}/message-count",
                headers=headers,
                creates=False,
            )
        )
        return bool(isinstance(counted, dict) and counted.get("count"))

    @classmethod
    def describe(cls, record: Record) -> str:
        return str(record.get("address", record.get("name", "?")))

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Reserved addresses of the account whose local part is a reclaim name.

        ``target`` is ``mailsac://[KEY@]HOST[:PORT][/PATH]`` (https; ``mailsac+http://`` for a
        local stand-in); the key defaults to ``MAILSAC_KEY``, the path to ``/api``. Public
        inboxes cannot be listed: only reserved addresses are found.
        """
        base_url, api_key = _leftover_target(target)
        probe = {"name": "leftovers", "base_url": base_url, "api_key": api_key}
        listing = Request(
            "GET", f"{base_url}/addresses", "GET /addresses", headers=_mailsac_headers(api_key)
        )
        items = Context(cls, probe).run(
            send_json(listing), BackendError, "could not list reserved addresses"
        )
        for item in items if isinstance(items, list) else []:
            address = str(item.get("_id", "")) if isinstance(item, dict) else ""
            parsed = cls.name_style.parse(address.partition("@")[0])
            if parsed is None or address != _address_of(parsed, address):
                continue  # never anything without reclaim's whole name
            record = {
                "name": parsed.text,
                "base_url": base_url,
                "address": address,
                "api_key": api_key,
                "reserve": True,
                "timeout": TIMEOUT,
            }
            yield Leftover.of(record, parsed)


def _leftover_target(target: str) -> tuple[str, str]:
    url = split_url(
        target, kind=MailsacInbox.kind, schemes=MailsacInbox.url_schemes, need_host=False
    )
    scheme = {"mailsac": "https", "mailsac+http": "http"}[url.scheme]
    host = url.host or "mailsac.com"
    netloc = host if url.port is None else f"{host}:{url.port}"
    api_key = url.username or os.environ.get("MAILSAC_KEY") or ""
    if not api_key:
        raise ValueError(f"{url.scheme}://{netloc}: no API key in the URL and MAILSAC_KEY unset")
    base_url = check_base_url(urlunsplit((scheme, netloc, url.path or "/api", "", "")), target)
    return base_url, api_key

"""User accounts in other systems: any JSON REST API (``RestAccount``) and SCIM 2.0 (``ScimUser``).

An end-to-end suite signs up users in the system under test, or provisions them in an identity
provider. Each account carries reclaim's name (as its user name, or inside its e-mail address),
and that is what makes the crash model work for a resource whose id is known only once the
server has answered the create call:

- I1: the planned record holds the name, not the id. A process killed between the server's
  ``201 Created`` and the record being written leaves an account that release finds again by a
  lookup on the name (``GET {collection}?username=...``; for SCIM ``GET /Users?filter=userName eq
  "..."``) and deletes. Only items whose name field is *exactly* the planned name are deleted: a
  server that ignores the filter and lists every user loses nobody.
- I3: ``404`` and ``410`` on delete mean the account is gone already (SCIM: a second delete is
  ``404``, RFC 7644 section 3.6).
- I7: the API token is a secret field of the record (release in the watchdog or the sweeper
  needs it); it never appears in an error message.

Providers that rate-limit (``429``, or ``503`` with ``Retry-After``) are asked again after the
wait they name, a bounded number of times; then the call fails, and a release that failed stays
``failed`` in the registry for the next ``reclaim sweep``.

Needs httpx: ``pip install 'reclaim[http]'``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, unquote, urlsplit

from reclaim.backends import (
    BackendError,
    ForeignNameError,
    Leftover,
    ReclaimName,
    Record,
    refuse,
)
from reclaim.backends._http import (
    Context,
    Flow,
    FlowBackend,
    ProtocolError,
    Request,
    check_url,
    leftover_probe,
    send,
    send_or_gone,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["Account", "RestAccount", "ScimUser"]

#: The SCIM 2.0 core user schema (RFC 7643 section 4.1) and the media type of SCIM bodies.
SCIM_USER_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_MEDIA_TYPE: Final = "application/scim+json"

#: E-mail domains built into user names: host names only, nothing that could end a filter.
_DOMAIN: Final = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+"
)
#: Header names (RFC 9110 tokens).
_HEADER: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: The answers to a delete that mean it was done.
_DONE: Final = range(200, 300)


@dataclasses.dataclass(frozen=True)
class Account:
    """The account a test gets.

    Attributes:
        id: the server's id of the account.
        login: the value that carries reclaim's name: the user name, or the e-mail address.
        url: the account's own URL (what release deletes).
        data: the JSON the server answered to the create call (``{}`` when it sent none).
        password: the password reclaim chose for it, when the body asked for one
            (``{password}``; for SCIM ``password=True``). Not kept in the record.
    """

    id: str
    login: str
    url: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)


class _AccountKind(FlowBackend[Account]):
    """What both kinds share: release and ``exists`` find the account by the recorded id (once
    the server says that account carries the record's login, I8) or, for a planned record, by
    its exact login (I1); ``404`` and ``410`` on delete mean it is gone already (I3)."""

    #: The record's field that holds the login (the name, or ``<name>@<domain>``).
    _login: ClassVar[str] = "login"

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The login (REST) or userName (SCIM) a lookup matches and release compares with the
        server's account: the name, or ``<name>@<domain>``."""
        login = record.get(cls._login)
        return ((cls._login, login, _login_of(name, login)),)

    def adapt_name(self, proposed: str) -> str:
        return self.name_style.spell(proposed)

    @classmethod
    def _request(cls, record: Record, method: str, url: str, **options: Any) -> Request:
        """A request with the provider's headers (its token)."""
        raise NotImplementedError

    @classmethod
    def _item(cls, record: Record, account_id: str) -> str:
        """The account's own URL (the id percent-encoded as one segment)."""
        raise NotImplementedError

    @classmethod
    def _lookup_flow(cls, record: Record) -> Flow[list[str]]:
        """The ids of the accounts whose login is exactly the record's (I1)."""
        raise NotImplementedError

    @classmethod
    def _foreign(cls, record: Record, account: dict[str, Any]) -> ForeignNameError | None:
        """The refusal when the server's ``account`` does not carry the record's login."""
        raise NotImplementedError

    def _acquired(
        self, record: Record, made: tuple[str, dict[str, Any], str | None]
    ) -> tuple[Account, Record]:
        account_id, data, password = made
        record["id"] = account_id
        url = self._item(record, account_id)
        return Account(account_id, record[self._login], url, data, password), record

    @classmethod
    def _owned_flow(cls, record: Record) -> Flow[bool]:
        """Is the account with the record's id there (False: gone), and reclaim's? Refused
        (``ForeignNameError``) when the server's account carries another login."""
        url = cls._item(record, _check_id(record["id"]))
        response = yield from send_or_gone(
            cls._request(record, "GET", url, creates=False), gone=(404, 410)
        )
        if response is None:
            return False
        refusal = cls._foreign(record, _json_or_empty(response))
        if refusal is not None:
            raise refusal
        return True

    @classmethod
    def _ids_flow(cls, record: Record) -> Flow[list[str]]:
        if record.get("id"):
            # An id is the server's: delete it only once the server says the account behind
            # it carries this record's whole login (I8); gone already: done (I3).
            return [record["id"]] if (yield from cls._owned_flow(record)) else []
        return (yield from cls._lookup_flow(record))

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        for account_id in (yield from cls._ids_flow(record)):
            url = cls._item(record, _check_id(account_id))
            # SCIM (RFC 7644 section 3.6): 204; a deleted user is 404 for every operation after.
            yield from send_or_gone(cls._request(record, "DELETE", url), *_DONE, gone=(404, 410))

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        return bool((yield from cls._ids_flow(record)))


class RestAccount(_AccountKind):
    """An account created through a JSON REST API: ``POST`` to a collection, ``DELETE`` its item.

    ::

        api = RestAccount(
            "https://app.test/api/users",
            {"username": "{name}", "email": "{name}@example.test", "password": "{password}"},
            token=ADMIN_TOKEN,
        )
        user = persona.acquire(api)  # Account(id=..., login='rc_3f2a9c01_sx1k2w_1', ...)

    Placeholders in the body's string values: ``{name}`` is reclaim's name, ``{password}`` a
    fresh random password (given back as ``Account.password``, never journaled).

    Args:
        collection_url: where accounts are created (``POST``); ``RECLAIM_ACCOUNT_URL`` by default.
        body: the JSON body of the create call; by default ``{"username": "{name}"}``. It must
            carry ``{name}`` in a string value: that is how release finds an account whose id
            was never recorded (I1).
        token: sent as ``Authorization: Bearer <token>``; ``RECLAIM_ACCOUNT_TOKEN`` by default.
            A secret of the record.
        auth_header, auth_scheme: where and how the token goes, e.g. ``"X-Api-Key"`` and ``""``.
        headers: more headers for every call (kept in the record as a secret: they may hold
            keys).
        id_field: where the id is in the create answer (dotted path, e.g. ``"data.id"``). Without
            it in the answer, the last segment of the ``Location`` header is the id (Keycloak
            answers ``201`` with no body).
        item_id_field: where the id is in each item of a lookup answer; by default the last
            part of ``id_field`` (``"id"`` for ``"data.id"``).
        item_url: the account's URL; ``{collection}`` and ``{id}`` (percent-encoded) are filled.
        name_field: the dotted path of the body field that carries ``{name}``; by default the
            first such field. A lookup matches items on this field, exactly.
        lookup_url: how release finds accounts by name when the id is not recorded;
            ``{collection}``, ``{field}`` (the last part of ``name_field``) and ``{value}`` (the
            name field's value, percent-encoded) are filled. For an API without a filter give
            ``"{collection}"``: every listed item is compared, only the exact match is deleted.
            Pagination of the lookup answer is not followed.
        items_field: where the list of items is in a lookup answer (dotted path); by default the
            answer itself if it is a list, else the first list under ``items``, ``data``,
            ``results``, ``Resources``, ``users``, ``value``.
        timeout: seconds per HTTP call.
    """

    kind = "account.rest"
    secret_fields = frozenset({"token", "headers"})

    def __init__(
        self,
        collection_url: str | None = None,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        auth_header: str = "Authorization",
        auth_scheme: str = "Bearer",
        headers: Mapping[str, str] | None = None,
        id_field: str = "id",
        item_id_field: str | None = None,
        item_url: str = "{collection}/{id}",
        name_field: str | None = None,
        lookup_url: str = "{collection}?{field}={value}",
        items_field: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        collection = collection_url or os.environ.get("RECLAIM_ACCOUNT_URL", "")
        if not collection:
            raise ValueError(
                "RestAccount needs the collection URL where accounts are created: pass"
                " collection_url or set RECLAIM_ACCOUNT_URL"
            )
        self.collection = check_url(collection.rstrip("/"), "collection_url")
        parts = urlsplit(self.collection)
        if "{" in self.collection or "}" in self.collection or parts.query or parts.fragment:
            raise ValueError(
                f"collection_url {collection!r} must be a plain URL: no query, no braces"
            )
        self.body: dict[str, Any] = dict(body) if body is not None else {"username": "{name}"}
        self.name_field = name_field if name_field is not None else _find_placeholder(self.body)
        if self.name_field is None:
            raise ValueError(
                "the body of a RestAccount must carry reclaim's name in a string value, e.g."
                ' {"username": "{name}"}: a process killed before the id is recorded leaves an'
                " account that only its name finds again (I1)"
            )
        template = _dig(self.body, self.name_field)
        if not isinstance(template, str) or "{name}" not in template:
            raise ValueError(
                f"name_field {self.name_field!r} must name a string value of the body that"
                " contains '{name}'"
            )
        head, _, domain = template.partition("@")
        if head != "{name}" or (template != head and not _DOMAIN.fullmatch(domain)):
            raise ValueError(
                f"the name field {self.name_field!r} must be '{{name}}' or"
                f" '{{name}}@<lower-case host name>', not {template!r}: release deletes an"
                " account only when the server says it carries reclaim's whole name"
            )
        if "{id}" not in item_url:
            raise ValueError(f"item_url {item_url!r} must contain '{{id}}'")
        if not _HEADER.fullmatch(auth_header):
            raise ValueError(f"auth_header {auth_header!r} is not a valid header name")
        for key, value in (headers or {}).items():
            if not _HEADER.fullmatch(key) or "\r" in value or "\n" in value:
                raise ValueError(f"header {key!r} has an invalid name or value")
        self.token = token if token is not None else os.environ.get("RECLAIM_ACCOUNT_TOKEN")
        self.auth_header = auth_header
        self.auth_scheme = auth_scheme
        self.headers = dict(headers or {})
        self.id_field = id_field
        self.item_id_field = item_id_field or id_field.rsplit(".", 1)[-1]
        self.item_url = item_url
        self.lookup_url = lookup_url
        self.items_field = items_field
        self.timeout = timeout

    def plan(self, name: str) -> Record:
        assert self.name_field is not None
        return {
            "name": name,
            "id": None,
            "collection": self.collection,
            "item_url": self.item_url,
            "lookup_url": self.lookup_url,
            "name_field": self.name_field,
            "login": _template(_dig(self.body, self.name_field), name, None),
            "items_field": self.items_field,
            "id_field": self.id_field,
            "item_id_field": self.item_id_field,
            "auth_header": self.auth_header,
            "auth_scheme": self.auth_scheme,
            "token": self.token,
            "headers": self.headers,
            "timeout": self.timeout,
        }

    def _create_flow(self, record: Record) -> Flow[tuple[str, dict[str, Any], str | None]]:
        password = _new_password() if "{password}" in json.dumps(self.body) else None
        body = _template(self.body, record["name"], password)
        # A 409 ("taken") is somebody else's account, never released: NotCreatedError.
        response = yield from send(
            self._request(record, "POST", record["collection"], json=body),
            200, 201, 202,
            proof=True,
        )  # fmt: skip
        data = _json_or_empty(response)
        found = _dig(data, record["id_field"])
        if found is None or isinstance(found, dict | list):
            found = _id_from_location(response.headers.get("location"))
        missing = (
            f"the account was created, but the answer has no id at {self.id_field!r} and no"
            " Location header: set id_field; release still finds the account by its name"
        )
        return _made(found, data, password, missing)

    @classmethod
    def describe(cls, record: Record) -> str:
        ident = f" id {record['id']}" if record.get("id") else ""
        return f"{record.get('login', record.get('name'))}{ident} at {record.get('collection')}"

    @classmethod
    def _request(cls, record: Record, method: str, url: str, **options: Any) -> Request:
        headers = dict(record.get("headers") or {})
        if record.get("token"):
            value = f"{record['auth_scheme']} {record['token']}".strip()
            headers[record["auth_header"]] = value
        headers.setdefault("Accept", "application/json")
        return Request(method, url, headers=headers, **options)

    @classmethod
    def _item(cls, record: Record, account_id: str) -> str:
        # The id is percent-encoded with no safe characters: "/" or "?" in an id cannot leave
        # the account's own URL. "." and ".." are refused by _check_id.
        template = str(record["item_url"])
        return template.replace("{collection}", record["collection"]).replace(
            "{id}", quote(account_id, safe="")
        )

    @classmethod
    def _lookup_flow(cls, record: Record) -> Flow[list[str]]:
        field = record["name_field"].rsplit(".", 1)[-1]
        url = (
            record["lookup_url"]
            .replace("{collection}", record["collection"])
            .replace("{field}", quote(field, safe=""))
            .replace("{value}", quote(record["login"], safe=""))
        )
        # A 404 is an error, never "no such account": a wrong lookup URL must not make a
        # release look done.
        response = yield from send(cls._request(record, "GET", url, creates=False))
        items = _items(_json_or_empty(response), record.get("items_field"))
        found = []
        for item in items:
            if isinstance(item, dict) and _dig(item, record["name_field"]) == record["login"]:
                account_id = _dig(item, record["item_id_field"])
                if account_id is not None:
                    found.append(str(account_id))
        return found

    @classmethod
    def _foreign(cls, record: Record, account: dict[str, Any]) -> ForeignNameError | None:
        field = str(record["name_field"])
        envelope = str(record.get("id_field") or "").rpartition(".")[0]
        found = _dig(account, field)
        if found is None and envelope:
            found = _dig(account, f"{envelope}.{field}")
        if found == record["login"]:
            return None
        shown = repr(found)[:80] if found is not None else "none"
        return refuse(
            cls.kind,
            "id",
            record.get("id"),
            f"the id of an account whose {field} is {record.get('login')!r} (the server's"
            f" account has {shown})",
            name=cls.name_style.parse(record.get("name")),
        )


def _login_of(name: ReclaimName, actual: object) -> str:
    """The login a record of this name must hold: the name itself, or ``<name>@<domain>``
    when the record's login has a domain (a host name, nothing that could end a filter)."""
    text = actual if isinstance(actual, str) else ""
    _, at, domain = text.partition("@")
    if not at:
        return name.text
    return f"{name.text}@{domain}" if _DOMAIN.fullmatch(domain) else f"{name.text}@<a host name>"


class ScimUser(_AccountKind):
    """A user provisioned through SCIM 2.0 (RFC 7644): ``POST /Users``, ``DELETE /Users/{id}``.

    The user name is reclaim's name, or an e-mail address made of it (``email_domain``), so a
    user whose id was never recorded is found with ``GET /Users?filter=userName eq "..."`` (I1).
    ::

        scim = ScimUser("https://idp.test/scim/v2", token=SCIM_TOKEN, email_domain="example.test")
        user = persona.acquire(scim)   # user.login == "rc_3f2a9c01_sx1k2w_1@example.test"

    Args:
        base_url: the SCIM service's base URL (``.../scim/v2``); ``SCIM_BASE_URL`` by default.
        token: the bearer token; ``SCIM_TOKEN`` by default. A secret of the record.
        email_domain: make the user name ``<name>@<domain>`` and give the user that work
            e-mail as its primary address.
        attributes: more attributes of the user (``name``, ``displayName``, extension schemas);
            ``{name}`` in their string values is reclaim's name. They cannot set ``userName``.
        password: give the user a fresh random password (``Account.password``; never journaled).
        timeout: seconds per HTTP call.
    """

    kind = "account.scim"
    secret_fields = frozenset({"token"})
    url_schemes = ("scim+http", "scim+https")
    _login = "user_name"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        email_domain: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        password: bool = False,
        timeout: float = 10.0,
    ) -> None:
        base = base_url or os.environ.get("SCIM_BASE_URL", "")
        if not base:
            raise ValueError("ScimUser needs the SCIM base URL: pass base_url or set SCIM_BASE_URL")
        self.base_url = check_url(base.rstrip("/"), "base_url")
        if email_domain is not None and not _DOMAIN.fullmatch(email_domain):
            raise ValueError(
                f"email_domain {email_domain!r} is not a lower-case host name like example.test"
            )
        self.attributes = dict(attributes or {})
        if "userName" in self.attributes:
            raise ValueError(
                "attributes cannot set userName: it is reclaim's name, which release looks for"
            )
        self.token = token if token is not None else os.environ.get("SCIM_TOKEN")
        self.email_domain = email_domain
        self.password = password
        self.timeout = timeout

    def plan(self, name: str) -> Record:
        user_name = f"{name}@{self.email_domain}" if self.email_domain else name
        return {
            "name": name,
            "id": None,
            "base_url": self.base_url,
            "user_name": user_name,
            "token": self.token,
            "timeout": self.timeout,
        }

    def _create_flow(self, record: Record) -> Flow[tuple[str, dict[str, Any], str | None]]:
        password = _new_password() if self.password else None
        body: dict[str, Any] = _template(self.attributes, record["name"], None)
        schemas = list(body.get("schemas") or [])
        if SCIM_USER_SCHEMA not in schemas:
            schemas.insert(0, SCIM_USER_SCHEMA)
        body.update(schemas=schemas, userName=record["user_name"])
        body.setdefault("active", True)
        if self.email_domain:
            body.setdefault(
                "emails", [{"value": record["user_name"], "type": "work", "primary": True}]
            )
        if password is not None:
            body["password"] = password
        url = f"{record['base_url']}/Users"
        # 409 uniqueness: somebody else's user, never released (NotCreatedError).
        response = yield from send(
            self._request(record, "POST", url, content=json.dumps(body).encode()),
            201, 200,
            proof=True,
        )  # fmt: skip
        data = _json_or_empty(response)
        found = data.get("id") or _id_from_location(response.headers.get("location"))
        missing = (
            "the user was created, but the answer has no id; release still finds it by its userName"
        )
        return _made(found, data, password, missing)

    @classmethod
    def describe(cls, record: Record) -> str:
        ident = f" id {record['id']}" if record.get("id") else ""
        return f"SCIM user {record.get('user_name', record.get('name'))}{ident}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """SCIM users whose userName is a reclaim name (or ``<name>@domain``).

        ``target`` is the base URL with ``scim+`` before its scheme:
        ``scim+https://idp.test/scim/v2``. The token is the URL's password
        (``scim+https://:TOKEN@idp.test/scim/v2``) or ``SCIM_TOKEN``.
        """
        template = leftover_probe(cls, target, ("base_url", "token"), "SCIM_TOKEN")
        users = Context(cls, template, where=template["base_url"]).run(
            _scim_users(template, 'userName sw "rc_"', or_all=True),
            BackendError,
            "could not list the users",
        )
        for resource in users:
            user_name = resource.get("userName")
            user_id = resource.get("id")
            if not isinstance(user_name, str) or not isinstance(user_id, str):
                continue
            local = user_name.split("@", 1)[0]
            parsed = cls.name_style.parse(local)
            if parsed is None or user_name != _login_of(parsed, user_name):
                continue  # never anything without reclaim's whole name
            record = {**template, "name": local, "id": user_id, "user_name": user_name}
            yield Leftover.of(record, parsed)

    @classmethod
    def _request(cls, record: Record, method: str, url: str, **options: Any) -> Request:
        headers = {"Accept": SCIM_MEDIA_TYPE, "Content-Type": SCIM_MEDIA_TYPE}
        if record.get("token"):
            headers["Authorization"] = f"Bearer {record['token']}"
        return Request(method, url, headers=headers, **options)

    @classmethod
    def _item(cls, record: Record, account_id: str) -> str:
        return f"{record['base_url']}/Users/{quote(account_id, safe='')}"

    @classmethod
    def _lookup_flow(cls, record: Record) -> Flow[list[str]]:
        return _scim_lookup(record)

    @classmethod
    def _foreign(cls, record: Record, account: dict[str, Any]) -> ForeignNameError | None:
        # Compared as SCIM compares userName: case-insensitively (RFC 7643 section 4.1.1).
        found = account.get("userName")
        if isinstance(found, str) and found.casefold() == str(record["user_name"]).casefold():
            return None
        shown = repr(found)[:80] if found is not None else "none"
        return refuse(
            cls.kind,
            "id",
            record.get("id"),
            f"the id of the user {record.get('user_name')!r} (the server's user has the"
            f" userName {shown})",
            name=cls.name_style.parse(record.get("name")),
        )


def _scim_lookup(record: Record) -> Flow[list[str]]:
    """The ids of users whose userName is the planned one (case-insensitive, as SCIM compares
    userName, RFC 7643 section 4.1.1)."""
    wanted = record["user_name"].casefold()
    # The value is a JSON string literal in the filter (RFC 7644 section 3.4.2.2): json.dumps
    # quotes and escapes it, so no value can end the filter early.
    query = f"userName eq {json.dumps(record['user_name'])}"
    users = yield from _scim_users(record, query)
    return [
        str(r["id"])
        for r in users
        if str(r.get("userName", "")).casefold() == wanted and r.get("id")
    ]


def _scim_users(record: Record, query: str, *, or_all: bool = False) -> Flow[list[dict[str, Any]]]:
    """Every user a filter finds, page by page (``startIndex`` is 1-based). With ``or_all``, a
    provider that refuses the filter (400 ``invalidFilter``) is asked for every user instead.

    A 404 is an error here, never "nothing found": a query of ``/Users`` answers 200, so a 404
    means a wrong base URL, and a release must not look done because of it.
    """
    url = f"{record['base_url']}/Users"
    params = {"filter": query, "count": "100"}
    found: list[dict[str, Any]] = []
    start, pages = 1, 0
    while pages < 10_000:
        pages += 1
        params["startIndex"] = str(start)
        refused = (400,) if or_all and pages == 1 and "filter" in params else ()
        req = ScimUser._request(record, "GET", url, params=dict(params), creates=False)
        response = yield from send_or_gone(req, gone=refused)
        if response is None:
            del params["filter"]
            start, pages = 1, 0
            continue
        data = _json_or_empty(response)
        resources = [r for r in data.get("Resources") or [] if isinstance(r, dict)]
        found.extend(resources)
        total = data.get("totalResults")
        start += len(resources)
        if not resources or not isinstance(total, int) or start > total:
            break
    return found


# --- shared helpers --------------------------------------------------------------------------


def _made(
    found: Any, data: dict[str, Any], password: str | None, missing: str
) -> tuple[str, dict[str, Any], str | None]:
    """What acquire made: the account's id (``ProtocolError`` saying ``missing`` without one),
    the server's answer, the password."""
    if found is None or found == "":
        raise ProtocolError(missing)
    return _check_id(str(found)), data, password


def _check_id(value: Any) -> str:
    """An id the server gave (or the record holds), safe to put into a URL path segment."""
    text = str(value)
    if not text or len(text) > 256 or text in (".", "..") or any(ord(c) < 32 for c in text):
        raise ProtocolError(f"the server gave an id that cannot be used in a URL: {text[:80]!r}")
    return text


def _find_placeholder(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        return path if "{name}" in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _find_placeholder(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    return None


def _template(value: Any, name: str, password: str | None) -> Any:
    """``value`` with ``{name}`` (and ``{password}``) filled in every string, at any depth.

    Plain replacement, never ``str.format``: braces elsewhere in a value stay as they are.
    """
    if isinstance(value, str):
        value = value.replace("{name}", name)
        return value.replace("{password}", password) if password is not None else value
    if isinstance(value, Mapping):
        return {k: _template(v, name, password) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_template(v, name, password) for v in value]
    return value


def _dig(data: Any, path: str | None) -> Any:
    """The value at a dotted path (``"data.id"``, ``"items.0.id"``), or None."""
    if not path:
        return data
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _items(data: Any, path: str | None) -> list[Any]:
    if path:
        found = _dig(data, path)
        return found if isinstance(found, list) else []
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("items", "data", "results", "Resources", "users", "value"):
            if isinstance(data.get(key), list):
                return list(data[key])
    return []


def _id_from_location(location: str | None) -> str | None:
    if not location:
        return None
    segments = [s for s in urlsplit(location).path.split("/") if s]
    return unquote(segments[-1]) if segments else None


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {"items": data} if isinstance(data, list) else {}


def _new_password() -> str:
    # Letters, digits and "-_" from the token, plus one of each class most policies ask for.
    return f"{secrets.token_urlsafe(18)}-Aa1"

"""Stand-ins for user-account APIs: SCIM 2.0 (RFC 7644) and a generic JSON REST users API.

They stand in for real identity providers (Okta, Entra ID, Keycloak...) and for an application's
own sign-up API, which the tests cannot reach. Each keeps its users in memory, so a test asks it
what still exists.

This module also holds :class:`StandIn`, the threaded HTTP server every stand-in of this package
that is written by the accounts/OAuth/OpenFGA tests builds on: start/stop, "down" and "up" again
on the same port, and "answer 429 to the next N requests".
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import re
import threading
import uuid
from collections.abc import Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Self
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

SCIM_USER: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_ERROR: Final = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_LIST: Final = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SCIM_JSON: Final = "application/scim+json"
REST_TOKEN: Final = "rest-admin-token-1234"
SCIM_TOKEN: Final = "scim-bearer-token-5678"


@dataclasses.dataclass
class Request:
    """One request as a stand-in sees it."""

    method: str
    path: str  # percent-decoded
    raw_path: str  # as sent
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when it is not)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def form(self) -> dict[str, str]:
        """The body as a form (``application/x-www-form-urlencoded``)."""
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def arg(self, name: str) -> str | None:
        """A query parameter."""
        values = self.query.get(name)
        return values[0] if values else None

    def bearer(self) -> str | None:
        """The token of ``Authorization: Bearer``."""
        value = self.headers.get("Authorization") or ""
        scheme, _, token = value.partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` of ``Authorization: Basic``, form-decoded as RFC 6749 wants."""
        value = self.headers.get("Authorization") or ""
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        return (unquote_plus(user), unquote_plus(password)) if sep else None


@dataclasses.dataclass
class Reply:
    """What a stand-in answers: a status, a JSON body (or none), headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"


class StandIn:
    """A threaded HTTP server on 127.0.0.1 that stands in for a provider.

    Subclasses implement :meth:`route`. Every request is kept in :attr:`requests`.
    :meth:`down` stops listening (connections are refused, as for a provider that went away)
    and :meth:`up` listens again on the same port, with the state kept. :meth:`inject` and
    :meth:`throttle` make it answer the next requests with an error; :attr:`injected` tells
    which requests got one, :attr:`answered` the status of every answer.
    """

    def __init__(self) -> None:
        self.port = 0
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.injected: list[tuple[str, str, int]] = []
        self.answered: list[tuple[str, str, int]] = []
        self._inject: list[tuple[str | None, Reply]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Listen (on a free port the first time, on the same port after :meth:`down`)."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.standin = self
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(
            target=server.serve_forever, name=f"standin-{self.port}", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop listening; the state stays."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def down(self) -> None:
        """The provider goes away: connections to its port are refused."""
        self.stop()

    def up(self) -> None:
        """The provider is back, on the same port, with the same state."""
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far."""
        with self.lock:
            return [(r.method, r.path) for r in self.requests]

    def inject(
        self,
        count: int,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        method: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (of ``method``, when given) with this instead."""
        with self.lock:
            self._inject.extend([(method, Reply(status, body, dict(headers or {})))] * count)

    def heal(self) -> None:
        """Drop the errors still waiting to be answered: the provider has recovered."""
        with self.lock:
            self._inject.clear()

    def throttle(self, count: int, retry_after: str | None = "0", status: int = 429) -> None:
        """Answer the next ``count`` requests with ``status`` (429, or GitHub's 403) and this
        ``Retry-After`` (None: no header)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.inject(count, status, {"message": "slow down"}, headers)

    def route(self, request: Request) -> Reply:
        """Answer one request (under :attr:`lock`)."""
        raise NotImplementedError

    def dispatch(self, request: Request) -> Reply:
        """Keep the request, then answer with an injected error or :meth:`route`."""
        with self.lock:
            self.requests.append(request)
            for n, (method, injected) in enumerate(self._inject):
                if method in (None, request.method):
                    del self._inject[n]
                    self.injected.append((request.method, request.path, injected.status))
                    reply = injected
                    break
            else:
                reply = self.route(request)
            self.answered.append((request.method, request.path, reply.status))
            return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: StandIn


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stand-in that goes "down" has no connection
    # left open that would still answer.
    server: _Server

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command,
            unquote(parts.path),
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            self.headers,
            body,
        )
        try:
            reply = self.server.standin.dispatch(request)
        except Exception as exc:  # a bug in a stand-in: say so instead of hanging the client
            reply = Reply(500, {"error": "stand_in_bug", "message": repr(exc)})
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if payload:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows what matters."""


# --- a generic REST users API ------------------------------------------------------------------


class RestUsers(StandIn):
    """An application's users API at ``/api/users``, with a bearer token.

    ``POST /api/users`` (JSON, ``username`` required and unique) answers 201 with the user, or
    ``{"data": user}`` (``envelope``), or no body and a ``Location`` (``location_only``, as
    Keycloak does). ``GET /api/users?username=x`` lists matches (``ignore_filter``: lists
    everyone, as a careless API would). ``DELETE /api/users/{id}`` answers 204, then
    ``gone_status`` (404, or 410). ``hide_id``: creates, and answers with no id at all.
    """

    def __init__(
        self,
        token: str = REST_TOKEN,
        *,
        envelope: bool = False,
        location_only: bool = False,
        ignore_filter: bool = False,
        gone_status: int = 404,
        hide_id: bool = False,
    ) -> None:
        super().__init__()
        self.token = token
        self.envelope = envelope
        self.location_only = location_only
        self.ignore_filter = ignore_filter
        self.gone_status = gone_status
        self.hide_id = hide_id
        self.users: dict[str, dict[str, Any]] = {}
        self.passwords: dict[str, str] = {}
        self._ids = itertools.count(1)

    @property
    def collection(self) -> str:
        return f"{self.url}/api/users"

    def usernames(self) -> set[str]:
        with self.lock:
            return {u["username"] for u in self.users.values()}

    def add(self, username: str) -> str:
        """A user made behind reclaim's back (a stranger); its id."""
        with self.lock:
            user_id = f"u{next(self._ids)}"
            self.users[user_id] = {"id": user_id, "username": username}
            return user_id

    def route(self, request: Request) -> Reply:  # noqa: PLR0911  (a router: a return per route)
        if request.bearer() != self.token:
            return Reply(401, {"error": "unauthorized", "message": "bad or missing token"})
        if request.path == "/api/users":
            if request.method == "POST":
                return self._create(request)
            if request.method == "GET":
                return self._list(request)
        match = re.fullmatch(r"/api/users/([^/]+)", request.path)
        if match is None:
            return Reply(404, {"error": "not_found", "message": f"no route {request.path}"})
        user = self.users.get(match.group(1))
        if user is None:
            return Reply(self.gone_status, {"error": "not_found", "message": "no such user"})
        if request.method == "GET":
            return Reply(200, user)
        if request.method == "DELETE":
            del self.users[user["id"]]
            return Reply(204)
        return Reply(405, {"error": "method_not_allowed"})

    def _create(self, request: Request) -> Reply:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("username"), str):
            return Reply(400, {"error": "invalid", "message": "username is required"})
        if body["username"] in self.usernames():
            return Reply(409, {"error": "conflict", "message": "username taken"})
        user_id = f"u{next(self._ids)}"
        password = body.pop("password", None)
        if isinstance(password, str):
            self.passwords[user_id] = password
        user = {**body, "id": user_id}
        self.users[user_id] = user
        location = {"Location": f"{self.collection}/{user_id}"}
        if self.hide_id:  # a create answer a backend cannot read the id from
            return Reply(201, {"ok": True})
        if self.location_only:
            return Reply(201, None, location)
        return Reply(201, {"data": user} if self.envelope else user, location)

    def _list(self, request: Request) -> Reply:
        found = list(self.users.values())
        if not self.ignore_filter:
            for key, values in request.query.items():
                found = [u for u in found if str(u.get(key)) == values[0]]
        return Reply(200, {"items": found} if self.envelope else found)


# --- SCIM 2.0 --------------------------------------------------------------------------------

_FILTER: Final = re.compile(r'\s*userName\s+(eq|sw|co)\s+("(?:[^"\\]|\\.)*")\s*', re.IGNORECASE)


class ScimServer(StandIn):
    """A SCIM 2.0 service provider at ``/scim/v2`` (RFC 7644), users only.

    Bearer auth; ``POST /Users`` (``application/scim+json``, core schema, unique ``userName``
    compared case-insensitively, 409 ``uniqueness`` otherwise) answers 201 with ``Location``;
    ``GET``/``DELETE /Users/{id}`` (204, then 404 for every operation, section 3.6); ``GET
    /Users?filter=userName eq|sw|co "..."`` with ``startIndex``/``count`` paging (at most
    ``page_size`` a page; ``operators`` limits the filter operators it supports, as many
    providers support only ``eq``). Errors carry the SCIM error schema, ``status`` as a string.
    """

    def __init__(
        self,
        token: str = SCIM_TOKEN,
        *,
        page_size: int = 50,
        operators: tuple[str, ...] = ("eq", "sw", "co"),
    ) -> None:
        super().__init__()
        self.token = token
        self.page_size = page_size
        self.operators = operators
        self.users: dict[str, dict[str, Any]] = {}
        self.passwords: dict[str, str] = {}
        self.created_bodies: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"{self.url}/scim/v2"

    def user_names(self) -> set[str]:
        with self.lock:
            return {u["userName"] for u in self.users.values()}

    def add(self, user_name: str) -> str:
        """A user provisioned behind reclaim's back; its id."""
        with self.lock:
            user_id = str(uuid.uuid4())
            self.users[user_id] = self._resource(user_id, {"userName": user_name})
            return user_id

    def _resource(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        resource = {k: v for k, v in body.items() if k != "password"}  # writeOnly, never returned
        resource.update(
            id=user_id,
            meta={"resourceType": "User", "location": f"{self.base_url}/Users/{user_id}"},
        )
        resource.setdefault("schemas", [SCIM_USER])
        return resource

    @staticmethod
    def _error(status: int, detail: str, scim_type: str | None = None) -> Reply:
        body: dict[str, Any] = {"schemas": [SCIM_ERROR], "status": str(status), "detail": detail}
        if scim_type:
            body["scimType"] = scim_type
        return Reply(status, body, content_type=SCIM_JSON)

    def route(self, request: Request) -> Reply:  # noqa: PLR0911  (a router: a return per route)
        if request.bearer() != self.token:
            return self._error(401, "Authorization failure")
        if request.path == "/scim/v2/Users":
            if request.method == "POST":
                return self._create(request)
            if request.method == "GET":
                return self._query(request)
        match = re.fullmatch(r"/scim/v2/Users/([^/]+)", request.path)
        if match is None:
            return self._error(404, f"no endpoint {request.path}")
        user = self.users.get(match.group(1))
        if user is None:
            return self._error(404, f"Resource {match.group(1)} not found")
        if request.method == "GET":
            return Reply(200, user, content_type=SCIM_JSON)
        if request.method == "DELETE":
            del self.users[user["id"]]
            return Reply(204)
        return self._error(405, "method not allowed")

    def _create(self, request: Request) -> Reply:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type not in (SCIM_JSON, "application/json"):
            return self._error(415, f"unsupported media type {content_type!r}")
        body = request.json()
        if not isinstance(body, dict) or SCIM_USER not in (body.get("schemas") or []):
            return self._error(400, "the core User schema is required", "invalidValue")
        user_name = body.get("userName")
        if not isinstance(user_name, str) or not user_name:
            return self._error(400, "userName is required", "invalidValue")
        if user_name.casefold() in {n.casefold() for n in self.user_names()}:
            return self._error(409, f"userName {user_name} is taken", "uniqueness")
        self.created_bodies.append(body)
        user_id = str(uuid.uuid4())
        if isinstance(body.get("password"), str):
            self.passwords[user_id] = body["password"]
        user = self._resource(user_id, body)
        self.users[user_id] = user
        location = {"Location": user["meta"]["location"]}
        return Reply(201, user, location, content_type=SCIM_JSON)

    def _query(self, request: Request) -> Reply:
        found = list(self.users.values())
        expression = request.arg("filter")
        if expression is not None:
            match = _FILTER.fullmatch(expression)
            if match is None or match.group(1).lower() not in self.operators:
                return self._error(400, f"unsupported filter {expression!r}", "invalidFilter")
            op, value = match.group(1).lower(), str(json.loads(match.group(2))).casefold()
            found = [u for u in found if _compare(op, str(u["userName"]).casefold(), value)]
        found.sort(key=lambda u: str(u["id"]))
        start = max(int(request.arg("startIndex") or 1), 1)
        count = min(int(request.arg("count") or self.page_size), self.page_size)
        page = found[start - 1 : start - 1 + count]
        body = {
            "schemas": [SCIM_LIST],
            "totalResults": len(found),
            "startIndex": start,
            "itemsPerPage": len(page),
            "Resources": page,
        }
        return Reply(200, body, content_type=SCIM_JSON)


def _compare(op: str, name: str, value: str) -> bool:
    if op == "eq":
        return name == value
    return name.startswith(value) if op == "sw" else value in name

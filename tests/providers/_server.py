"""The HTTP server every stand-in of this package is built on.

A stand-in is a threaded HTTP server on 127.0.0.1 that keeps its provider's state in memory:
:meth:`_Listener.down` stops listening (clients get "connection refused", as from a provider
that went away) and :meth:`_Listener.up` listens again on the same port with the same state.
HTTP/1.0, one request per connection: a stand-in that goes down has no connection left open
that would still answer.

Two families were written for different suites and keep their own request/reply model (their
tests use each one's features), on the one listener:

- :class:`JsonStandIn` (accounts, OAuth, OpenFGA): :meth:`JsonStandIn.route` answers a
  :class:`JsonRequest` with a :class:`JsonReply` whose body is a JSON value; errors are injected
  with :meth:`JsonStandIn.inject` / :meth:`JsonStandIn.throttle`, and every request and answer
  is kept (``requests``, ``calls``, ``injected``, ``answered``).
- :class:`RawStandIn` (mail.tm, mailsac, Twilio, sms-activate): :meth:`RawStandIn.handle`
  answers a :class:`RawRequest` with a :class:`RawReply` of bytes (built with
  :func:`json_reply`, :func:`text_reply`, :func:`empty_reply`); errors are injected with
  :meth:`RawStandIn.fail_next`, and ``seen`` lists every request.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import json
import threading
from collections.abc import Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

__all__ = [
    "JsonReply",
    "JsonRequest",
    "JsonStandIn",
    "RawReply",
    "RawRequest",
    "RawStandIn",
    "empty_reply",
    "json_reply",
    "now_iso",
    "text_reply",
]


# --- the listener both families share ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Request:
    """A request as the listener reads it; each family's request adds its own helpers."""

    method: str
    path: str  # percent-decoded
    raw_path: str  # as sent
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


class _Listener:
    """Start, stop, go down and come up again on the same port; answer through :meth:`answer`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether it is listening."""
        return self._server is not None

    def start(self) -> Self:
        """Listen (on a free port the first time, on the same port afterwards)."""
        if self._server is not None:
            return self
        server = _Server(self.port, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"standin-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; the state is kept."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

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

    def answer(self, request: _Request) -> tuple[int, Mapping[str, str], bytes]:
        """Status, headers and body that answer one request."""
        raise NotImplementedError


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, listener: _Listener) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.listener = listener


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = _Request(
            self.command,
            unquote(parts.path),
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            self.headers,
            body,
        )
        listener = cast("_Server", self.server).listener
        try:
            status, headers, payload = listener.answer(request)
        except Exception as exc:  # a bug in a stand-in: say so instead of hanging the client
            status, headers = 500, {"Content-Type": "application/json"}
            payload = json.dumps({"error": "stand_in_bug", "message": repr(exc)}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the stand-in's state, not its log."""


# --- JSON stand-ins: route() answers a JSON value; inject() and throttle() ---------------------


@dataclasses.dataclass(frozen=True)
class JsonRequest(_Request):
    """One request as a :class:`JsonStandIn` sees it."""

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
class JsonReply:
    """What a :class:`JsonStandIn` answers: a status, a JSON body (or none), headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"


class JsonStandIn(_Listener):
    """A stand-in whose subclasses implement :meth:`route`. Every request is kept in
    :attr:`requests`. :meth:`inject` and :meth:`throttle` make it answer the next requests with
    an error; :attr:`injected` tells which requests got one, :attr:`answered` the status of
    every answer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[JsonRequest] = []
        self.injected: list[tuple[str, str, int]] = []
        self.answered: list[tuple[str, str, int]] = []
        self._inject: list[tuple[str | None, JsonReply]] = []

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
            self._inject.extend([(method, JsonReply(status, body, dict(headers or {})))] * count)

    def heal(self) -> None:
        """Drop the errors still waiting to be answered: the provider has recovered."""
        with self.lock:
            self._inject.clear()

    def throttle(self, count: int, retry_after: str | None = "0", status: int = 429) -> None:
        """Answer the next ``count`` requests with ``status`` (429, or GitHub's 403) and this
        ``Retry-After`` (None: no header)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.inject(count, status, {"message": "slow down"}, headers)

    def route(self, request: JsonRequest) -> JsonReply:
        """Answer one request (under :attr:`lock`)."""
        raise NotImplementedError

    def dispatch(self, request: JsonRequest) -> JsonReply:
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

    def answer(self, request: _Request) -> tuple[int, Mapping[str, str], bytes]:
        """:meth:`dispatch` the request, and write the reply's body as JSON."""
        reply = self.dispatch(JsonRequest(**vars(request)))
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        sent = dict(reply.headers)
        if payload:
            sent["Content-Type"] = reply.content_type
        return reply.status, sent, payload


# --- raw stand-ins: handle() answers bytes; fail_next() ----------------------------------------


@dataclasses.dataclass(frozen=True)
class RawRequest(_Request):
    """One request as a :class:`RawStandIn` sees it."""

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query (or form) parameter."""
        values = self.query.get(name) or self.form().get(name)
        return values[0] if values else default

    def form(self) -> dict[str, list[str]]:
        """The body as a form (``application/x-www-form-urlencoded``)."""
        if "form-urlencoded" not in (self.headers.get("Content-Type") or ""):
            return {}
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclasses.dataclass(frozen=True)
class RawReply:
    """What a :class:`RawStandIn` answers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


def json_reply(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> RawReply:
    """A JSON answer."""
    return RawReply(
        status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def text_reply(status: int, text: str, content_type: str = "text/plain") -> RawReply:
    """A text answer."""
    return RawReply(status, text.encode(), {"Content-Type": f"{content_type}; charset=utf-8"})


def empty_reply(status: int = 204) -> RawReply:
    """An answer without a body."""
    return RawReply(status)


def now_iso() -> str:
    """The time now, as the providers write it (ISO 8601, UTC, with microseconds so that
    messages received in the same second keep their order)."""
    return datetime.datetime.now(datetime.UTC).isoformat()


class RawStandIn(_Listener):
    """A stand-in whose subclasses implement :meth:`handle`.

    :meth:`fail_next` makes the next requests fail (429 by default) before any routing.
    """

    def __init__(self) -> None:
        super().__init__()
        self._failures: collections.deque[tuple[RawReply, str]] = collections.deque()
        #: (method, path) of every request received, in order.
        self.seen: list[tuple[str, str]] = []
        #: How many answers were injected by :meth:`fail_next`.
        self.injected = 0

    def fail_next(
        self,
        count: int,
        status: int = 429,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        only: str = "",
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``body`` as JSON).

        A 429 gets ``Retry-After: 0`` unless ``headers`` say otherwise. With ``only`` (like
        ``"DELETE /accounts/"``), only requests whose method and path start so are failed.
        """
        if status == 429 and headers is None:
            headers = {"Retry-After": "0"}
        reply = json_reply(status, body if body is not None else {"status": status}, headers)
        with self.lock:
            self._failures.extend([(reply, only)] * count)

    def clear_failures(self) -> None:
        """Forget answers :meth:`fail_next` had queued."""
        with self.lock:
            self._failures.clear()

    def dispatch(self, request: RawRequest) -> RawReply:
        """Route one request (under the lock: a stand-in's state changes atomically)."""
        with self.lock:
            self.seen.append((request.method, request.path))
            if self._failures:
                reply, only = self._failures[0]
                if f"{request.method} {request.path}".startswith(only):
                    self._failures.popleft()
                    self.injected += 1
                    return reply
            return self.handle(request)

    def handle(self, request: RawRequest) -> RawReply:
        """Answer one request; each stand-in implements its provider's protocol here."""
        raise NotImplementedError

    def answer(self, request: _Request) -> tuple[int, Mapping[str, str], bytes]:
        """:meth:`dispatch` the request."""
        reply = self.dispatch(RawRequest(**vars(request)))
        return reply.status, reply.headers, reply.body

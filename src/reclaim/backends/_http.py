"""HTTP for the REST backends: one blocking operation on one resource (``Call``).

``reclaim.backends.accounts``, ``oauth`` and ``openfga`` make a handful of calls per acquire or
release; each operation opens a ``Call``, which asks a rate-limiting provider again after the
wait it names, turns every failure into the backend's own error naming the resource, and
redacts the record's secrets from the message (I7). ``_httpflow`` (the e-mail and phone
backends) shares the driver guard and the ``Retry-After`` parser defined here.

httpx is imported when installed; without it this module (and every backend using it) still
imports, and ``need_httpx`` raises ``MissingExtraError`` when a backend is used.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Container, Mapping
from datetime import UTC
from typing import Any, Final
from urllib.parse import urlsplit

from reclaim.backends import (
    AcquireError,
    BackendError,
    NotCreatedError,
    Record,
    raise_backend_error,
    redact_text,
    redact_url,
    require_extra,
)

_NO_HTTPX: ImportError | None = None
try:
    import httpx
except ImportError as _exc:  # the `http` extra is missing: the module imports, backends refuse
    _NO_HTTPX = _exc

#: Whether httpx (the `http` extra) is installed.
HAS_HTTPX: Final = _NO_HTTPX is None

#: A provider answering 429 (for ``Call`` also 403/503 with Retry-After, or with its rate limit
#: used up, as GitHub does) is asked again, this many times in all (``_httpflow`` too),
RATE_LIMIT_TRIES: Final = 5
#: ``Call`` waiting what it asks for, never longer than this (without a hint: 0.5 s, 1 s, 2 s,
#: 4 s).
MAX_RETRY_AFTER: Final = 30.0
#: Answers to a create request that mean the server made nothing: bad request, credentials
#: refused, no such collection, method or media type, already exists (somebody else's: never
#: released), invalid. A 5xx, a timeout or a reset after the request was sent are not proof.
NOT_MADE: Final = frozenset({400, 401, 403, 404, 405, 409, 415, 422})


def never_sent(exc: BaseException) -> bool:
    """Whether an httpx error proves that the request was never sent: no connection could be
    opened (refused, unknown host, TLS failure, connect timeout), or no transport for the URL."""
    return HAS_HTTPX and isinstance(
        exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.UnsupportedProtocol
    )


def need_httpx(kind: str) -> None:
    """Raise ``MissingExtraError`` for backend ``kind`` when httpx is not installed."""
    require_extra(_NO_HTTPX is None, kind, "http", "httpx")


def retry_after_seconds(value: str) -> float | None:
    """The wait a ``Retry-After`` value names, in seconds (negative for a date in the past), or
    None when it is neither a number nor an HTTP-date (RFC 9110 section 10.2.3)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": an HTTP-date is always UTC
            when = when.replace(tzinfo=UTC)
        return when.timestamp() - time.time()
    return seconds if math.isfinite(seconds) else None


def _pause(seconds: float) -> None:
    """Wait before asking a rate-limiting provider again (tests replace it to see the waits)."""
    time.sleep(seconds)


class Call:
    """The HTTP calls of one operation: retries on rate limits, clear errors, no secret shown."""

    def __init__(
        self,
        kind: str,
        resource: str,
        record: Record,
        secret_fields: frozenset[str],
        error: type[BackendError],
        *,
        headers: Mapping[str, str],
        timeout: float,
    ) -> None:
        need_httpx(kind)
        self.kind, self.resource, self.record = kind, resource, record
        self.secret_fields, self.error = secret_fields, error
        self.client = httpx.Client(headers=dict(headers), timeout=timeout)

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.close()

    def fail(self, message: str, error: type[BackendError] | None = None) -> BackendError:
        """An error of this operation's kind (or ``error``), naming the resource, with secrets
        redacted."""
        text = redact_text(message, self.record, self.secret_fields)
        return (error or self.error)(
            f"{self.kind} {self.resource!r}: {text}", kind=self.kind, resource=self.resource
        )

    def _not_created(self, proven: bool) -> type[BackendError]:
        """NotCreatedError when nothing was ``proven`` to be made by an acquire's call."""
        return NotCreatedError if proven and issubclass(self.error, AcquireError) else self.error

    def send(
        self,
        method: str,
        url: str,
        *,
        ok: Container[int],
        gone: Container[int] = (),
        is_gone: Callable[[httpx.Response], bool] | None = None,
        creates: bool = False,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """The answer when its status is in ``ok``; None when it is in ``gone`` (and
        ``is_gone`` agrees); an error otherwise.

        ``creates`` marks the request that makes an acquire's resource, sent before anything
        else was made: its failure is a :class:`~reclaim.NotCreatedError` when it proves that
        nothing was made (the request was never sent, or every answer was a rate limit and the
        last one a definite refusal, ``NOT_MADE``), an ``AcquireError`` otherwise.
        """
        shown = show_url(url)
        refused = creates  # every answer so far refused the request, or there was none
        for attempt in range(1, RATE_LIMIT_TRIES + 1):
            try:
                response = self.client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                raise_backend_error(
                    self._not_created(refused and never_sent(exc)),
                    self.kind,
                    self.record,
                    f"{method} {shown}",
                    exc,
                    reason=_unreachable,
                    secret_fields=self.secret_fields,
                )
            wait = _retry_after(response, attempt)
            if wait is None or attempt == RATE_LIMIT_TRIES:
                break
            # 429 and 403 (rate limits) refuse the request; a 503 may have half-done it.
            refused = refused and response.status_code in (403, 429)
            _pause(wait)
        status = response.status_code
        if status in ok:
            return response
        if status in gone and (is_gone is None or is_gone(response)):
            return None
        detail = f"{_provider_error(response)}; {_advice(status)}"
        raise self.fail(
            f"{method} {shown} answered HTTP {status}{detail}",
            self._not_created(refused and status in NOT_MADE),
        )


def _unreachable(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}; is the server up and is the URL right?"


def _retry_after(response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before asking again, or None when the answer is not "slow down"."""
    status, headers = response.status_code, response.headers
    header = headers.get("retry-after")
    reset = headers.get("x-ratelimit-reset", "")
    used_up = headers.get("x-ratelimit-remaining") == "0" and reset.isdigit()
    if status != 429 and not (status in (403, 503) and (header or used_up)):
        return None
    seconds: float | None = None
    if header is not None:
        seconds = retry_after_seconds(header)
    elif used_up:
        seconds = float(reset) - time.time()
    if seconds is None:
        seconds = 0.5 * 2 ** (attempt - 1)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _provider_error(response: httpx.Response) -> str:
    """The provider's own error code and message, short: `` (uniqueness: userName taken)``."""
    try:
        data = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200]
        return f" ({text})" if text else ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if not isinstance(data, dict):
        return ""
    codes = ("scimType", "error", "code", "errorCode")
    messages = ("error_description", "detail", "message", "errorMessage")
    code = next((str(data[k]) for k in codes if data.get(k)), "")
    message = next((str(data[k]) for k in messages if data.get(k)), "")
    found = ": ".join(p for p in (code, message) if p)
    return f" ({found[:300]})" if found else ""


def _advice(status: int) -> str:
    if status in (401, 403):
        return "the credentials were refused: check the token or client credentials it was given"
    if status == 409:
        return "it exists already, and reclaim never adopts what it did not create"
    if status == 429:
        return f"the provider still asked to slow down after {RATE_LIMIT_TRIES} tries"
    if status >= 500:
        return "the provider failed; it may work again later"
    return "check the URL and what the backend was given"


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` for no JSON, or JSON that is not an object."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def show_url(url: str) -> str:
    """A URL for messages: without user info and query (which may hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def check_url(url: str, what: str) -> str:
    """``url`` when it is an http(s) URL with a host; ValueError naming ``what`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{what} {redact_url(url)!r} must be an http:// or https:// URL with a host"
        )
    return url

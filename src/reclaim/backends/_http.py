"""HTTP for reclaim's HTTP backends: each conversation with a provider written once, for sync
and async, on one engine.

A conversation is a generator (a ``Flow``) that yields what it wants done, a ``Request`` to send
or a ``Pause`` to sleep, and receives each response. One engine (``_engine``) stands between
every flow and the network: it keeps below a provider's documented rate (``RateLimiter``), asks
a rate-limiting provider again after the wait it names (``_retry_after``, the one retry policy),
and knows whether anything may have been made yet, so that a failed acquire is a
:class:`~reclaim.NotCreatedError` only when nothing was (``_Progress``). Two thin drivers run it:
``Context.run`` over ``httpx.Client``, ``Context.arun`` over ``httpx.AsyncClient``. Every failure
becomes the backend's own error in one place (``Context.failure``): it names the resource, says
what happened (with the provider's own code and text, ``provider_error``) and what to do, and
the record's secrets are redacted from it (I7).

On top of the engine, ``FlowBackend`` writes acquire/aacquire/release/arelease/exists once for a
backend made of flows, and ``FlowValue`` gives the flows of a value (a mailbox's messages, a
phone's code) their sync and async faces.

httpx is imported when installed; without it this module (and every backend using it) still
imports, and ``need_httpx`` raises ``MissingExtraError`` when a backend is used. The async
library is imported only by the async driver (the watchdog must not load it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.utils
import math
import os
import re
import threading
import time
from collections.abc import Callable, Container, Generator, Mapping
from datetime import UTC
from typing import Any, ClassVar, Final, Generic, NoReturn, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    NotCreatedError,
    Record,
    ReleaseError,
    backend_error,
    redact_url,
    require_extra,
    split_url,
)

_NO_HTTPX: ImportError | None = None
try:
    import httpx
except ImportError as _exc:  # the `http` extra is missing: the module imports, backends refuse
    _NO_HTTPX = _exc

T = TypeVar("T")
ValueT = TypeVar("ValueT")

#: Whether httpx (the `http` extra) is installed.
HAS_HTTPX: Final = _NO_HTTPX is None

TIMEOUT: Final = 15.0  # seconds per HTTP request, unless the record says otherwise
PAGES: Final = 20  # bound on pages read from a paginated list

#: A provider answering 429 (or 403/503 with ``Retry-After``, or with its rate limit used up, as
#: GitHub does) is asked again, this many times in all.
RATE_LIMIT_TRIES: Final = 5
#: The longest wait for one ``Retry-After``; without a hint the waits are 0.5 s, 1 s, 2 s, 4 s.
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


def need_httpx(kind: str, extra: str = "http") -> None:
    """Raise ``MissingExtraError`` for backend ``kind`` when httpx is not installed."""
    require_extra(_NO_HTTPX is None, kind, extra, "httpx")


# --- what a flow yields ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """A request a flow wants made; the driver sends its response back into the flow.

    What may hold a credential (headers, bodies, query) is left out of ``repr`` (I7).
    """

    method: str
    url: str
    #: What the request is, for messages ("DELETE /accounts/{id}"); never holds a secret. By
    #: default the method and the URL without user info and query.
    what: str = ""
    params: Mapping[str, str] | None = dataclasses.field(default=None, repr=False)
    json: Any = dataclasses.field(default=None, repr=False)
    #: A form body (``application/x-www-form-urlencoded``).
    data: Mapping[str, str] | None = dataclasses.field(default=None, repr=False)
    #: A raw body (with its own ``Content-Type`` header).
    content: bytes | None = dataclasses.field(default=None, repr=False)
    headers: Mapping[str, str] | None = dataclasses.field(default=None, repr=False)
    #: Whether the request may make something (the default). False for a read or a login: an
    #: acquire that fails before a request that creates was answered made nothing.
    creates: bool = True

    @property
    def label(self) -> str:
        """The request for messages: :attr:`what`, or its method and shown URL."""
        return self.what or f"{self.method} {show_url(self.url)}"

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` besides method and URL."""
        return {
            "params": self.params,
            "json": self.json,
            "data": self.data,
            "content": self.content,
            "headers": self.headers,
        }


@dataclasses.dataclass(frozen=True)
class Pause:
    """A wait a flow asks for (polling), slept by the driver."""

    seconds: float


Flow = Generator[Request | Pause, Any, T]


def request(req: Request) -> Flow[httpx.Response]:
    """Send ``req``; its response, whatever the status."""
    response = yield req
    return cast("httpx.Response", response)


def send_or_gone(
    req: Request,
    *ok: int,
    gone: Container[int] = (),
    is_gone: Callable[[httpx.Response], bool] | None = None,
    proof: bool = False,
) -> Flow[httpx.Response | None]:
    """The response to ``req`` when its status is one of ``ok`` (200 by default); None when it
    is in ``gone`` (and ``is_gone`` agrees); an error otherwise: ``HttpError``, or with
    ``proof`` (an acquire's first request that creates) ``NothingMade`` for a definite refusal
    (see :func:`refused`)."""
    response = yield from request(req)
    status = response.status_code
    if status in (ok or (200,)):
        return response
    if status in gone and (is_gone is None or is_gone(response)):
        return None
    raise refused(req.label, response) if proof else HttpError(req.label, response)


def send(req: Request, *ok: int, proof: bool = False) -> Flow[httpx.Response]:
    """Like :func:`send_or_gone` with nothing counting as gone: the response, or an error."""
    response = yield from send_or_gone(req, *ok, proof=proof)
    assert response is not None
    return response


def send_json(req: Request, *ok: int) -> Flow[Any]:
    """The JSON the provider answered to ``req`` (``ProtocolError`` for no JSON)."""
    response = yield from send(req, *ok)
    return parse_json(response, req.label)


def poll(
    look: Callable[[], Flow[T | None]],
    timeout: float,
    interval: float,
    missed: Callable[[], str],
) -> Flow[T]:
    """What ``look()`` finds, asked again every ``interval`` seconds; ``TimeoutError`` saying
    ``missed()`` when it found nothing for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = yield from look()
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(missed())
        yield Pause(min(interval, left))


# --- what goes wrong ------------------------------------------------------------------------


class HttpError(Exception):
    """The provider answered with a status the flow did not expect. The message names the
    request, the status, the provider's own error code and text, and what to do (``hint``, or
    the advice for that status)."""

    def __init__(self, what: str, response: httpx.Response, hint: str = "") -> None:
        self.what = what
        self.status = response.status_code
        self.code, self.detail = provider_error(response)
        self.hint = hint
        super().__init__(self.explain())

    def explain(self, hints: Mapping[int, str] | None = None) -> str:
        """The message, with the advice of ``hints`` (a provider's own, by status) when this
        error has no hint of its own."""
        tip = self.hint or (hints or {}).get(self.status) or advice(self.status)
        return f"{self.what} answered HTTP {self.status}{_shown(self.code, self.detail)}; {tip}"


class ProtocolError(Exception):
    """The provider answered something this backend does not understand."""


class NothingMade(Exception):
    """An acquire's failure, ``cause``, that proves nothing was made: ``Context.run`` raises
    :class:`~reclaim.NotCreatedError` for it. A flow raises it for a definite refusal of its
    create request (``refused``); the engine for a failure before any request that creates was
    answered, or of such a request that was never sent."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Unanswered(Exception):
    """A request that got no answer (no connection, a timeout, a reset): ``cause`` is httpx's
    error."""

    def __init__(self, what: str, cause: Exception) -> None:
        super().__init__(f"{what}: {type(cause).__name__}: {cause}")
        self.what = what
        self.cause = cause

    def explain(self, unreachable: str) -> str:
        cause, name = self.cause, type(self.cause).__name__
        if isinstance(cause, httpx.TimeoutException):
            return f"{self.what} got no answer in time ({name}: {cause})"
        if isinstance(cause, httpx.TransportError):
            return f"{self.what}: the server cannot be reached ({name}: {cause}); {unreachable}"
        return str(self)


def refused(what: str, response: httpx.Response, hint: str = "") -> Exception:
    """The error for an answer to a create request that is not a success: ``NothingMade`` when
    its status is a definite refusal (``NOT_MADE``: 400, 401, 403, 404, 409, 422...), the
    plain ``HttpError`` when something may have been made (a 5xx)."""
    error = HttpError(what, response, hint)
    return NothingMade(error) if response.status_code in NOT_MADE else error


#: Where providers put their error's code, and its text, most specific first: SCIM (scimType,
#: detail), OAuth (error, error_description), OpenFGA and Twilio (code, message), mail.tm's
#: Hydra (hydra:description, hydra:title), mailsac (error, message), RabbitMQ's management API
#: (error, reason), and the usual errorCode/errorMessage.
_CODES: Final = ("scimType", "error", "code", "errorCode")
_DETAILS: Final = (
    "hydra:description",
    "error_description",
    "detail",
    "message",
    "reason",
    "errorMessage",
    "hydra:title",
)


def provider_error(response: httpx.Response) -> tuple[str, str]:
    """The provider's own error code and text, short; "" for what it did not give.

    Alone, GitHub's ``message`` is the name of its error ("Bad credentials", "Validation
    Failed"): it is taken as the code.
    """
    try:
        body = response.json()
    except ValueError:
        return "", _short(response.text)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]  # {"error": {"code": ..., "message": ...}}
    if not isinstance(body, dict):
        return "", _short(str(body)) if body else ""
    code = next((str(body[k]) for k in _CODES if _scalar(body.get(k))), "")
    key = next((k for k in _DETAILS if body.get(k)), None)
    detail = _short(str(body[key])) if key is not None else ""
    if not code and key == "message":
        return detail, ""
    return _short(code), detail


def _scalar(value: object) -> bool:
    """Whether ``value`` can be an error code: a non-empty string, or a number."""
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _short(text: str) -> str:
    return " ".join(text.split())[:300]


def _shown(code: str, detail: str) -> str:
    """The provider's code and text in a message: `` (invalid_client: client authentication
    failed)``; a bare number as `` (provider code 20404): text``; text alone as ``: text``."""
    if code.isdigit():
        return f" (provider code {code})" + (f": {detail}" if detail else "")
    if code:
        return f" ({code}: {detail})" if detail else f" ({code})"
    return f": {detail}" if detail else ""


def advice(status: int) -> str:
    """What to do about an answer with this status."""
    if status in (401, 403):
        return "the credentials were refused: check the token or client credentials it was given"
    if status == 409:
        return "it exists already, and reclaim never adopts what it did not create"
    if status == 429:
        return f"the provider still asked to slow down after {RATE_LIMIT_TRIES} tries"
    if status >= 500:
        return "the provider failed; it may work again later"
    return "check the URL and what the backend was given"


def parse_json(response: httpx.Response, what: str) -> Any:
    """The answer's JSON; ``ProtocolError`` when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(f"{what} answered HTTP {response.status_code} without JSON") from None


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` for no JSON, or JSON that is not an object."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def expect(response: httpx.Response, what: str, *ok: int, hint: str = "") -> httpx.Response:
    """``response`` when its status is one of ``ok`` (200 by default); ``HttpError`` otherwise."""
    if response.status_code not in (ok or (200,)):
        raise HttpError(what, response, hint)
    return response


# --- rate limits --------------------------------------------------------------------------------


class RateLimiter:
    """At most ``rate`` requests in any ``per`` seconds, shared by every thread of the process.

    :meth:`reserve` books the next free slot and says how long to wait for it, so the same
    limiter serves ``time.sleep`` and ``asyncio.sleep``.
    """

    def __init__(self, rate: int, per: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.per = per
        self._clock = clock
        self._slots: collections.deque[float] = collections.deque(maxlen=rate)
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book a slot; return the seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            start = now
            if len(self._slots) == self.rate:
                start = max(now, self._slots[0] + self.per)
            self._slots.append(start)
            return start - now


_limiters: dict[str, RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(base_url: str, rate: tuple[int, float]) -> RateLimiter:
    """The process's limiter for one server (mail.tm counts per IP; we count per server)."""
    with _limiters_lock:
        limiter = _limiters.get(base_url)
        if limiter is None:
            limiter = _limiters[base_url] = RateLimiter(*rate)
        return limiter


def _retry_after(response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before asking again (``attempt``: the tries so far, from 0), or None
    when the answer is not "slow down".

    The one retry policy: 429 always; 403 and 503 when they say when to come back
    (``Retry-After``), or that the rate limit is used up (``x-ratelimit-remaining: 0`` with its
    reset time, GitHub). The wait is the one named (seconds or an HTTP date, RFC 9110 section
    10.2.3), at most ``MAX_RETRY_AFTER``; without one 0.5 s, 1 s, 2 s, 4 s.
    """
    status, headers = response.status_code, response.headers
    header = headers.get("retry-after")
    reset = headers.get("x-ratelimit-reset", "")
    used_up = headers.get("x-ratelimit-remaining") == "0" and reset.isdigit()
    if status != 429 and not (status in (403, 503) and (header or used_up)):
        return None
    seconds: float | None = None
    if header is not None:
        seconds = _retry_after_seconds(header)
    elif used_up:
        seconds = float(reset) - time.time()
    if seconds is None:
        seconds = 0.5 * 2**attempt
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _retry_after_seconds(value: str) -> float | None:
    """The wait a ``Retry-After`` value names, in seconds (negative for a date in the past), or
    None when it is neither a number nor an HTTP-date."""
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


# --- the engine ---------------------------------------------------------------------------------

#: What a flow may raise that is the provider's failure, not reclaim's bug: it is translated.
_TRANSLATED: Final = (HttpError, ProtocolError, ValueError)


class _Progress:
    """Whether anything may have been made yet, in one run of a flow (for ``NothingMade``)."""

    def __init__(self, owned: bool) -> None:
        #: A request that may create was answered, or was sent and got no answer; or what the
        #: flow acts on was owned before it started (a token the test was given).
        self.made = owned
        #: Such a request was asked again after an answer that may have half-done it (a 503
        #: with Retry-After): a refusal after it proves nothing.
        self.doubtful = False

    def failed(self, exc: Exception) -> None:
        """Raise ``NothingMade`` for the flow's ``exc`` when it proves that nothing was made;
        for a ``NothingMade`` the flow raised after a doubtful answer, its cause."""
        if isinstance(exc, NothingMade):
            if self.doubtful:
                raise exc.cause from None
            return
        if isinstance(exc, _TRANSLATED) and not (self.made or self.doubtful):
            raise NothingMade(exc) from exc

    def unanswered(self, exc: Exception, req: Request) -> NoReturn:
        """Raise the error for ``req``, which got no answer: ``NothingMade`` when nothing was
        made before it, and it makes nothing or was never sent."""
        error = _Unanswered(req.label, exc)
        if not (self.made or self.doubtful) and (not req.creates or never_sent(exc)):
            raise NothingMade(error) from exc
        self.made = self.made or req.creates
        raise error from exc


def _engine(
    flow: Flow[T], limiter: RateLimiter | None, owned: bool
) -> Generator[Request | float, Any, T]:
    """The flow's steps as a driver does them: a ``Request`` to send (the driver sends the
    response back, or throws httpx's error in) or seconds to sleep. Written once for both
    drivers; closing it closes the flow."""
    progress = _Progress(owned)
    try:
        reply: Any = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as stop:
                return cast("T", stop.value)
            except Exception as exc:
                progress.failed(exc)
                raise
            if isinstance(step, Pause):
                yield step.seconds
                reply = None
            else:
                reply = yield from _answer(step, limiter, progress)
    finally:
        flow.close()


def _answer(
    req: Request, limiter: RateLimiter | None, progress: _Progress
) -> Generator[Request | float, Any, httpx.Response]:
    """The response to ``req``: sent below the rate limit, asked again while the provider says
    to slow down (``_retry_after``)."""
    for attempt in range(RATE_LIMIT_TRIES):
        wait = limiter.reserve() if limiter is not None else 0.0
        if wait > 0:
            yield wait
        try:
            response: httpx.Response = yield req
        except httpx.HTTPError as exc:
            progress.unanswered(exc, req)
        again = _retry_after(response, attempt)
        if again is None or attempt + 1 == RATE_LIMIT_TRIES:
            break
        # 429 and 403 (rate limits) refuse the request; a 503 may have half-done it.
        progress.doubtful = progress.doubtful or (req.creates and response.status_code == 503)
        yield again
    progress.made = progress.made or req.creates
    return response


class _Steps(Generic[T]):
    """The engine, for a driver: :meth:`next` is the step to do, None once the flow is done
    (its value in :attr:`result`); the driver sets :attr:`reply` or :attr:`error` before the
    next step."""

    def __init__(self, flow: Flow[T], limiter: RateLimiter | None, owned: bool) -> None:
        self._engine = _engine(flow, limiter, owned)
        self.reply: httpx.Response | None = None
        self.error: httpx.HTTPError | None = None
        self.result: T

    def next(self) -> Request | float | None:
        try:
            if self.error is not None:
                step = self._engine.throw(self.error)
            else:
                step = self._engine.send(self.reply)
        except StopIteration as stop:
            self.result = cast("T", stop.value)
            return None
        self.reply = self.error = None
        return step

    def close(self) -> None:
        self._engine.close()


def _pause(seconds: float) -> None:
    """Every wait of the sync driver (tests replace it to see the waits)."""
    time.sleep(seconds)


async def _apause(seconds: float) -> None:
    """Every wait of the async driver, in the running async library (asyncio or trio)."""
    import anyio  # noqa: PLC0415  (httpx's own dependency; kept out of the watchdog's imports)

    await anyio.sleep(seconds)


def _drive(steps: _Steps[T], timeout: float) -> T:
    with httpx.Client(timeout=timeout) as client, contextlib.closing(steps):
        while (step := steps.next()) is not None:
            if not isinstance(step, Request):
                _pause(step)
                continue
            try:
                steps.reply = client.request(step.method, step.url, **step.options())
            except httpx.HTTPError as exc:
                steps.error = exc
        return steps.result


async def _adrive(steps: _Steps[T], timeout: float) -> T:
    async with httpx.AsyncClient(timeout=timeout) as client:
        with contextlib.closing(steps):
            while (step := steps.next()) is not None:
                if not isinstance(step, Request):
                    await _apause(step)
                    continue
                try:
                    steps.reply = await client.request(step.method, step.url, **step.options())
                except httpx.HTTPError as exc:
                    steps.error = exc
            return steps.result


# --- the one translation ---------------------------------------------------------------------

#: What a run of a flow translates into the backend's error.
_FAILURES: Final = (NothingMade, _Unanswered, *_TRANSLATED)


class Context:
    """Who is talking to the provider: for the rate limit, and for error messages and their
    redaction (I7). A provider with advice of its own subclasses it (``hints``,
    ``unreachable``, ``extra``)."""

    #: Advice by HTTP status, replacing the general one (``advice``).
    hints: ClassVar[Mapping[int, str]] = {}
    #: What to check when the server cannot be reached.
    unreachable: ClassVar[str] = "is the server up and is the URL right?"
    #: The extra to install when httpx is missing.
    extra: ClassVar[str] = "http"

    def __init__(
        self,
        backend: type[Backend[Any]],
        record: Mapping[str, Any],
        limiter: RateLimiter | None = None,
        *,
        where: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.record = record
        self.limiter = limiter
        #: Where it happened, for messages: by default the backend's description of the record.
        self.where = where
        #: Seconds per request: by default the record's ``timeout``, else ``TIMEOUT``.
        self.timeout = timeout or float(record.get("timeout", TIMEOUT))

    def explain(self, exc: BaseException) -> str:
        """What went wrong, in words, with what to do."""
        if isinstance(exc, HttpError):
            return exc.explain(self.hints)
        if isinstance(exc, _Unanswered):
            return exc.explain(self.unreachable)
        if isinstance(exc, ProtocolError):
            return str(exc)
        return f"{type(exc).__name__}: {exc}"

    def failure(self, error: type[BackendError], doing: str, exc: Exception) -> BackendError:
        """reclaim's error for ``exc``: "<kind> '<name>': could not <doing> at <where>: <what
        happened>", redacted (I7)."""
        if isinstance(exc, NothingMade):
            # NotCreatedError for an acquire's error; a release or a lookup keeps its own.
            error = NotCreatedError if issubclass(error, AcquireError) else error
            exc = exc.cause
        return backend_error(
            error,
            self.backend.kind,
            self.record,
            doing.removeprefix("could not "),
            exc,
            where=self.where or self.backend.describe(dict(self.record)),
            reason=self.explain,
            secret_fields=self.backend.secret_fields,
            style=self.backend.name_style,
        )

    def run(
        self, flow: Flow[T], error: type[BackendError], doing: str, *, owned: bool = False
    ) -> T:
        """The flow's result; ``error`` when it fails (for an ``AcquireError``, a
        :class:`~reclaim.NotCreatedError` when the failure proves that nothing was made; with
        ``owned``, what acquire owns existed before it, and only the flow can prove that).

        Raised ``from None``: the provider's own text may quote a secret; the message is
        redacted.
        """
        need_httpx(self.backend.kind, self.extra)
        try:
            return _drive(_Steps(flow, self.limiter, owned), self.timeout)
        except _FAILURES as exc:
            raise self.failure(error, doing, exc) from None

    async def arun(
        self, flow: Flow[T], error: type[BackendError], doing: str, *, owned: bool = False
    ) -> T:
        """Async twin of :meth:`run`."""
        need_httpx(self.backend.kind, self.extra)
        try:
            return await _adrive(_Steps(flow, self.limiter, owned), self.timeout)
        except _FAILURES as exc:
            raise self.failure(error, doing, exc) from None


# --- backends and values made of flows ------------------------------------------------------


class FlowBackend(Backend[ValueT]):
    """A backend whose operations are flows: acquire, aacquire, release, arelease and exists are
    written here once (as httpx's ``BaseClient`` serves ``Client`` and ``AsyncClient``). A
    provider supplies the hooks:

    - ``_context(record)``: the checks of the record that run before anything is sent (what
      reaches a URL, I7), and how to talk to the provider (its rate limiter);
    - ``_create_flow(record)`` and ``_acquired(record, result)``: what acquire sends, and the
      value and record it gives;
    - ``_release_flow(record)`` and ``_exists_flow(record)``.

    The guard (I8) is in front of every subclass: ``Backend.__init_subclass__`` wraps the
    release, arelease and exists a class defines, so it wraps these, and a record passes the
    guard before ``_context`` sees it.
    """

    #: What each operation could not do, for messages ("... could not be created at ...").
    _creating: ClassVar[str] = "be created"
    _releasing: ClassVar[str] = "be deleted"
    _looking: ClassVar[str] = "be looked up"

    #: Whether what acquire owns exists before it starts (a token the test was given): then no
    #: failure proves that acquire made nothing, but a ``NothingMade`` its flow raises.
    _given: bool = False

    @classmethod
    def _context(cls, record: Record) -> Context:
        return Context(cls, record)

    def _record_for(self, name: str) -> Record:
        """The record acquire works on: by default a fresh plan."""
        return self.plan(name)

    def _create_flow(self, record: Record) -> Flow[Any]:
        raise NotImplementedError

    def _acquired(self, record: Record, result: Any) -> tuple[ValueT, Record]:
        raise NotImplementedError

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        raise NotImplementedError

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        raise NotImplementedError

    def acquire(self, name: str) -> tuple[ValueT, Record]:
        record = self._record_for(name)
        context = self._context(record)
        flow = self._create_flow(record)
        result = context.run(flow, AcquireError, self._creating, owned=self._given)
        return self._acquired(record, result)

    async def aacquire(self, name: str) -> tuple[ValueT, Record]:
        record = self._record_for(name)
        context = self._context(record)
        flow = self._create_flow(record)
        result = await context.arun(flow, AcquireError, self._creating, owned=self._given)
        return self._acquired(record, result)

    @classmethod
    def release(cls, record: Record) -> None:
        cls._context(record).run(cls._release_flow(record), ReleaseError, cls._releasing)

    @classmethod
    async def arelease(cls, record: Record) -> None:
        await cls._context(record).arun(cls._release_flow(record), ReleaseError, cls._releasing)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return cls._context(record).run(cls._exists_flow(record), BackendError, cls._looking)


class FlowValue:
    """What a value that talks to its provider shares (a mailbox, a phone number): the context
    of its record, and the sync and async faces of each of its flows."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def _run(self, flow: Flow[T], doing: str) -> T:
        return self._context.run(flow, BackendError, doing)

    async def _arun(self, flow: Flow[T], doing: str) -> T:
        return await self._context.arun(flow, BackendError, doing)


# --- checking what reaches a URL ------------------------------------------------------------


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


def leftover_probe(
    backend: type[Backend[Any]], target: str, fields: tuple[str, str], env: str
) -> Record:
    """The record a listing of leftovers at ``target`` works with: in the first of ``fields``
    the API's base URL (``<family>+https://:TOKEN@host/path`` is ``https://host/path``), in the
    second its token (the URL's password, else the environment variable ``env``)."""
    given = split_url(target, kind=backend.kind, schemes=backend.url_schemes)
    host = f"[{given.host}]" if ":" in given.host else given.host
    netloc = f"{host}:{given.port}" if given.port else host
    base = f"{given.scheme.partition('+')[2]}://{netloc}{given.path}"
    return {
        "name": "rc_",
        "id": None,
        fields[0]: check_url(base.rstrip("/"), "target"),
        fields[1]: given.password or os.environ.get(env),
        "timeout": 10.0,
    }


def check_base_url(url: str, what: str) -> str:
    """``url`` as an http(s) base URL without query, fragment or trailing slash; ValueError
    naming ``what`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def checked(pattern: re.Pattern[str], value: object, what: str) -> str:
    """``value`` when it is a string ``pattern`` matches in full (what reaches a URL path is
    checked first, I7); ValueError naming ``what`` otherwise."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not valid (expected {pattern.pattern})")
    return value

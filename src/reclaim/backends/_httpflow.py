"""HTTP for the e-mail and phone backends: each conversation written once, for sync and async.

Each conversation with a provider is a generator (a ``Flow``) that yields the requests it wants
made (``Call``) or pauses (``Pause``) and receives the responses: the same protocol code serves
the synchronous API (``Context.run``) and the asynchronous one (``Context.arun``). Rate limits
(429) are handled by the drivers, below every conversation, after the wait ``Retry-After``
names; a process-wide ``RateLimiter`` per server keeps below a provider's documented rate.
Failures become the backend's own error, naming the resource, with the record's secrets
redacted (I7).

httpx is imported when installed; without it this module still imports and ``Context.run``
raises ``MissingExtraError``. asyncio is imported only by the async driver (the watchdog must
not load it).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from reclaim.backends import AcquireError, Backend, BackendError, NotCreatedError, backend_error
from reclaim.backends._http import (
    HAS_HTTPX,
    NOT_MADE,
    RATE_LIMIT_TRIES,
    need_httpx,
    never_sent,
    retry_after_seconds,
)

if HAS_HTTPX:
    import httpx

T = TypeVar("T")

TIMEOUT: Final = 15.0  # seconds per HTTP request
_MAX_RETRY_WAIT: Final = 10.0  # never wait longer than this for one Retry-After
PAGES: Final = 20  # bound on pages read from a paginated list

RETRY_ADVICE: Final = "check that the service is reachable and the credentials are valid"


@dataclasses.dataclass(frozen=True)
class Call:
    """A request a flow wants made; the driver sends its response back into the flow."""

    method: str
    url: str
    #: What the call is, for messages ("DELETE /accounts/{id}"); never holds a secret.
    what: str
    params: Mapping[str, str] | None = None
    json: Any = None
    #: A form body (``application/x-www-form-urlencoded``).
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    #: Whether the call may make something (the default). False for a read or a login: a flow
    #: that fails before a call that creates was sent made nothing (``NotCreatedError``).
    creates: bool = True

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` besides method and URL."""
        return {
            "params": self.params,
            "json": self.json,
            "data": self.data,
            "headers": self.headers,
        }


@dataclasses.dataclass(frozen=True)
class Pause:
    """A wait a flow asks for (polling), slept by the driver: ``time.sleep`` or
    ``asyncio.sleep``."""

    seconds: float


Flow = Generator[Call | Pause, Any, T]


def request(call: Call) -> Flow[httpx.Response]:
    response = yield call
    return cast("httpx.Response", response)


class HttpError(Exception):
    """The provider answered with an error status; the message names the call, the status and
    the provider's own error code and text."""

    def __init__(self, what: str, response: httpx.Response, hint: str = "") -> None:
        code, detail = _provider_error(response)
        text = f"{what} answered HTTP {response.status_code}"
        if code:
            text += f" (provider code {code})"
        if detail:
            text += f": {detail}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)
        self.status = response.status_code
        self.code = code


class ProtocolError(Exception):
    """The provider answered something this backend does not understand."""


class NothingMade(Exception):
    """An acquire's failure, ``cause``, that proves nothing was made: ``Context.run`` raises
    :class:`~reclaim.NotCreatedError` for it. A flow raises it for a definite refusal of its
    create call (``refused``); the drivers for a failure before any call that creates was
    sent, or of such a call that was never sent."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def refused(what: str, response: httpx.Response, hint: str = "") -> Exception:
    """The error for an answer to a create call that is not a success: ``NothingMade`` when
    its status is a definite refusal (``NOT_MADE``: 400, 401, 403, 404, 409, 422...), the
    plain ``HttpError`` when something may have been made (a 5xx)."""
    error = HttpError(what, response, hint)
    return NothingMade(error) if response.status_code in NOT_MADE else error


def _provider_error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", " ".join(response.text.split())[:300]
    if not isinstance(body, dict):
        return "", str(body)[:300]
    code = body.get("code") or (body.get("error") if body.get("message") else "")
    detail = (
        body.get("hydra:description")
        or body.get("detail")
        or body.get("message")
        or body.get("error")
        or body.get("hydra:title")
        or ""
    )
    return str(code or ""), " ".join(str(detail).split())[:300]


def parse_json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(f"{what} answered HTTP {response.status_code} without JSON") from None


def expect(response: httpx.Response, what: str, *ok: int, hint: str = "") -> httpx.Response:
    if response.status_code not in (ok or (200,)):
        raise HttpError(what, response, hint)
    return response


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


def _retry_after(response: httpx.Response, attempt: int) -> float:
    """How long to wait before asking again after a 429 (``attempt`` counts from 0)."""
    seconds = retry_after_seconds(response.headers.get("Retry-After", ""))
    if seconds is None:
        seconds = 0.5 * 2**attempt
    return min(max(seconds, 0.0), _MAX_RETRY_WAIT)


def _paced(flow: Flow[T], limiter: RateLimiter | None) -> Generator[Call | float, Any, T]:
    """The flow's requests, below the rate limit and with 429s asked again: yields a ``Call``
    to send (and receives its response) or the seconds to sleep. Written once for both
    drivers; closing it closes the flow."""
    try:
        reply: Any = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as stop:
                return cast("T", stop.value)
            if isinstance(step, Pause):
                yield step.seconds
                reply = None
                continue
            for attempt in range(RATE_LIMIT_TRIES):
                if limiter is not None:
                    yield limiter.reserve()
                reply = yield step
                if reply.status_code != 429 or attempt + 1 == RATE_LIMIT_TRIES:
                    break
                yield _retry_after(reply, attempt)
    finally:
        flow.close()


class _Progress:
    """Whether a call that may create something has been sent yet, in one run of a flow."""

    def __init__(self) -> None:
        self.made = False

    def sent(self, call: Call) -> None:
        self.made = self.made or call.creates

    def failed(self, exc: Exception, call: Call | None = None) -> None:
        """Raise ``NothingMade`` for ``exc`` (of the flow, or of sending ``call``) when it
        proves that nothing was made: no call that creates was sent before it, and ``call``
        does not create or was never sent. Otherwise note what ``call`` may have made."""
        translated = (HttpError, ProtocolError, ValueError, httpx.HTTPError)
        if isinstance(exc, NothingMade) or not isinstance(exc, translated):
            return
        if not self.made and (call is None or not call.creates or never_sent(exc)):
            raise NothingMade(exc) from exc
        if call is not None:
            self.sent(call)


def _drive(flow: Flow[T], timeout: float, limiter: RateLimiter | None) -> T:
    steps = _paced(flow, limiter)
    progress = _Progress()
    with httpx.Client(timeout=timeout) as client:
        try:
            reply: Any = None
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration as stop:
                    return cast("T", stop.value)
                except Exception as exc:
                    progress.failed(exc)
                    raise
                if isinstance(step, Call):
                    try:
                        reply = client.request(step.method, step.url, **step.options())
                    except Exception as exc:
                        progress.failed(exc, step)
                        raise
                    progress.sent(step)
                else:
                    time.sleep(step)
                    reply = None
        finally:
            steps.close()


async def _adrive(flow: Flow[T], timeout: float, limiter: RateLimiter | None) -> T:
    import asyncio  # noqa: PLC0415  (kept out of the watchdog's imports, as in Backend)

    steps = _paced(flow, limiter)
    progress = _Progress()
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            reply: Any = None
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration as stop:
                    return cast("T", stop.value)
                except Exception as exc:
                    progress.failed(exc)
                    raise
                if isinstance(step, Call):
                    try:
                        reply = await client.request(step.method, step.url, **step.options())
                    except Exception as exc:
                        progress.failed(exc, step)
                        raise
                    progress.sent(step)
                else:
                    await asyncio.sleep(step)
                    reply = None
        finally:
            steps.close()


def _explain(exc: Exception) -> str:
    if isinstance(exc, HttpError | ProtocolError):
        return str(exc)
    if HAS_HTTPX and isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__}: {exc})"
    if HAS_HTTPX and isinstance(exc, httpx.TransportError):
        return f"the server cannot be reached ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


class Context:
    """Who is talking to the provider, for error messages and their redaction (I7)."""

    def __init__(
        self,
        backend: type[Backend[Any]],
        record: Mapping[str, Any],
        limiter: RateLimiter | None = None,
    ) -> None:
        self.backend = backend
        self.record = record
        self.limiter = limiter
        self.timeout = float(record.get("timeout", TIMEOUT))

    def failure(
        self, error: type[BackendError], doing: str, exc: Exception, advice: str = ""
    ) -> BackendError:
        """reclaim's error for ``exc`` (the toolkit's one translation, redacted, I7)."""

        def reason(failed: BaseException) -> str:
            text = _explain(failed) if isinstance(failed, Exception) else str(failed)
            return f"{text}; {advice}" if advice else text

        return backend_error(
            error,
            self.backend.kind,
            self.record,
            doing.removeprefix("could not "),
            exc,
            where=self.backend.describe(dict(self.record)),
            reason=reason,
            secret_fields=self.backend.secret_fields,
            style=self.backend.name_style,
        )

    def run(self, flow: Flow[T], error: type[BackendError], doing: str, advice: str = "") -> T:
        """The flow's result; ``error`` when it fails: for an ``AcquireError``, a
        :class:`~reclaim.NotCreatedError` when the failure proves that nothing was made (see
        ``NothingMade``)."""
        need_httpx(self.backend.kind)
        try:
            return _drive(flow, self.timeout, self.limiter)
        except NothingMade as exc:
            raise self.failure(_not_created(error), doing, exc.cause, advice) from None
        except (HttpError, ProtocolError, ValueError, httpx.HTTPError) as exc:
            # `from None`: the provider's own text may quote a secret; the message is redacted.
            raise self.failure(error, doing, exc, advice) from None

    async def arun(
        self, flow: Flow[T], error: type[BackendError], doing: str, advice: str = ""
    ) -> T:
        need_httpx(self.backend.kind)
        try:
            return await _adrive(flow, self.timeout, self.limiter)
        except NothingMade as exc:
            raise self.failure(_not_created(error), doing, exc.cause, advice) from None
        except (HttpError, ProtocolError, ValueError, httpx.HTTPError) as exc:
            raise self.failure(error, doing, exc, advice) from None


def _not_created(error: type[BackendError]) -> type[BackendError]:
    """NotCreatedError for an acquire's ``error``; a release or a lookup keeps its own."""
    return NotCreatedError if issubclass(error, AcquireError) else error


# --- checking what reaches a URL ------------------------------------------------------------


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

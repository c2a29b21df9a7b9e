"""What every backend that talks to a server needs, written once: the driver guard, URLs with
their password split out and redacted, and the translation of driver errors into reclaim's.

A backend imports these from :mod:`reclaim.backends`, never from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, NoReturn
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from reclaim._errors import BackendError, MissingExtraError
from reclaim.backends._base import redact_text
from reclaim.backends._names import NAMES, NameStyle

__all__ = [
    "ServerURL",
    "backend_error",
    "raise_backend_error",
    "redact_url",
    "require_extra",
    "split_url",
    "translate_errors",
]

_REDACTED: Final = "***"

#: Where reclaim's own code lives: frames from anywhere else are dropped from driver tracebacks.
_OWN_SOURCE: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: Query parameters that carry a credential (``?password=...``): split out like a password.
SECRET_PARAMS: Final = frozenset({"password", "pass", "token", "secret", "access_token"})

_QUERY_SECRET: Final = re.compile(
    r"(?i)([?&](?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&#\s'\"]*"
)


def require_extra(present: bool, kind: str, extra: str, driver: str) -> None:
    """Raise :class:`~reclaim.MissingExtraError` for ``kind`` unless its driver is ``present``.

    Backend modules import their driver in a ``try`` and call this where the backend is used,
    so that the module itself always imports (the sweeper can then say what is missing).
    """
    if not present:
        raise MissingExtraError(kind, extra, driver)


# --- URLs ----------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with the password of its user part and secret query values replaced by ``***``.

    Never fails, also on a URL urllib cannot parse: it is used on what users typed.
    """
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + _REDACTED, url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    ends = [i for i in (rest.find(stop) for stop in "/?#") if i >= 0]
    end = min(ends, default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, sign, hostport = authority.rpartition("@")
    if not sign or ":" not in userinfo:
        return text
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:{_REDACTED}@{hostport}{tail}"


@dataclasses.dataclass(frozen=True)
class ServerURL:
    """A server's URL with its password taken out: ``public`` may be shown and journaled as it
    is; ``password`` goes into a record field the backend marks secret."""

    #: The URL without its password (nor a secret query parameter).
    public: str
    #: The password, decoded; "" when there is none (left out of ``repr``, I7).
    password: str = dataclasses.field(repr=False)
    scheme: str
    host: str
    port: int | None
    username: str
    path: str
    #: The query parameters that are left, in order.
    query: tuple[tuple[str, str], ...]

    def with_password(self) -> str:
        """The URL a driver connects to: ``public`` with the password put back."""
        if not self.password:
            return self.public
        from urllib.parse import quote  # noqa: PLC0415  (only when a password is set)

        user = quote(self.username, safe="")
        netloc = f"{user}:{quote(self.password, safe='')}@{self._hostport()}"
        return _unsplit(self.scheme, netloc, self.path, list(self.query))

    def _hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port is not None else host


def split_url(
    url: object,
    *,
    kind: str,
    schemes: Iterable[str],
    need_host: bool = True,
) -> ServerURL:
    """Parse a server URL given by a user, taking its password out (I7).

    Raises:
        TypeError: ``url`` is not a str.
        ValueError: not a URL of one of ``schemes``, or no host; the message quotes the URL
            with its password as ``***``.
    """
    if not isinstance(url, str):
        raise TypeError(f"{kind}: the URL must be a str, not {type(url).__name__}")
    allowed = tuple(schemes)
    try:
        parts = urlsplit(url)
        port = parts.port  # validates it
    except ValueError as exc:  # urllib's messages quote the port at most, never the password
        raise ValueError(f"{kind}: the URL {redact_url(url)!r} is not valid: {exc}") from None
    if parts.scheme.lower() not in allowed:
        wanted = ", ".join(f"{s}://" for s in allowed)
        raise ValueError(f"{kind}: the URL {redact_url(url)!r} must start with {wanted}")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = unquote(userinfo.partition(":")[0]) if at else ""
    password = unquote(parts.password) if at and parts.password else ""
    query: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in SECRET_PARAMS:
            password = password or value
        else:
            query.append((key, value))
    netloc = f"{userinfo.partition(':')[0]}@{hostport}" if user else hostport
    public = _unsplit(parts.scheme.lower(), netloc, parts.path, query)
    if need_host and not parts.hostname:
        raise ValueError(f"{kind}: the URL {public!r} names no host")
    return ServerURL(
        public=public,
        password=password,
        scheme=parts.scheme.lower(),
        host=parts.hostname or "",
        port=port,
        username=user,
        path=parts.path,
        query=tuple(query),
    )


def _unsplit(scheme: str, netloc: str, path: str, query: list[tuple[str, str]]) -> str:
    # urlunsplit drops the "//" of schemes it does not know (unix:/path); drivers need it.
    return f"{scheme}://{netloc}{path}" + (f"?{urlencode(query)}" if query else "")


# --- errors --------------------------------------------------------------------------------


def _default_reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def backend_error(
    error_type: type[BackendError],
    kind: str,
    record: Mapping[str, Any],
    doing: str,
    exc: BaseException,
    *,
    where: str = "",
    reason: Callable[[BaseException], str] | None = None,
    secret_fields: Iterable[str] = (),
    style: NameStyle = NAMES,
) -> BackendError:
    """reclaim's error for a driver's ``exc``: what failed, on which resource and server, why.

    The message is redacted of every secret field of the record (I7) and carries
    ``.kind``, ``.resource`` and ``.run_id``. Raise it ``from exc``.
    """
    name = record.get("name")
    what = f"{kind} {name!r}" if isinstance(name, str) and name else kind
    at = f" at {where}" if where else ""
    why = (reason or _default_reason)(exc)
    text = redact_text(f"{what}: could not {doing}{at}: {why}", record, secret_fields)
    _drop_foreign_frames(exc)
    parsed = style.parse(name)
    return error_type(
        text,
        kind=kind,
        resource=str(name) if name else "?",
        run_id=parsed.run_id if parsed is not None else None,
    )


def _drop_foreign_frames(exc: BaseException) -> None:
    """Keep only reclaim's own frames in the traceback of a driver's exception (and of what it
    was chained from). A printed traceback shows every frame's arguments (pytest's long
    format), and a driver's frames hold passwords in plain arguments (``psycopg.connect(...,
    password=...)``); reclaim's own frames hold them only in records whose repr is redacted."""
    import types  # noqa: PLC0415  (only on the error path)

    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        kept: list[types.TracebackType] = []
        tb = chain.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(_OWN_SOURCE):
                kept.append(tb)
            tb = tb.tb_next
        rebuilt: types.TracebackType | None = None
        for entry in reversed(kept):
            rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        chain.__traceback__ = rebuilt
        chain = chain.__cause__ or chain.__context__


def raise_backend_error(
    error_type: type[BackendError],
    kind: str,
    record: Mapping[str, Any],
    doing: str,
    exc: BaseException,
    **options: Any,
) -> NoReturn:
    """:func:`backend_error`, raised ``from exc``."""
    raise backend_error(error_type, kind, record, doing, exc, **options) from exc


@contextlib.contextmanager
def translate_errors(
    catch: type[BaseException] | tuple[type[BaseException], ...],
    error_type: type[BackendError],
    kind: str,
    record: Mapping[str, Any],
    doing: str,
    **options: Any,
) -> Iterator[None]:
    """Translate the driver's ``catch`` exceptions raised in the block into ``error_type``::

    with translate_errors(redis.RedisError, ReleaseError, cls.kind, record,
                          "delete the keys", where=url, secret_fields=cls.secret_fields):
        client.unlink(*keys)
    """
    try:
        yield
    except catch as exc:
        raise backend_error(error_type, kind, record, doing, exc, **options) from exc

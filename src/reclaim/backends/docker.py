"""Containers, networks and volumes on any engine that speaks the Docker Engine API (Docker,
podman): ``DockerContainer(image, command)`` gives a started container, ``DockerNetwork()`` a
network and ``DockerVolume()`` a volume, each removed the moment its owner dies, like every other
kind. ``TestcontainersContainer(container)`` makes a testcontainers-python container reclaim's, so
that ``TESTCONTAINERS_RYUK_DISABLED=true`` is safe.

**The name is the object's name (I1).** The object is created under reclaim's name
(``rc_<run>_<time>_<seq>``), with two labels, ``io.reclaim.name=<name>`` and
``io.reclaim.run=<run id>``, set by the same create call. The record (name, the engine's URL,
the labels) is journaled before that call, so a crash between the create and the journal write is
found again by name.

**Only our own (I8).** ``release`` and ``exists`` look the object up by its exact name and act
only when its ``io.reclaim.name`` label is that whole name: a user's container that happens to be
called ``rc_...`` without the label, or one called ``rc_..._backup`` with it, is refused with
:class:`~reclaim.ForeignNameError` (or never found) and never removed. The name itself passes the
toolkit's guard first, like every kind's. The object is then removed by its id, never by a name
that could have been given to another object meanwhile.

**Release.** A container is removed with force and with its anonymous volumes (``DELETE
/containers/<id>?force=1&v=1``). A network is first emptied by *disconnecting* the containers still
attached to it (whoever made them: reclaim never removes a container a record does not name), then
removed. A volume is removed last and never forced: a volume that a container still uses fails to
release, naming the container, and stays ``failed`` until a sweep finds it free (reclaim never
removes a container to free a volume). Not found (404) is "already gone", a success (I3).
``exists`` asks the engine.

**The engine** is ``base_url=``, else ``DOCKER_HOST``, else ``unix:///var/run/docker.sock``; it is
resolved when the backend is made and journaled in the record, so the watchdog and the sweeper
release on the same engine whatever their own environment says (I2). ``unix:///absolute/path``,
``tcp://host:port``, ``http://`` and ``https://`` URLs are accepted (``docker+unix://`` and
``docker+tcp://`` too). A URL with user info is refused (the SDK cannot use one, and nothing secret
is ever journaled); messages quote it with its password as ``***``. For ``tcp://`` engines with TLS,
``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` are read from the environment of the process that
talks to the engine (they are not journaled).

**Leftovers.** ``reclaim sweep --leftovers docker://`` (the engine of ``DOCKER_HOST``, or the
default socket), ``docker+unix:///path/to/podman.sock`` or ``docker+tcp://host:port`` lists, for
each kind, the objects that carry the ``io.reclaim.name`` label *and* whose whole name is that
label's value and a reclaim name. Plain ``unix://`` is Redis's scheme and ``tcp://`` says nothing
of what listens, hence the ``docker`` prefix.

**Acquire failures.** :class:`~reclaim.NotCreatedError` only where nothing was made, provably:
the engine did not answer before the create call; the SDK refused the options before sending
anything; the engine refused the create (an image that is not there: reclaim never pulls; a name
in use) and, asked right after, holds nothing of ours under that name. A container that was
created but failed to start is removed again before the error is raised (``NotCreatedError`` once
it is gone; ``AcquireError`` when even that failed: the sweeper finishes it).

Needs the ``docker`` extra (the docker SDK): ``pip install 'reclaim[docker]'``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, NoReturn

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    NotCreatedError,
    ReclaimName,
    Record,
    ReleaseError,
    backend_error,
    redact_url,
    refuse,
    require_extra,
    split_url,
)

try:
    import docker  # type: ignore[import-untyped]  # the docker SDK ships no type information
    import docker.constants  # type: ignore[import-untyped]
    import docker.errors  # type: ignore[import-untyped]
    import requests.exceptions
except ImportError:  # the extra is not installed: MissingExtraError when the backend is used
    _HAVE_DRIVER = False
else:
    _HAVE_DRIVER = True

__all__ = [
    "DEFAULT_ENGINE",
    "DOCKER_HOST_ENV",
    "LABEL_NAME",
    "LABEL_RUN",
    "DockerContainer",
    "DockerNetwork",
    "DockerVolume",
    "TestcontainersContainer",
    "engine_url",
]

_CONTAINER: Final = "docker.container"
_NETWORK: Final = "docker.network"
_VOLUME: Final = "docker.volume"

#: The environment variable that names the engine when no ``base_url`` is given.
DOCKER_HOST_ENV: Final = "DOCKER_HOST"

#: The engine when neither ``base_url`` nor ``DOCKER_HOST`` names one (the SDK's default).
DEFAULT_ENGINE: Final = "unix:///var/run/docker.sock"

#: The label that makes an object reclaim's: its value is the object's whole name.
LABEL_NAME: Final = "io.reclaim.name"

#: The label that names the run which made the object (its id, eight hex digits).
LABEL_RUN: Final = "io.reclaim.run"

#: The extra and driver named when the docker SDK is missing (``require_extra``).
_EXTRA: Final = ("docker", "the docker SDK")

#: URL schemes of an engine, as the SDK takes them.
_ENGINE_SCHEMES: Final = ("unix", "tcp", "http", "https")

#: What ``reclaim sweep --leftovers`` takes: ``docker://`` is the engine of DOCKER_HOST (or the
#: default socket); ``docker+unix://``/``docker+tcp://`` name one.
_LEFTOVER_SCHEMES: Final = ("docker", "docker+unix", "docker+tcp")
_PREFIX: Final = "docker+"

#: TLS settings of a tcp:// engine, read from the environment of the process that connects.
_TLS_ENV: Final = ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")

#: Seconds the SDK waits for one answer of the engine.
_TIMEOUT: Final = 60

#: Seconds a release waits for a removal the engine says is already in progress (409).
_REMOVAL_WAIT: Final = 10.0

#: Clients kept per process (see _client).
_MAX_CLIENTS: Final = 16

#: How podman words, in a 500, that an object went away while it looked at it.
_GONE_WORDS: Final = (
    "no such container",
    "no such volume",
    "no such network",
    "network not found",
    "does not exist in database",
)

#: Keyword arguments the backend sets itself and that ``**options`` may not override.
_RESERVED: Final = frozenset({"name", "labels", "detach"})


# --- the engine ----------------------------------------------------------------------------


def engine_url(base_url: str | None = None, *, kind: str = _CONTAINER) -> str:
    """The engine's URL as it is journaled: ``base_url``, else ``DOCKER_HOST``, else
    :data:`DEFAULT_ENGINE`, with a ``docker+`` prefix dropped and the scheme in lower case.

    Raises:
        ValueError: not an engine URL reclaim can journal (another scheme, user info, a unix
            socket path that is not absolute, no host); the message quotes it redacted.
    """
    if base_url is None:
        raw = os.environ.get(DOCKER_HOST_ENV, "").strip() or DEFAULT_ENGINE
        source = f" (from {DOCKER_HOST_ENV})" if os.environ.get(DOCKER_HOST_ENV, "").strip() else ""
    else:
        raw, source = base_url, ""
    if not isinstance(raw, str):
        raise TypeError(f"{kind}: base_url must be a str, not {type(raw).__name__}")
    text = raw.strip()
    if text.lower().startswith(_PREFIX):
        text = text[len(_PREFIX) :]
    server = split_url(text, kind=kind, schemes=_ENGINE_SCHEMES, need_host=False)
    shown = redact_url(raw)
    if server.username or server.password or "@" in text.partition("://")[2].split("/")[0]:
        raise ValueError(
            f"{kind}: the engine URL {shown!r}{source} carries user info; the docker SDK cannot"
            " use it and reclaim journals no secret: give the engine without it"
        )
    if server.scheme == "unix":
        if server.host or not server.path.startswith("/") or server.query:
            raise ValueError(
                f"{kind}: the engine URL {shown!r}{source} must name an absolute socket path,"
                " unix:///path/to/docker.sock (the watchdog may run in another directory)"
            )
    elif not server.host:
        raise ValueError(f"{kind}: the engine URL {shown!r}{source} names no host")
    return server.public


def _leftover_engine(target: str, kind: str) -> str:
    """The engine a ``reclaim sweep --leftovers`` URL names."""
    if not isinstance(target, str):
        raise TypeError(f"{kind}: the URL must be a str, not {type(target).__name__}")
    scheme, sep, rest = target.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _LEFTOVER_SCHEMES:
        wanted = ", ".join(f"{s}://" for s in _LEFTOVER_SCHEMES)
        raise ValueError(f"{kind}: the URL {redact_url(target)!r} must start with {wanted}")
    if scheme == "docker":
        if rest.strip("/"):
            raise ValueError(
                f"{kind}: docker:// names the engine of {DOCKER_HOST_ENV} (or the default"
                f" socket) and takes nothing after it, not {redact_url(target)!r}; use"
                " docker+unix:///path or docker+tcp://host:port for another engine"
            )
        return engine_url(None, kind=kind)
    return engine_url(target, kind=kind)


_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


def _client(engine: str) -> Any:
    """A docker SDK client for ``engine``, kept per process (and per pid: never shared with a
    forked child). Making one asks the engine ``/_ping``: it raises when the engine does not
    answer."""
    key = (os.getpid(), engine)
    with _clients_lock:
        client = _clients.get(key)
    if client is not None:
        return client
    env = {DOCKER_HOST_ENV: engine}
    if engine.startswith(("tcp://", "https://")):
        env.update({k: os.environ[k] for k in _TLS_ENV if os.environ.get(k)})
    client = docker.from_env(environment=env, timeout=_TIMEOUT, version=_api_version(env))
    with _clients_lock:
        raced = _clients.get(key)
        if raced is None:
            if len(_clients) >= _MAX_CLIENTS:
                _clients.pop(next(iter(_clients))).close()
            _clients[key] = client
    if raced is not None:  # another thread made one meanwhile: keep that one
        client.close()
        return raced
    return client


def _api_version(env: Mapping[str, str]) -> str:
    """The engine's API version, from the ``Api-Version`` header of its unversioned ``/_ping``
    (one cheap request; the SDK's own negotiation asks ``/version``, which podman takes about
    0.4 s to answer). ``"auto"`` when the header is missing."""
    engine = env[DOCKER_HOST_ENV]
    if engine.startswith("unix://"):
        _knock(engine.removeprefix("unix://"))
    probe = docker.from_env(
        environment=dict(env), timeout=_TIMEOUT, version=docker.constants.DEFAULT_DOCKER_API_VERSION
    )
    try:
        answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=_TIMEOUT)
        answer.raise_for_status()
        version = answer.headers.get("Api-Version")
    finally:
        probe.close()
    return str(version) if version else "auto"


def _knock(path: str) -> None:
    """Connect to the unix socket once, and close it: the SDK leaves its socket unclosed when
    the connection fails (a ResourceWarning in the caller's process)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(_TIMEOUT)
            probe.connect(path)
    except OSError as exc:
        raise requests.exceptions.ConnectionError(f"cannot connect to {path}: {exc}") from None


def _errors() -> tuple[type[BaseException], ...]:
    """What the SDK raises: its own errors, and requests' (which are OSErrors)."""
    return (docker.errors.DockerException, OSError)


def _unreachable(exc: BaseException) -> bool:
    """Did the engine fail to answer at all (as opposed to answering with an error)?"""
    if isinstance(exc, docker.errors.APIError):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return isinstance(exc, docker.errors.DockerException) and (
        "Error while fetching server API version" in str(exc)
    )


def _reason(exc: BaseException) -> str:
    """What an SDK error means for the user, with the advice that fits it."""
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        explanation = exc.explanation
        if isinstance(explanation, bytes):
            explanation = explanation.decode("utf-8", "replace")
        text = str(explanation or exc).strip().splitlines()
        said = f"the engine answered {status}: {text[0] if text else type(exc).__name__}"
        if isinstance(exc, docker.errors.ImageNotFound):
            said += "; reclaim never pulls: pull the image first (docker pull / podman pull)"
        return said
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if _unreachable(exc):
        return (
            f"cannot reach the engine ({type(exc).__name__}: {first}); is it up (dockerd, or"
            " `podman system service`)?"
        )
    return f"{type(exc).__name__}: {first}"


def _error(
    error_type: type[BackendError], kind: str, record: Mapping[str, Any], doing: str, exc: Any
) -> BackendError:
    return backend_error(
        error_type,
        kind,
        record,
        doing,
        exc,
        where=redact_url(str(record.get("engine") or "?")),
        reason=_reason,
    )


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, docker.errors.APIError):
        code = exc.status_code
        return int(code) if isinstance(code, int) else None
    return None


def _gone(exc: BaseException) -> bool:
    """Does the engine's error say the object is not there (404, or podman's 500 for an object
    removed between two of its own steps)?"""
    if isinstance(exc, docker.errors.NotFound):
        return True
    if isinstance(exc, docker.errors.APIError):
        text = str(exc.explanation or "").lower()
        return any(words in text for words in _GONE_WORDS)
    return False


@contextlib.contextmanager
def _unless_gone() -> Iterator[None]:
    """Already gone is a success (I3): the block's "not there" errors are swallowed."""
    try:
        yield
    except docker.errors.APIError as exc:
        if not _gone(exc):
            raise


def _labels(name: ReclaimName) -> dict[str, str]:
    return {LABEL_NAME: name.text, LABEL_RUN: name.run_id}


def _check_options(kind: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The user's own labels (kept, ours added); refuses what the backend sets itself."""
    reserved = sorted(_RESERVED & (set(options) - {"labels"}))
    if reserved:
        raise TypeError(
            f"{kind}: reclaim sets {', '.join(reserved)} itself (the object is called by"
            " reclaim's name); leave it out of the options"
        )
    labels = options.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise TypeError(f"{kind}: labels must be a mapping of str to str")
    ours = sorted(k for k in labels if k.startswith("io.reclaim."))
    if ours:
        raise ValueError(f"{kind}: the labels {ours} are reclaim's own; leave them out")
    return dict(labels)


# --- what all three kinds share ---------------------------------------------------------------


class _EngineObject(Backend[Any]):
    """A named object on a Docker Engine API (container, network or volume): found by its exact
    name, reclaim's only when its ``io.reclaim.name`` label is that name."""

    #: "container", "network" or "volume": for messages.
    what: ClassVar[str] = ""

    url_schemes = _LEFTOVER_SCHEMES

    def __init__(self, base_url: str | None, options: Mapping[str, Any]) -> None:
        require_extra(_HAVE_DRIVER, self.kind, *_EXTRA)
        self.engine = engine_url(base_url, kind=self.kind)
        self.user_labels = _check_options(self.kind, options)
        self.options = {k: v for k, v in options.items() if k != "labels"}

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name (a valid name of containers, networks and volumes alike)."""
        return self.name_style.spell(proposed)

    def plan(self, name: str) -> Record:
        parsed = self.name_style.parse(self.name_style.spell(name))  # refuses a non-name
        assert parsed is not None
        return {"name": name, "engine": self.engine, "labels": _labels(parsed)}

    def _create_labels(self, record: Record) -> dict[str, str]:
        return {**self.user_labels, **record["labels"]}

    # -- the engine, asked -------------------------------------------------------------------

    @classmethod
    def _connect(cls, record: Record, error_type: type[BackendError], doing: str) -> Any:
        """A client that has just been answered by the engine (``/_ping``)."""
        try:
            client = _client(str(record["engine"]))
            client.ping()
        except _errors() as exc:
            raise _error(error_type, cls.kind, record, doing, exc) from exc
        return client

    @classmethod
    def _find(cls, client: Any, name: str) -> list[dict[str, Any]]:
        """Every object the engine holds under exactly ``name`` (its raw attributes)."""
        raise NotImplementedError

    @classmethod
    def _labels_of(cls, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        return attrs.get("Labels") or {}

    @classmethod
    def _remove(cls, client: Any, attrs: Mapping[str, Any]) -> None:
        """Remove the object (already known to be ours); NotFound is the caller's success."""
        raise NotImplementedError

    @classmethod
    def _listed(cls, client: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
        """(name, labels) of every object of this kind carrying :data:`LABEL_NAME`."""
        raise NotImplementedError

    @classmethod
    def _ours(cls, client: Any, record: Record) -> list[dict[str, Any]]:
        """The objects called exactly the record's name, each checked to be reclaim's (I8).

        Raises:
            ForeignNameError: an object of that name does not carry the record's whole name in
                its label: somebody else's, never touched.
        """
        name = str(record["name"])
        found = cls._find(client, name)
        for attrs in found:
            labels = cls._labels_of(attrs)
            if labels.get(LABEL_NAME) != name:
                shown = {k: v for k, v in labels.items() if str(k).startswith("io.reclaim.")}
                raise refuse(
                    cls.kind,
                    "name",
                    name,
                    f"the name of a {cls.what} of reclaim's: the {cls.what} called so at"
                    f" {redact_url(str(record.get('engine')))} does not carry the label"
                    f" {LABEL_NAME}={name!r} (its reclaim labels: {shown or 'none'})",
                    name=cls.name_style.parse(name),
                )
        return found

    # -- the contract --------------------------------------------------------------------------

    @classmethod
    def release(cls, record: Record) -> None:
        """Remove the object called exactly the record's name, if it is reclaim's; gone already
        is a success (I3)."""
        require_extra(_HAVE_DRIVER, cls.kind, *_EXTRA)
        doing = f"remove the {cls.what}"
        client = cls._connect(record, ReleaseError, doing)
        try:
            for attrs in cls._ours(client, record):
                with _unless_gone():
                    cls._remove(client, attrs)
        except _errors() as exc:
            raise _error(ReleaseError, cls.kind, record, doing, exc) from exc

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Does the engine hold reclaim's object of the record's name?"""
        require_extra(_HAVE_DRIVER, cls.kind, *_EXTRA)
        doing = f"look the {cls.what} up"
        client = cls._connect(record, BackendError, doing)
        try:
            return bool(cls._ours(client, record))
        except _errors() as exc:
            raise _error(BackendError, cls.kind, record, doing, exc) from exc

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{redact_url(str(record.get('engine', '?')))} {cls.what} {record.get('name', '?')}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """The engine's objects of this kind whose ``io.reclaim.name`` label is their own whole
        name, and a reclaim name: ``docker://``, ``docker+unix:///path``,
        ``docker+tcp://host:port``."""
        require_extra(_HAVE_DRIVER, cls.kind, *_EXTRA)
        engine = _leftover_engine(target, cls.kind)
        server: Record = {"name": "", "engine": engine}
        client = cls._connect(server, BackendError, f"list the {cls.what}s")
        try:
            listed = sorted(cls._listed(client), key=lambda item: item[0])
        except _errors() as exc:
            raise _error(BackendError, cls.kind, server, f"list the {cls.what}s", exc) from exc
        seen: set[str] = set()
        for name, labels in listed:
            parsed = cls.name_style.parse(name)
            if parsed is None or labels.get(LABEL_NAME) != name or name in seen:
                continue  # a look-alike, or a label copied onto another object: never touched
            seen.add(name)
            yield Leftover.of({**server, "name": name, "labels": _labels(parsed)}, parsed)

    # -- acquire, shared ---------------------------------------------------------------------

    def _create(self, client: Any, record: Record, create: Callable[[], Any]) -> Any:
        """Run the one create call; a failure becomes :class:`NotCreatedError` only when the
        engine answered it and, asked right after, holds nothing of ours under the name."""
        doing = f"create the {self.what}"
        try:
            return create()
        except (TypeError, ValueError) as exc:  # the SDK refused the options: nothing was sent
            raise _error(NotCreatedError, self.kind, record, doing, exc) from exc
        except _errors() as exc:
            if _status(exc) is None:  # no answer: it may have been done
                raise _error(AcquireError, self.kind, record, doing, exc) from exc
            self._settle_failed_create(client, record, doing, exc)

    def _settle_failed_create(
        self, client: Any, record: Record, doing: str, exc: BaseException
    ) -> NoReturn:
        """The engine refused the create: ask it whether anything of ours is there; remove it
        if so. Raises NotCreatedError when nothing of ours is left, AcquireError otherwise."""
        try:
            leftover = [
                attrs
                for attrs in self._find(client, str(record["name"]))
                if self._labels_of(attrs).get(LABEL_NAME) == record["name"]
            ]
            for attrs in leftover:
                with _unless_gone():
                    self._remove(client, attrs)
        except _errors() as check:
            error = _error(AcquireError, self.kind, record, doing, exc)
            error.add_note(f"reclaim: asking the engine what is left failed too: {_reason(check)}")
            raise error from exc
        raise _error(NotCreatedError, self.kind, record, doing, exc) from exc


# --- containers -----------------------------------------------------------------------------


class DockerContainer(_EngineObject):
    """A container of its own, created under reclaim's name from a local image and started.

    The value is the docker SDK's ``Container``, running (``container.reload()`` refreshes it).
    Release removes it with force and with its anonymous volumes.

    Args:
        image: a local image (``"redis:7"``, ``"localhost/app:test"``). reclaim never pulls:
            an image the engine does not have fails the acquire with ``NotCreatedError``
            (``docker pull`` it first).
        command: what the container runs (a string or an argv list), the image's default
            when None.
        base_url: the engine, ``unix:///path/docker.sock`` or ``tcp://host:port``; by default
            ``DOCKER_HOST``, else ``unix:///var/run/docker.sock``.
        **options: keyword arguments of the SDK's ``containers.create`` (``environment``,
            ``ports``, ``volumes``, ``network``, ``mem_limit``...). ``labels`` are kept, with
            reclaim's two added; ``name`` is reclaim's and may not be given.

    Raises:
        ValueError: the engine URL cannot be used.
        TypeError: ``name`` among the options, or labels that are not str to str.
        MissingExtraError: the docker SDK is not installed.
    """

    kind = _CONTAINER
    what = "container"

    def __init__(
        self,
        image: str,
        command: str | list[str] | None = None,
        *,
        base_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, options)
        if not isinstance(image, str) or not image:
            raise TypeError(f"{_CONTAINER}: image must be a non-empty str, not {image!r}")
        self.image = image
        self.command = command

    def plan(self, name: str) -> Record:
        return {**super().plan(name), "image": self.image}

    def acquire(self, name: str) -> tuple[Any, Record]:
        """Create the container under ``name`` with reclaim's labels, then start it. One that
        fails to start is removed again before the error is raised."""
        record = self.plan(name)
        client = self._connect(record, NotCreatedError, "reach the engine")
        labels = self._create_labels(record)
        container = self._create(
            client,
            record,
            lambda: client.containers.create(
                self.image, self.command, name=name, labels=labels, **self.options
            ),
        )
        try:
            container.start()
            container.reload()
        except _errors() as exc:
            self._settle_failed_create(client, record, "start the container", exc)
        return container, {**record, "id": container.id}

    @classmethod
    def _find(cls, client: Any, name: str) -> list[dict[str, Any]]:
        try:
            attrs = client.api.inspect_container(name)
        except docker.errors.APIError as exc:
            if _gone(exc):
                return []
            raise
        # The engine also resolves ids and id prefixes: only the container of exactly this name.
        return [attrs] if str(attrs.get("Name", "")).lstrip("/") == name else []

    @classmethod
    def _labels_of(cls, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        return (attrs.get("Config") or {}).get("Labels") or {}

    @classmethod
    def _remove(cls, client: Any, attrs: Mapping[str, Any]) -> None:
        cid = str(attrs["Id"])
        try:
            client.api.remove_container(cid, force=True, v=True)
        except docker.errors.APIError as exc:
            if _status(exc) != 409:
                raise
            _wait_gone(lambda: client.api.inspect_container(cid), exc)  # removal in progress

    @classmethod
    def _listed(cls, client: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
        for item in client.api.containers(all=True, filters={"label": LABEL_NAME}):
            for name in item.get("Names") or ():
                yield str(name).lstrip("/"), item.get("Labels") or {}

    @classmethod
    def describe(cls, record: Record) -> str:
        image = record.get("image")
        return super().describe(record) + (f" ({image})" if image else "")


def _wait_gone(inspect: Callable[[], Any], exc: BaseException) -> None:
    """Wait for a removal the engine says is in progress; raise ``exc`` if it does not end."""
    deadline = time.monotonic() + _REMOVAL_WAIT
    while time.monotonic() < deadline:
        try:
            inspect()
        except docker.errors.APIError as gone:
            if _gone(gone):
                return
            raise
        time.sleep(0.1)
    raise exc


# --- networks -------------------------------------------------------------------------------


class DockerNetwork(_EngineObject):
    """A network of its own, created under reclaim's name.

    The value is the docker SDK's ``Network``. Release disconnects every container still
    attached (it never removes one), then removes the network.

    Args:
        base_url: the engine, as for :class:`DockerContainer`.
        **options: keyword arguments of the SDK's ``networks.create`` (``driver``,
            ``internal``, ``ipam``, ``options``...). ``labels`` are kept, with reclaim's two
            added; ``name`` is reclaim's.

    Raises:
        ValueError: the engine URL cannot be used.
        TypeError: ``name`` among the options, or labels that are not str to str.
        MissingExtraError: the docker SDK is not installed.
    """

    kind = _NETWORK
    what = "network"

    def __init__(self, *, base_url: str | None = None, **options: Any) -> None:
        super().__init__(base_url, options)

    def acquire(self, name: str) -> tuple[Any, Record]:
        record = self.plan(name)
        client = self._connect(record, NotCreatedError, "reach the engine")
        labels = self._create_labels(record)
        options = {"check_duplicate": True, **self.options}
        network = self._create(
            client, record, lambda: client.networks.create(name, labels=labels, **options)
        )
        return network, {**record, "id": network.id}

    @classmethod
    def _find(cls, client: Any, name: str) -> list[dict[str, Any]]:
        # The engine's name filter matches parts of names: keep exactly this one. Docker can
        # hold two networks of one name (made without CheckDuplicate): each is looked at.
        found = []
        for item in client.api.networks(names=[name]):
            if item.get("Name") != name:
                continue
            with _unless_gone():
                found.append(client.api.inspect_network(item["Id"]))
        return found

    @classmethod
    def _remove(cls, client: Any, attrs: Mapping[str, Any]) -> None:
        nid = str(attrs["Id"])
        for cid in attrs.get("Containers") or {}:
            with _unless_gone():  # the container, or the network, is gone already
                client.api.disconnect_container_from_network(cid, nid, force=True)
        client.api.remove_network(nid)

    @classmethod
    def _listed(cls, client: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
        for item in client.api.networks(filters={"label": LABEL_NAME}):
            yield str(item.get("Name", "")), item.get("Labels") or {}


# --- volumes --------------------------------------------------------------------------------


class DockerVolume(_EngineObject):
    """A volume of its own, created under reclaim's name.

    The value is the docker SDK's ``Volume``. Release removes it, never forced: while a
    container uses it the release fails (naming the container) and a later sweep retries.

    Args:
        base_url: the engine, as for :class:`DockerContainer`.
        **options: keyword arguments of the SDK's ``volumes.create`` (``driver``,
            ``driver_opts``). ``labels`` are kept, with reclaim's two added; ``name`` is
            reclaim's.

    Raises:
        ValueError: the engine URL cannot be used.
        TypeError: ``name`` among the options, or labels that are not str to str.
        MissingExtraError: the docker SDK is not installed.
    """

    kind = _VOLUME
    what = "volume"

    def __init__(self, *, base_url: str | None = None, **options: Any) -> None:
        super().__init__(base_url, options)

    def acquire(self, name: str) -> tuple[Any, Record]:
        """Create the volume. The engine answers a create of an existing name with that volume
        instead of an error, so it is asked first, and the answer is checked to be ours."""
        record = self.plan(name)
        client = self._connect(record, NotCreatedError, "reach the engine")
        doing = "create the volume"
        try:
            there = self._find(client, name)
        except _errors() as exc:
            raise _error(NotCreatedError, self.kind, record, doing, exc) from exc
        if there:
            raise NotCreatedError(
                f"{self.kind} {name!r}: a volume of that name exists already at"
                f" {redact_url(self.engine)}; it is not reclaim's to share",
                kind=self.kind,
                resource=name,
            )
        labels = self._create_labels(record)
        volume = self._create(
            client, record, lambda: client.volumes.create(name=name, labels=labels, **self.options)
        )
        if (volume.attrs.get("Labels") or {}).get(LABEL_NAME) != name:
            raise NotCreatedError(
                f"{self.kind} {name!r}: the engine answered with a volume of that name that is"
                " not reclaim's (made by somebody else meanwhile); it is left alone",
                kind=self.kind,
                resource=name,
            )
        return volume, record

    @classmethod
    def _find(cls, client: Any, name: str) -> list[dict[str, Any]]:
        try:
            attrs = client.api.inspect_volume(name)
        except docker.errors.APIError as exc:
            if _gone(exc):
                return []
            raise
        return [attrs] if attrs.get("Name") == name else []

    @classmethod
    def _remove(cls, client: Any, attrs: Mapping[str, Any]) -> None:
        try:
            client.api.remove_volume(str(attrs["Name"]))  # never forced: podman's force
        except docker.errors.APIError as exc:  # would remove the containers using it
            if _status(exc) == 409:
                exc.explanation = (
                    f"{_reason(exc).removeprefix('the engine answered ')}; it is in use, and"
                    " reclaim never removes a container to free a volume: once the container is"
                    " gone, a sweep removes the volume"
                )
            raise

    @classmethod
    def _listed(cls, client: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
        answer = client.api.volumes(filters={"label": LABEL_NAME}) or {}
        for item in answer.get("Volumes") or ():
            yield str(item.get("Name", "")), item.get("Labels") or {}


# --- testcontainers-python ----------------------------------------------------------------------


class TestcontainersContainer(DockerContainer):
    """A testcontainers-python container made reclaim's: named and labelled by reclaim before it
    starts, released by reclaim. With it, ``TESTCONTAINERS_RYUK_DISABLED=true`` is safe::

        from testcontainers.core.container import DockerContainer as TcContainer

        tc = TcContainer("redis:7").with_exposed_ports(6379)
        redis = reclaim.acquire(TestcontainersContainer(tc))  # the pytest fixture `reclaim`
        port = redis.get_exposed_port(6379)

    ``container`` is an *unstarted* ``testcontainers.core.container.DockerContainer`` (or a
    subclass: ``PostgresContainer``, ``RedisContainer``...). Acquire journals the record, gives the
    container reclaim's name and labels (kept next to testcontainers' own), and calls its
    ``start()`` (which creates, starts and waits). The value is ``container`` itself, started.
    Release removes it like any ``docker.container`` (the kind is the same: the watchdog and the
    sweeper need nothing of testcontainers). Do not also use it as a context manager, nor call
    ``stop()``: reclaim removes it.

    Args:
        container: the testcontainers container, not started, without a name of its own.
        base_url: the engine testcontainers talks to, when it is not what its own
            ``get_docker_host()`` says (``tc.host`` of ``~/.testcontainers.properties``,
            ``DOCKER_HOST``, the docker context), nor the default socket.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, container: Any, *, base_url: str | None = None) -> None:
        require_extra(_HAVE_DRIVER, _CONTAINER, *_EXTRA)
        if not hasattr(container, "start") or not hasattr(container, "with_name"):
            raise TypeError(
                f"{_CONTAINER}: expected a testcontainers DockerContainer, not"
                f" {type(container).__name__}"
            )
        if getattr(container, "_container", None) is not None:
            raise ValueError(f"{_CONTAINER}: the testcontainers container is started already")
        if getattr(container, "_name", None):
            raise ValueError(
                f"{_CONTAINER}: the testcontainers container has a name of its own"
                f" ({container._name!r}); reclaim names it, so drop with_name()/name="
            )
        kwargs = dict(getattr(container, "_kwargs", None) or {})
        super().__init__(
            str(container.image),
            base_url=_testcontainers_engine() if base_url is None else base_url,
            labels=kwargs.pop("labels", None) or {},
        )
        self.container = container
        self._kwargs = kwargs

    def acquire(self, name: str) -> tuple[Any, Record]:
        """Name and label the container, then ``container.start()``. A start that fails (the
        create, the start or testcontainers' wait) removes what it made before raising."""
        record = self.plan(name)
        client = self._connect(record, NotCreatedError, "reach the engine")
        labels = self._create_labels(record)
        self.container.with_name(name)
        self.container.with_kwargs(**{**self._kwargs, "labels": labels})
        doing = "start the testcontainers container"
        try:
            self.container.start()
        except Exception as exc:
            if _unreachable(exc):  # the create may have been sent, and no answer came
                raise _error(AcquireError, self.kind, record, doing, exc) from exc
            self._settle_failed_create(client, record, doing, exc)
        return self.container, {**record, "id": self.container.get_container_id()}

    def discard(self, value: Any) -> None:
        """Close testcontainers' client once reclaim has removed the container."""
        client = getattr(value.get_docker_client(), "client", None)
        if client is not None:
            client.close()


def _testcontainers_engine() -> str | None:
    """The engine testcontainers-python talks to, as its own ``get_docker_host`` says, else the
    default socket (its SDK's default too). None when testcontainers is not importable: then
    reclaim's own default (``DOCKER_HOST``, else the default socket) applies."""
    try:
        from testcontainers.core.docker_client import get_docker_host  # noqa: PLC0415
    except ImportError:
        return None
    host = get_docker_host()
    return str(host) if host else DEFAULT_ENGINE

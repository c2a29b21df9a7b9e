"""The conformance kit for backends: ``check_backend`` proves a backend keeps the contract.

Run it in your backend's tests against the real server::

    def test_bucket_backend(tmp_path):
        reclaim.testing.check_backend(lambda: Bucket(URL, TOKEN), registry=tmp_path / "r.db")

Every built-in backend passes it, through one parametrisation in reclaim's own tests, except the
two OAuth grant kinds, whose token can exist before acquire. ``check_crash`` (SIGKILL of a real
holder, then of holder and watchdog together) and ``check_outage`` (the server down at release,
staged with :class:`TcpProxy`) are the crash kits beside it; every built-in kind passes both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from reclaim._errors import BackendNotFoundError, ForeignNameError
from reclaim._identity import Identity, current_identity
from reclaim._registry import open_registry
from reclaim._sweep import sweep
from reclaim.backends import (
    Backend,
    Record,
    check_record,
    load_backend,
    make_name,
    release_batch,
)

__all__ = [
    "FOREIGN_NAMES",
    "CrashReport",
    "TcpProxy",
    "check_backend",
    "check_crash",
    "check_outage",
    "dead_identity",
    "lookalikes",
]

#: Names of things that are never reclaim's, on any server: a record naming one is refused.
FOREIGN_NAMES: Final = (
    "public", "postgres", "template1", "mysql", "information_schema", "/", "", "*", "rc_",
    "rc_app", "..", "/home", "default",
)  # fmt: skip


def lookalikes(exact: str, separator: str = "_") -> list[str]:
    """Names that carry ``exact`` (a server-side reclaim name) but are not it.

    Suffixes, prefixes, extensions, other separators, a sequence number with letters after it,
    case variants, a leading zero: every shape a search-anywhere match would take for
    reclaim's. A backend must refuse a record naming any of them (I8), and a leftover sweep
    must spare an object of any of these names.
    """
    head, _, seq = exact.rpartition(separator)
    other = "-" if separator == "_" else "_"
    out = [
        f"{exact}{separator}backup",
        f"myapp{separator}{exact}",
        f"{exact}.bak",
        f"{exact}2x",
        f"{exact}x",
        f"x{exact}",
        exact.upper(),
        exact.replace("rc", "RC", 1),
        exact.replace(separator, other),
        f"{head}{separator}0{seq}",
        f"{exact}{separator}",
        f"{exact} ",
    ]
    return list(dict.fromkeys(n for n in out if n != exact))


def dead_identity() -> Identity:
    """An owner of this machine that is certainly dead: this pid with a start time it never had.

    For tests that need a run whose owner died without killing anything.
    """
    me = current_identity()
    return Identity(host=me.host, boot_id=me.boot_id, pidns=me.pidns, pid=me.pid, start_time=-1)


def check_backend(  # noqa: PLR0915  (a linear script of checks reads best in one piece)
    make: Callable[[], Backend[Any]],
    *,
    registry: str | os.PathLike[str],
    delete_outside: Callable[[Record], None] | None = None,
    make_lookalike: Callable[[str], Callable[[], bool]] | None = None,
    leftovers_url: str | None = None,
) -> None:
    """Check that the backends ``make()`` returns keep reclaim's contract.

    Checks, each with a message that says which rule broke:

    1. the kind is set and ``load_backend(kind)`` finds this class (entry points);
    2. the planned record is JSON and is all release needs: released before creation it is a
       no-op, and after creation it finds what acquire made (I1);
    3. acquire creates (``exists`` says so), the record survives a JSON round trip (I2);
    4. release deletes, a second release is a no-op (I3);
    5. release after somebody else deleted it succeeds (``delete_outside``, when given);
    6. a resource of a dead run is released by the sweeper, which knows only the registry;
    7. only our own (I8): a record whose name is a look-alike of a reclaim name (``_backup``
       after it, ``myapp_`` before it, upper case, ...) or a name that is never reclaim's
       (``public``, ``mysql``, ``/``), or whose identity fields (path, prefix) are altered, is
       refused by ``release`` and ``exists`` with :class:`~reclaim.ForeignNameError`;
    8. with ``make_lookalike``: objects named like a real resource's look-alikes, made outside
       reclaim, survive the sweeper's release of that resource, and (with ``leftovers_url``)
       a registry-less ``sweep --leftovers`` pass;
    9. a batch, as the watchdog and the sweeper release a dead run (``release_many``, the
       default's or yours): acquired records and a planned one never created all succeed, and
       a foreign record in the batch is refused on its own.

    Args:
        make: returns a fresh backend instance each call.
        registry: a path for a scratch registry file (created, then left for the caller).
        delete_outside: deletes the resource behind reclaim's back, as a test or an operator
            might. Skipped when None.
        make_lookalike: makes an object with exactly the given server-side name outside
            reclaim, and returns a function that says whether it is still there (asked of the
            server). It may raise ValueError for a name the server cannot hold; that name is
            not tried. Skipped when None.
        leftovers_url: where ``list_leftovers`` looks, for the registry-less part of check 8.

    Raises:
        AssertionError: the backend broke the contract; the message says how.
    """
    backend = make()
    cls = type(backend)
    assert cls.kind, f"{cls.__name__}.kind is empty: every backend needs a registry name"
    try:
        found: type[Backend[Any]] | None = load_backend(cls.kind)
    except BackendNotFoundError:
        found = None
    assert found is cls, (
        f"load_backend({cls.kind!r}) does not find {cls.__name__}: register it under the"
        " entry-point group 'reclaim.backends' (the watchdog and the sweeper find it there)"
    )
    run_id = secrets.token_hex(4)

    def fresh(seq: int) -> tuple[Backend[Any], str, Record]:
        b = make()
        name = b.adapt_name(make_name(run_id, seq))
        planned = _round_trip(b.plan(name), cls, "plan()")
        return b, name, planned

    # 2. planned but never created: release is a no-op, and nothing exists.
    b, name, planned = fresh(1)
    assert not cls.exists(planned), f"{cls.kind}: exists() is true before acquire()"
    cls.release(planned)
    assert not cls.exists(planned), f"{cls.kind}: releasing a planned record created something"

    # 3. acquire, exists, and the planned record finds it (I1).
    value, record = b.acquire(name)
    record = _round_trip(record, cls, "acquire()")
    assert cls.exists(record), f"{cls.kind}: exists() is false right after acquire()"
    assert cls.exists(planned), (
        f"{cls.kind}: the planned record does not find the created resource; a crash between"
        " create and record would leak it (I1)"
    )
    # 7. only our own (I8): look-alikes and altered identities are refused before any I/O.
    _check_refusals(cls, record)

    # 4. release, then release again.
    cls.release(record)
    assert not cls.exists(record), f"{cls.kind}: the resource still exists after release()"
    cls.release(record)
    b.discard(value)

    # 5. somebody else deleted it first.
    if delete_outside is not None:
        b, name, _planned = fresh(2)
        value, record = b.acquire(name)
        delete_outside(record)
        assert not cls.exists(record), f"{cls.kind}: delete_outside did not delete it"
        cls.release(record)
        b.discard(value)

    # The crash between create and record: release from the planned record alone.
    b, name, planned = fresh(3)
    value, record = b.acquire(name)
    cls.release(planned)
    assert not cls.exists(record), (
        f"{cls.kind}: release(planned record) left the created resource behind (I1)"
    )
    b.discard(value)

    # 9. a batch (as the watchdog and the sweeper release a dead run): every record released,
    # a planned one that was never created included, and a foreign one refused on its own.
    made = [fresh(seq) for seq in (10, 11)]
    acquired = [(b, *b.acquire(name)) for b, name, _planned in made]
    never = fresh(12)[2]
    foreign = {**acquired[0][2], "name": "public"}
    batch = [acquired[0][2], foreign, never, acquired[1][2]]
    outcomes = release_batch(cls, [_round_trip(r, cls, "the batch's record") for r in batch])
    assert isinstance(outcomes[1], ForeignNameError), (
        f"{cls.kind}: release_many was given a record named 'public' (I8): {outcomes[1]!r}"
    )
    failed = [o for i, o in enumerate(outcomes) if i != 1 and o is not None]
    assert not failed, f"{cls.kind}: release_many failed: {failed[0]!r}"
    for b, value, record in acquired:
        assert not cls.exists(record), f"{cls.kind}: release_many left {record['name']} behind"
        b.discard(value)

    # 6. the sweeper releases a dead run's resource from the registry alone.
    reg = open_registry(os.fspath(registry))
    try:
        owner = dead_identity()
        reg.open_run(run_id, owner, label="check_backend")
        b, name, planned = fresh(4)
        rid = reg.plan(run_id, "check_backend", cls.kind, name, planned)
        value, record = b.acquire(name)
        reg.mark_acquired(rid, record)
        report = sweep(reg, grace=0)
        assert reg.get_resource(rid) is None, (
            f"{cls.kind}: the sweeper did not release a dead run's resource: {report.to_json()}"
        )
        assert not cls.exists(record), f"{cls.kind}: swept, yet the resource still exists"
        b.discard(value)
        # 8. look-alikes made outside reclaim survive the sweep, and the leftover pass.
        if make_lookalike is not None:
            _check_lookalikes_survive(
                cls, fresh, reg, run_id, make_lookalike, leftovers_url=leftovers_url
            )
    finally:
        reg.close()


def _refused(cls: type[Backend[Any]], record: Record, what: str) -> None:
    for method in (cls.release, cls.exists):
        try:
            method(record)
        except ForeignNameError:
            continue
        raise AssertionError(
            f"{cls.kind}: {method.__name__}() accepted a record {what} ({record!r}); it must"
            " refuse it with ForeignNameError before anything reaches the server (I8)"
        )


def _check_refusals(cls: type[Backend[Any]], record: Record) -> None:
    name = check_record(cls, record)  # the real record passes
    sep = cls.name_style.separator
    for fake in [*lookalikes(name.text, sep), *FOREIGN_NAMES]:
        _refused(cls, {**record, "name": fake}, f"named {fake!r}")
    for field, actual, _expected in cls.owned_identities(record, name):
        if field in record and isinstance(actual, str):
            for altered in (f"{actual}{sep}backup", f"{actual}/..", "", "/"):
                if altered == actual:
                    continue
                _refused(cls, {**record, field: altered}, f"whose {field} is {altered!r}")


def _check_lookalikes_survive(
    cls: type[Backend[Any]],
    fresh: Callable[[int], tuple[Backend[Any], str, Record]],
    reg: Any,
    run_id: str,
    make_lookalike: Callable[[str], Callable[[], bool]],
    *,
    leftovers_url: str | None,
) -> None:
    from reclaim._leftovers import find_leftovers, release_leftovers  # noqa: PLC0415  (only check 8 needs the leftover pass)

    if reg.get_run(run_id) is None:  # reaped whole by check 6: the same dead run again
        reg.open_run(run_id, dead_identity(), label="check_backend")
    b, name, planned = fresh(5)
    rid = reg.plan(run_id, "check_backend", cls.kind, name, planned)
    value, record = b.acquire(name)
    reg.mark_acquired(rid, record)
    probes: dict[str, Callable[[], bool]] = {}
    for fake in lookalikes(name, cls.name_style.separator):
        try:
            probes[fake] = make_lookalike(fake)
        except ValueError:
            continue
    sweep(reg, grace=0)
    assert not cls.exists(record), f"{cls.kind}: swept, yet the resource still exists"
    b.discard(value)
    if leftovers_url is not None:
        yielded = {str(lo.record.get("name")) for lo in cls.list_leftovers(leftovers_url)}
        listed = sorted(yielded & set(probes))
        assert not listed, f"{cls.kind}: list_leftovers() yields look-alikes: {listed}"
        report = find_leftovers(None, [leftovers_url], older_than=0.0)
        # Release only this check's own run: the server may hold other tests' leftovers.
        report.items = [item for item in report.items if item.leftover.run_id == run_id]
        release_leftovers(report, None)
    gone = sorted(fake for fake, present in probes.items() if not present())
    assert not gone, f"{cls.kind}: objects that only look like reclaim's were deleted: {gone}"


def _round_trip(record: Record, cls: type[Backend[Any]], where: str) -> Record:
    assert isinstance(record, dict), f"{cls.kind}: {where} must return a dict record"
    assert "name" in record, f"{cls.kind}: the record of {where} has no 'name'"
    try:
        again: Record = json.loads(json.dumps(record))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{cls.kind}: the record of {where} is not JSON: {exc}") from exc
    assert again == record, f"{cls.kind}: the record of {where} changes in a JSON round trip"
    return again


# --- the crash kit ---------------------------------------------------------------------------

_CRASH_CHILD: Final = """
import importlib, json, sys, time
import reclaim
from reclaim._run import current_run

module, _, attr = sys.argv[1].partition(":")
factory = importlib.import_module(module)
for part in attr.split("."):
    factory = getattr(factory, part)
with reclaim.Fixture("check_crash") as f:
    f.acquire(factory(**json.loads(sys.argv[2])))
    run = current_run()
    (entry,) = run.registry.resources(run.id)
    watchdog = run.watchdog.pid if run.watchdog is not None else None
    print(json.dumps({"id": entry.id, "kind": entry.kind, "record": entry.record,
                      "watchdog": watchdog}), flush=True)
    time.sleep(600)
"""


@dataclasses.dataclass(frozen=True)
class CrashReport:
    """What :func:`check_crash` measured (seconds)."""

    #: SIGKILL of the owner to the resource gone, released by its watchdog (layer 3).
    watchdog_seconds: float
    #: The sweep that released it after owner and watchdog were killed together (layer 4).
    sweep_seconds: float


def check_crash(
    factory: str,
    *,
    registry: str | os.PathLike[str],
    args: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> CrashReport:
    """Check, with real processes killed with SIGKILL, that a backend's resource is reclaimed.

    ``factory`` is ``"module:callable"``, importable in a child process (it inherits this
    process's environment, ``PYTHONPATH`` included), returning a backend; it is called with
    ``args``. Two crashes, each in a child that acquires one resource through a Fixture:

    1. the child is SIGKILLed: its watchdog releases the resource (``exists`` is false and the
       registry entry is gone within ``timeout``);
    2. the child and its watchdog are SIGKILLed together (a CI job torn down whole): nothing is
       released until a sweep, which releases it from the registry alone (I2).

    Whatever happens, the children are killed and the registry swept before this returns.

    Raises:
        AssertionError: a crash left the resource behind; the message says which.
    """
    crash = _Crash(factory, dict(args or {}), os.fspath(registry), timeout)
    return CrashReport(
        watchdog_seconds=_crash_once(crash, kill_watchdog=False),
        sweep_seconds=_crash_once(crash, kill_watchdog=True),
    )


@dataclasses.dataclass(frozen=True)
class _Crash:
    factory: str
    args: dict[str, Any]
    location: str
    timeout: float


def _crash_once(crash: _Crash, *, kill_watchdog: bool) -> float:
    factory, location, timeout = crash.factory, crash.location, crash.timeout
    env = {**os.environ, "RECLAIM_REGISTRY": location}
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, factory, json.dumps(crash.args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    held: dict[str, Any] = {}
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            _, err = child.communicate(timeout=timeout)
            raise AssertionError(f"check_crash: {factory} failed to acquire:\n{err[-3000:]}")
        held = json.loads(line)
        backend = load_backend(held["kind"])
        assert backend.exists(held["record"]), f"{held['kind']}: exists() is false after acquire"
        watchdog = held.get("watchdog")
        if kill_watchdog and watchdog:
            os.kill(int(watchdog), signal.SIGKILL)
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=timeout)
        reg = open_registry(location)
        try:
            if kill_watchdog:
                time.sleep(0.2)  # nobody may release it now: it must still be there
                assert backend.exists(held["record"]), (
                    f"{held['kind']}: gone before any sweep, with owner and watchdog dead"
                )
                started = time.monotonic()
                sweep(reg, grace=0)
                elapsed = time.monotonic() - started
            else:
                while backend.exists(held["record"]) or reg.get_resource(held["id"]) is not None:
                    if time.monotonic() - killed > timeout:
                        raise AssertionError(
                            f"{held['kind']}: not released by the watchdog {timeout:g} s after"
                            " its owner was SIGKILLed"
                        )
                    time.sleep(0.01)
                elapsed = time.monotonic() - killed
            assert reg.get_resource(held["id"]) is None, f"{held['kind']}: the entry is left"
        finally:
            reg.close()
        assert not backend.exists(held["record"]), f"{held['kind']}: left behind by the crash"
        return elapsed
    finally:
        _clean_up(child, location, swept=bool(held), timeout=timeout)


def _clean_up(child: subprocess.Popen[str], location: str, *, swept: bool, timeout: float) -> None:
    """What every kit does whatever happened: kill its child, close its pipes, and sweep what
    the child may have left (when it got as far as holding something)."""
    if child.poll() is None:
        child.kill()
        child.wait(timeout=timeout)
    for stream in (child.stdout, child.stderr):
        if stream is not None:
            stream.close()
    if swept:
        reg = open_registry(location)
        try:
            sweep(reg, grace=0)
        finally:
            reg.close()


# --- the outage kit --------------------------------------------------------------------------

_OUTAGE_CHILD: Final = """
import importlib, json, os, sys, time
import reclaim
from reclaim._run import current_run

module, _, attr = sys.argv[1].partition(":")
factory = importlib.import_module(module)
for part in attr.split("."):
    factory = getattr(factory, part)
go, deadline = sys.argv[3], time.monotonic() + float(sys.argv[4])
errors = []
try:
    with reclaim.Fixture("check_outage") as f:
        f.acquire(factory(**json.loads(sys.argv[2])))
        run = current_run()
        (entry,) = run.registry.resources(run.id)
        print(json.dumps({"id": entry.id, "kind": entry.kind, "record": entry.record}), flush=True)
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)
except BaseException as exc:
    errors = [str(e) for e in getattr(exc, "exceptions", [exc])]
print(json.dumps({"errors": errors}), flush=True)
"""


def check_outage(
    factory: str,
    *,
    registry: str | os.PathLike[str],
    proxy: TcpProxy,
    args: Mapping[str, Any] | None = None,
    secrets: Sequence[str] = (),
    timeout: float = 60.0,
) -> None:
    """Check that a release which meets a dead server loses nothing, and a later sweep does it.

    ``factory`` (``"module:callable"``, called with ``args`` in a child process) must return a
    backend that reaches its server through ``proxy``. The child acquires one resource; the
    proxy is stopped (the server is "down") and the child ends normally, so its release fails.
    Then:

    - the child's error names the kind and says a later sweep retries it;
    - the registry entry stays, ``failed``, with the reason (I5: never dropped unreleased);
    - none of ``secrets`` appears in the error, the entry or ``reclaim status`` (I7);
    - with the proxy back, the resource still exists, and one sweep releases it and its entry.

    Whatever happens, the child is killed, the proxy restarted and the registry swept before
    this returns.

    Raises:
        AssertionError: a step above did not hold; the message says which.
    """
    location = os.fspath(registry)
    env = {**os.environ, "RECLAIM_REGISTRY": location}
    proxy.start()
    with tempfile.TemporaryDirectory(prefix="reclaim-outage-") as scratch:
        go = os.path.join(scratch, "go")
        child = subprocess.Popen(
            [sys.executable, "-c", _OUTAGE_CHILD, factory, json.dumps(dict(args or {})), go,
             str(timeout)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        held: dict[str, Any] = {}
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            held = json.loads(line) if line.startswith('{"id"') else {}
            if not held:
                _, err = child.communicate(timeout=timeout)
                raise AssertionError(f"check_outage: {factory} failed to acquire:\n{err[-3000:]}")
            kind, record = held["kind"], held["record"]
            backend = load_backend(kind)
            assert backend.exists(record), f"{kind}: exists() is false after acquire"
            proxy.stop()
            open(go, "w").close()  # an empty file is the signal
            out, err = child.communicate(timeout=timeout)
            errors: list[str] = json.loads(out.strip().splitlines()[-1])["errors"]
            _check_outage_errors(kind, errors, err, secrets)
            _check_kept_then_swept(location, env, held, proxy, secrets)
        finally:
            proxy.start()
            _clean_up(child, location, swept=bool(held), timeout=timeout)


def _check_kept_then_swept(
    location: str,
    env: Mapping[str, str],
    held: Mapping[str, Any],
    proxy: TcpProxy,
    secrets: Sequence[str],
) -> None:
    """After a release met a dead server: the entry is kept, failed, with no secret shown;
    with the server back the resource is there, and one sweep releases it and its entry."""
    kind, record = held["kind"], held["record"]
    backend = load_backend(kind)
    reg = open_registry(location)
    try:
        entry = reg.get_resource(held["id"])
        assert entry is not None, f"{kind}: the entry was dropped by a release that failed"
        assert entry.state == "failed", f"{kind}: the entry is {entry.state}, not failed"
        assert entry.last_error, f"{kind}: the failed entry says nothing of why"
        shown = _status_output(env) + entry.last_error
        leaked = [s for s in secrets if s and s in shown]
        assert not leaked, f"{kind}: a secret is shown by the entry or `reclaim status`"
        proxy.start()
        assert backend.exists(record), f"{kind}: gone, yet its release failed"
        report = sweep(reg, grace=0)
        assert report.released == 1, f"{kind}: the sweep released {report.released}"
        assert reg.get_resource(held["id"]) is None, f"{kind}: the entry is left"
    finally:
        reg.close()
    assert not backend.exists(record), f"{kind}: left behind after the sweep"


def _check_outage_errors(kind: str, errors: list[str], stderr: str, secrets: Sequence[str]) -> None:
    assert errors, f"{kind}: the release against a dead server raised nothing"
    text = "\n".join(errors)
    assert kind in text, f"{kind}: the release error does not name the kind: {text[:300]}"
    assert "sweep" in text, f"{kind}: the release error does not say a sweep retries it"
    leaked = [s for s in secrets if s and (s in text or s in stderr)]
    assert not leaked, f"{kind}: a secret is shown in the release error or the child's output"


def _status_output(env: Mapping[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "reclaim", "status", "--json"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to a real server; :meth:`stop` makes the server look down.

    A stopped proxy refuses connections and has cut every open one, as a server that went away
    would; :meth:`start` brings it back on the same port. Point a backend at the proxy to prove
    that a release meeting a dead server is kept as failed and done by a later sweep, without
    stopping the real server other tests use (:func:`check_outage` does this).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Listen (again) on :attr:`port`; a no-op while it listens."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

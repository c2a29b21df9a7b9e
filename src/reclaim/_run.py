"""This process's ownership of resources: the run, its watchdog, and its signal handling.

A run is opened lazily, at the first acquisition in a process, and closed when the process ends
cleanly (``atexit``): whatever is still held then is released, last in first out, and the run's
row goes. A process that does not end cleanly leaves its run open with its owner dead, and the
watchdog or the next sweep releases what it held.

Opening a run starts its watchdog (layer 3, see ``_watchdog.py``) and, in the main thread,
turns SIGTERM and SIGHUP into :class:`Terminated` while the run is open (layer 2, see
``_signals.py``), so ``with`` blocks and finalizers run as they do for Ctrl-C. A handler the user
installed is left alone.

A forked child is not the owner of its parent's run: after ``fork`` the child starts with no run
(and closes its copy of the watchdog pipe, so it cannot keep a dead owner "alive") and opens its
own at its first acquisition.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

from reclaim import _settings as settings
from reclaim import _signals, _watchdog
from reclaim._identity import Identity, current_identity
from reclaim._reaper import release_resource
from reclaim._registry import Registry, ResourceState, default_location, open_registry
from reclaim._signals import Terminated
from reclaim.backends import make_name

__all__ = ["Run", "Terminated", "current_run", "end_run", "existing_run"]

#: Environment variable naming the run a process belongs to (``reclaim run``, xdist workers).
PARENT_ENV: Final = settings.PARENT_RUN.name
LABEL_ENV: Final = settings.LABEL.name
#: Set to 0 to start no watchdog (tests of the sweeper; environments that forbid processes).
WATCHDOG_ENV: Final = settings.WATCHDOG.name


class Run:
    """One process's claim on the resources it acquires."""

    def __init__(self, registry: Registry, owner: Identity, label: str) -> None:
        self.registry = registry
        self.owner = owner
        self._seq = itertools.count(1)
        self.lease = lease_seconds()
        #: How long the marks that a crash does not need may wait (0: written at once).
        self.write_delay = settings.WRITE_DELAY.seconds()
        parent = settings.PARENT_RUN.get() or None
        self.closed = False
        self.watchdog: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None
        watched: tuple[str, dict[str, object]] | None = None
        for _ in range(5):
            self.id = secrets.token_hex(4)
            # The watchdog before the run's row: an owner killed between the two would leave
            # an open run that nobody reaps until a sweep. The watchdog of a row that never
            # came finds no run of its owner's, and exits.
            if settings.WATCHDOG.get() != "0":
                watched = self._start_watchdog()
            try:
                registry.open_run(
                    self.id, owner, label=label, parent_id=parent, lease_seconds=self.lease
                )
            except Exception as exc:  # an id collision: draw again
                self._release_watchdog()  # told the run closed: it exits, touching nothing
                self.watchdog = None
                if "unique" not in str(exc).lower():
                    raise
                continue
            break
        else:  # pragma: no cover - five collisions in 2**32
            raise RuntimeError("could not draw a unique run id")
        if watched is not None:
            registry.add_event(watched[0], run_id=self.id, detail=watched[1])
        # The owner renews the lease itself too: without a watchdog, or with a watchdog that
        # was killed, a run on a shared registry must not look dead to other hosts.
        # It writes the deferred marks too, so none waits longer than the write delay.
        self._renewer = _Renewer(
            registry.reopen_location(),
            self.id,
            self.lease / 3,
            flush=registry.flush,
            flush_every=self.write_delay,
        )

    def _start_watchdog(self) -> tuple[str, dict[str, object]]:
        """Start the watchdog of run ``self.id``; the event to journal once the run is open."""
        read_end, write_end = os.pipe()  # both close-on-exec: no exec'd child inherits them
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(_watchdog.__file__)))
        # The registry's location may hold a password: it goes in the environment, which only
        # this user can read, never on the command line, which every user can.
        env = {**os.environ, settings.WATCHDOG_REGISTRY.name: self.registry.reopen_location()}
        try:
            self.watchdog = subprocess.Popen(
                [
                    sys.executable,
                    _watchdog.__file__,
                    package_parent,
                    self.id,
                    str(self.owner.pid),
                    str(self.owner.start_time),
                    repr(self.lease / 3),
                ],
                env=env,
                stdin=read_end,
                # Never hold the owner's stdout/stderr: a parent reading them to EOF would wait
                # for the watchdog too.
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(write_end)
            return "run.unwatched", {"error": f"watchdog failed: {exc}"}
        finally:
            os.close(read_end)
        self._pipe = write_end
        _pipes.add(write_end)
        return "run.watched", {"watchdog_pid": self.watchdog.pid}

    def next_name(self) -> str:
        """A fresh name for a resource of this run."""
        return make_name(self.id, next(self._seq))

    def close(self) -> None:
        """Release what the run still holds (last in, first out), then close it."""
        if self.closed:
            return
        self.closed = True
        for resource in reversed(self.registry.resources(self.id)):
            release_resource(
                self.registry,
                resource,
                actor="exit",
                states=(ResourceState.PLANNED, ResourceState.ACQUIRED, ResourceState.FAILED),
            )
        self.registry.close_run(self.id)
        self._renewer.stop()
        self._release_watchdog()

    def _release_watchdog(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe, _watchdog.CLOSED)
            _pipes.discard(self._pipe)
            os.close(self._pipe)
            self._pipe = None
        if self.watchdog is not None and self.watchdog.poll() is None:
            # Told the run is closed, it exits on its own, touching nothing: reaped by a
            # thread, so that a close never waits for another interpreter's exit (about 15 ms
            # at the end of every test session), and no zombie is left while we live.
            try:
                _daemon(self.watchdog.wait, f"reclaim-reap-{self.id}")
            except RuntimeError:  # the interpreter is exiting (3.12+ starts no thread then)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.watchdog.wait(timeout=5)

    @property
    def defers_marks(self) -> bool:
        """Whether the owner's marks that a crash does not need may wait (the write delay)."""
        return self.write_delay > 0

    def __repr__(self) -> str:
        return f"<Run {self.id} pid={self.owner.pid} registry={self.registry.location!r}>"


def lease_seconds() -> float:
    """The lease of a run (``RECLAIM_LEASE``), at least one second."""
    seconds = settings.LEASE.seconds()
    if seconds < 1:
        raise ValueError(
            f"{settings.LEASE.name}={settings.LEASE.get()!r}: a lease must be at least 1 second"
        )
    return seconds


#: Signals a background thread of reclaim's blocks: all but those the kernel raises in the
#: thread that faults, and the two that cannot be blocked.
_ASYNC_SIGNALS: Final = signal.valid_signals() - {
    signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
    signal.SIGTRAP, signal.SIGSYS,
}  # fmt: skip


class _Renewer:
    """A daemon thread that renews a run's lease every ``interval`` seconds, on a connection
    of its own (opened at the first renewal). A renewal that fails (the registry is away) is
    tried again at the next tick; the lease is long enough for a few to fail. Every
    ``flush_every`` seconds (0: at each renewal; never less often) it calls ``flush`` (the
    run's registry's: the marks it deferred), which writes nothing when nothing waits."""

    def __init__(
        self,
        location: str,
        run_id: str,
        interval: float,
        *,
        flush: Callable[[], None],
        flush_every: float,
    ) -> None:
        self._stopped = threading.Event()
        self._location, self._run_id, self._interval = location, run_id, interval
        self._flush, self._flush_every = flush, min(flush_every or interval, interval)
        self._thread = threading.Thread(
            target=self._loop, name=f"reclaim-lease-{run_id}", daemon=True
        )
        _start_blocked(self._thread)

    def _loop(self) -> None:
        registry: Registry | None = None
        renew_at = time.monotonic() + self._interval
        try:
            while not self._stopped.wait(
                min(self._flush_every, max(0.0, renew_at - time.monotonic()))
            ):
                with contextlib.suppress(Exception):  # the next tick, or the next write, retries
                    self._flush()
                if time.monotonic() < renew_at:
                    continue
                renew_at = time.monotonic() + self._interval
                try:
                    registry = registry or open_registry(self._location, create=False)
                    registry.heartbeat(self._run_id)
                except Exception:  # noqa: S112  (away for now: the next tick retries)
                    continue
        finally:
            if registry is not None:
                with contextlib.suppress(Exception):
                    registry.close()

    def stop(self) -> None:
        self._stopped.set()


def _start_blocked(thread: threading.Thread) -> None:
    """Start a thread of reclaim's born with every asynchronous signal blocked: a signal sent
    to the process must reach a thread of the user's, not this one. (One taken here runs its
    Python handler all the same, but `reclaim run` could no longer tell a terminal's Ctrl-C
    from a kill(2), and the command would get the Ctrl-C twice.)"""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _daemon(target: Callable[[], object], name: str) -> None:
    _start_blocked(threading.Thread(target=target, name=name, daemon=True))


_lock = threading.Lock()
_runs: dict[str, Run] = {}
_pipes: set[int] = set()  # write ends of watchdog pipes, closed in forked children


def current_run(registry: Registry | str | None = None, *, label: str | None = None) -> Run:
    """The run of this process for ``registry`` (by default the configured one), opened on first
    use. ``label`` names a run that opens now (default: ``$RECLAIM_RUN_LABEL``, else the
    program's name); an open run keeps its label."""
    key = registry.location if isinstance(registry, Registry) else registry or default_location()
    with _lock:
        run = _runs.get(key)
        if run is None or run.closed:
            reg = registry if isinstance(registry, Registry) else open_registry(key)
            label = label or settings.LABEL.get() or os.path.basename(sys.argv[0] or "python")
            run = Run(reg, current_identity(), label[:120])
            _runs[key] = run
            _signals.install()
        return run


def existing_run(registry: str | None = None) -> Run | None:
    """The run of this process for ``registry`` if one is open; never opens one."""
    with _lock:
        run = _runs.get(registry or default_location())
        return None if run is None or run.closed else run


def end_run(registry: str | None = None) -> None:
    """Close this process's run for ``registry`` now (as a clean exit would), if one is open."""
    with _lock:
        run = _runs.pop(registry or default_location(), None)
    if run is not None:
        try:
            run.close()
        finally:
            run.registry.close()
            with _lock:
                if not _runs:
                    _signals.restore()


def _close_all() -> None:
    with _lock:
        runs = list(_runs.values())
        _runs.clear()
    for run in runs:
        try:
            run.close()
        except Exception as exc:  # the process is ending; the watchdog or sweeper will finish
            print(f"reclaim: closing run {run.id} failed: {exc}", file=sys.stderr)


def _forget_after_fork() -> None:
    # The child is not the owner: it must neither release nor close the parent's run, nor keep
    # the parent's watchdog pipe open (the parent's death would go unnoticed through the pipe).
    global _lock  # noqa: PLW0603
    _lock = threading.Lock()
    for run in _runs.values():
        run._pipe = None
        run.closed = True
    _runs.clear()
    for fd in list(_pipes):
        with contextlib.suppress(OSError):
            os.close(fd)
    _pipes.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)

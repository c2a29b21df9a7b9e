"""Layer 3 of the crash model: a small process per run that releases what the run still holds
the moment its owner dies, however it dies (SIGKILL, the OOM killer, a crash in C code).

It is started by the run's first acquisition, in a session of its own (so Ctrl-C in the terminal
and a kill of the owner's process group do not reach it), and runs as a plain script: for the
first second of its owner's life it imports nothing but the standard library (a short script's
watchdog costs nothing more), and it never imports any user code.

How it notices the death, without a polling loop:

- a **pidfd** of the owner (Linux >= 5.3) becomes readable when the owner exits; the pid plus
  start time given on the command line make sure the pidfd is of the owner and not of a process
  that got its pid since;
- its standard input is the read end of a **pipe** whose write end only the owner holds. The
  kernel closes it whatever kills the owner. The owner marks it close-on-exec and closes it in
  forked children, so neither an exec'd child nor a forked worker keeps the owner "alive". On a
  clean close the owner writes ``closed`` into it first, and the watchdog exits doing nothing.

When the owner is dead and its run is still open in the registry, the watchdog claims the run
(I6) and releases everything left, last in first out, through the reaper the sweeper uses. If the
watchdog itself is killed, nothing is lost: the run stays in the registry for the next sweep.

While the owner lives, the watchdog also renews the run's lease (every third of it), so a run
whose owner is stopped in a debugger does not look dead to a sweeper on another host; and once
the owner has lived a second, it imports the reaper and opens the registry ahead of time, so a
death is met without loading anything.

Usage (by reclaim itself): ``python _watchdog.py SYS_PATH RUN_ID OWNER_PID OWNER_START EVERY``,
with the registry's location in ``RECLAIM_WATCHDOG_REGISTRY`` (it may hold a password, and a
command line is readable by every user).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

CLOSED = b"closed"

# Without a pidfd (old kernels, or the pidfd could not be opened) the owner is checked this often.
_FALLBACK_POLL_MS = 500


def _start_time(pid: int) -> int | None:
    # The same reading as reclaim._identity.process_state, kept here so that the watchdog imports
    # nothing of reclaim until it has work to do. None when the process is gone or a zombie.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X", b"x"):
        return None
    return int(rest[19])


def wait_for_owner(
    pid: int, start: int, pipe_fd: int, tick: Callable[[], float] | None = None, first: float = 0
) -> bool:
    """Block until the owner closes its run cleanly (True) or dies (False). Meanwhile, while
    the owner lives (stopped in a debugger included), call ``tick`` ``first`` seconds after the
    start and then again after the seconds each call returns."""
    poller = select.poll()
    poller.register(pipe_fd, select.POLLIN | select.POLLHUP)
    pidfd = None
    if os.environ.get("RECLAIM_WATCHDOG_PIDFD") != "0":  # "0": test the pipe-only path
        try:
            pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            pidfd = None
    # The pidfd could belong to a process that took the pid after the owner died: check the
    # start time only after the pidfd pins whatever process has the pid now.
    if _start_time(pid) != start:
        return False
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    next_tick = time.monotonic() + first
    while True:
        timeout = None if pidfd is not None else _FALLBACK_POLL_MS
        if tick is not None:
            until = max(0, int((next_tick - time.monotonic()) * 1000))
            timeout = until if timeout is None else min(timeout, until)
        for fd, _event in poller.poll(timeout):
            if fd == pidfd:
                return False
            data = os.read(pipe_fd, 64)
            if CLOSED in data:
                return True
            if not data:
                # EOF: the owner died, or closed the pipe some other way (an exec). Trust the pid.
                poller.unregister(pipe_fd)
        if _start_time(pid) != start:
            return False
        if tick is not None and time.monotonic() >= next_tick:
            next_tick = time.monotonic() + tick()


def reap(
    location: str,
    run_id: str,
    registry: Any = None,
    *,
    owner: tuple[int, int] | None = None,
) -> None:
    """The owner is dead: release what its run still holds (if it is still open), through
    ``registry`` when one is open already. With ``owner`` (pid, start time), only a run of
    that process: the watchdog starts before its run's row is written, and an id another
    process drew first must never be taken for ours (I4)."""
    from reclaim._reaper import reap_run  # noqa: PLC0415  (imported ahead by _Ready, or now)
    from reclaim._registry import RunState, open_registry  # noqa: PLC0415  (see _Ready)

    if registry is None:
        try:
            registry = open_registry(location, create=False)
        except FileNotFoundError:
            return
    try:
        run = registry.get_run(run_id)
        if run is None or run.state not in (RunState.OPEN, RunState.REAPING):
            return  # closed cleanly (a death right after close), or reaped by somebody else
        if owner is not None and (run.owner.pid, run.owner.start_time) != owner:
            return  # the id is another process's run: ours died before its row was written
        registry.postpone_checkpoints()  # to the close below, after the last release
        reap_run(registry, run, actor="watchdog")
    finally:
        registry.close()


#: Seconds the owner must have lived before the watchdog imports reclaim, opens the registry
#: and loads the backends of what the run holds, ahead of its death: a short script never pays
#: for it (about 7 MiB and a few hundred ms of CPU), a test session does, and its death is
#: then met without loading anything.
IMPORT_AHEAD_AFTER = 1.0


class _Ready:
    """What the watchdog does while its owner lives, on its timer: once the owner has lived
    ``IMPORT_AHEAD_AFTER`` seconds, import the reaper and open the registry, so nothing is left
    to load when the owner dies; then renew the run's lease every ``every`` seconds. A renewal
    that fails (the registry is away) is tried again at the next one."""

    def __init__(self, location: str, run_id: str, every: float) -> None:
        self.location, self.run_id, self.every = location, run_id, every
        self.registry: Any = None
        self._imported = False
        self._kinds: set[str] = set()

    def tick(self) -> float:
        try:
            if not self._imported:
                import reclaim._reaper  # noqa: F401, PLC0415  (see the class docstring)

                self._imported = True
            if self.registry is None:
                from reclaim._registry import open_registry  # noqa: PLC0415  (see the class docstring)

                self.registry = open_registry(self.location, create=False)
            self.registry.heartbeat(self.run_id)
            self._load_backends()
        except Exception:  # noqa: S110  (away for now: the next tick retries)
            pass
        return self.every

    def _load_backends(self) -> None:
        """Import the backends of the kinds the run holds now (the entry-point scan and the
        driver's import would otherwise come after the death)."""
        from reclaim.backends import load_backend  # noqa: PLC0415  (see the class docstring)

        for kind in {r.kind for r in self.registry.resources(self.run_id)} - self._kinds:
            self._kinds.add(kind)
            with contextlib.suppress(Exception):  # reported at release, where it matters
                load_backend(kind)

    def take_registry(self) -> Any:
        registry, self.registry = self.registry, None
        return registry

    def close(self) -> None:
        if self.registry is not None:
            with contextlib.suppress(Exception):  # nothing to do about it: the owner is gone
                self.registry.close()


def main(argv: list[str]) -> int:
    sys_path, run_id, pid, start, every = argv[1:6]
    # Run as a script, Python put this file's folder (reclaim/) first on sys.path, where its
    # modules could shadow others; what reclaim needs is the folder that contains the package.
    sys.path[0] = sys_path
    # reclaim._settings.WATCHDOG_REGISTRY, by name: nothing of reclaim is imported yet.
    location = os.environ["RECLAIM_WATCHDOG_REGISTRY"]
    ready = _Ready(location, run_id, float(every))
    try:
        if wait_for_owner(
            int(pid), int(start), 0, ready.tick, min(IMPORT_AHEAD_AFTER, ready.every)
        ):
            return 0
        registry = ready.take_registry()
    finally:
        ready.close()
    reap(location, run_id, registry, owner=(int(pid), int(start)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

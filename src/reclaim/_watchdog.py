"""Layer 3 of the crash model: a small process per run that releases what the run still holds
the moment its owner dies, however it dies (SIGKILL, the OOM killer, a crash in C code).

It is started by the run's first acquisition, in a session of its own (so Ctrl-C in the terminal
and a kill of the owner's process group do not reach it), and runs as a plain script: until its
owner dies it has imported nothing but the standard library, and never any user code.

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

Usage (by reclaim itself): ``python _watchdog.py SYS_PATH REGISTRY RUN_ID OWNER_PID OWNER_START``
"""

from __future__ import annotations

import os
import select
import sys

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


def wait_for_owner(pid: int, start: int, pipe_fd: int) -> bool:
    """Block until the owner closes its run cleanly (True) or dies (False)."""
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
    while True:
        timeout = None if pidfd is not None else _FALLBACK_POLL_MS
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


def reap(location: str, run_id: str) -> None:
    """The owner is dead: release what its run still holds (if it is still open)."""
    from reclaim._reaper import reap_run  # noqa: PLC0415  (imported only when there is work)
    from reclaim._registry import RunState, open_registry  # noqa: PLC0415  (reclaim is imported only once the owner is dead)

    try:
        registry = open_registry(location, create=False)
    except FileNotFoundError:
        return
    try:
        run = registry.get_run(run_id)
        if run is None or run.state not in (RunState.OPEN, RunState.REAPING):
            return  # closed cleanly (a death right after close), or reaped by somebody else
        reap_run(registry, run, actor="watchdog")
    finally:
        registry.close()


def main(argv: list[str]) -> int:
    sys_path, location, run_id, pid, start = argv[1:6]
    # Run as a script, Python put this file's folder (reclaim/) first on sys.path, where its
    # modules could shadow others; what reclaim needs is the folder that contains the package.
    sys.path[0] = sys_path
    if wait_for_owner(int(pid), int(start), 0):
        return 0
    reap(location, run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

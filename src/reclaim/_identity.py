"""Who owns a run, and is that owner still alive?

An owner is identified by host + boot id + pid namespace + pid + process start time (I4). The pid
alone is not enough: pids are reused, and a sweeper that trusted a reused pid would leave a dead
run's resources behind forever (or, worse, a pid check that only looked at "exists" would call a
stranger the owner). The start time is field 22 of ``/proc/<pid>/stat`` in clock ticks since boot,
so (boot id, pid, start time) is unique for the life of the machine.

This module imports only the standard library: the watchdog uses it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Final

from reclaim import _settings as settings

__all__ = ["Identity", "ProcessState", "current_identity", "process_state", "start_time_of"]

_BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"
_PF_KTHREAD: Final = 0x00200000  # the kernel thread flag, include/linux/sched.h


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """The owner of a run: enough to tell, from anywhere, whether it still lives."""

    host: str
    boot_id: str
    pidns: str
    pid: int
    start_time: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identity:
        return cls(
            host=str(data["host"]),
            boot_id=str(data["boot_id"]),
            pidns=str(data.get("pidns", "")),
            pid=int(data["pid"]),
            start_time=int(data["start_time"]),
        )

    def local_verdict(self) -> bool | None:
        """Is the owner alive, as far as this process can tell by itself?

        True or False when the owner ran on this kernel; None when it cannot be checked from here
        (another host, or another pid namespace on this one): the caller then trusts the run's
        lease. A run of an earlier boot of this host is dead. Otherwise the pid must exist, not be
        a zombie, and carry the recorded start time: a reused pid is somebody else.
        """
        host, boot_id, pidns = _machine()
        if self.host != host:
            return None
        if self.boot_id != boot_id:
            return False
        if self.pidns != pidns:
            return None
        state = process_state(self.pid)
        return state is not None and state.alive and state.start_time == self.start_time


class ProcessState:
    """What ``/proc/<pid>/stat`` says of a process."""

    # A plain class: a dataclass costs about 0.4 ms to define, on the path of every process
    # that acquires (issue 15).
    __slots__ = ("flags", "pgid", "pid", "ppid", "start_time", "state")

    def __init__(
        self, *, pid: int, state: str, ppid: int, pgid: int, start_time: int, flags: int = 0
    ) -> None:
        self.pid = pid
        self.state = state  # one letter: R running, S sleeping, Z zombie, ...
        self.ppid = ppid
        self.pgid = pgid
        self.start_time = start_time
        self.flags = flags  # the kernel's PF_* flags of the task

    def __repr__(self) -> str:
        return f"<process {self.pid} {self.state}, parent {self.ppid}, group {self.pgid}>"

    @property
    def kernel_thread(self) -> bool:
        """A kernel thread: no memory of its own, so no environment, ever."""
        return bool(self.flags & _PF_KTHREAD)

    @property
    def alive(self) -> bool:
        # A zombie has exited; only its exit status waits for a parent that may never come (on
        # machines whose pid 1 does not reap, zombies of dead owners stay forever).
        return self.state not in ("Z", "X", "x")


def process_state(pid: int) -> ProcessState | None:
    """The process ``pid`` as the kernel sees it now, or None when there is none."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state); field 9 (flags) is rest[6]; field 22 (start time) is rest[19].
    return ProcessState(
        pid=pid,
        state=rest[0].decode(),
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        start_time=int(rest[19]),
        flags=int(rest[6]),
    )


def start_time_of(pid: int) -> int | None:
    state = process_state(pid)
    return None if state is None else state.start_time


_machine_cache: tuple[str, str, str] | None = None
_machine_pid = -1


def _machine() -> tuple[str, str, str]:
    global _machine_cache, _machine_pid  # noqa: PLW0603  (cached per process; reset on fork)
    if _machine_cache is None or _machine_pid != os.getpid():
        try:
            with open(_BOOT_ID_PATH) as f:
                boot_id = f.read().strip()
        except OSError:
            # No /proc (not Linux): the boot time stands in for the boot id.
            boot_id = f"boot-{int(time.time() - time.monotonic())}"
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        # The override lets tests play several hosts on one machine (docs/settings.md).
        # uname's node name is what gethostname(2) returns, without importing socket (a few
        # ms, on the watchdog's path and every command's).
        host = settings.HOST_ID.get() or os.uname().nodename
        _machine_cache = (host, boot_id, pidns)
        _machine_pid = os.getpid()
    return _machine_cache


def current_identity() -> Identity:
    """The identity of the calling process."""
    host, boot_id, pidns = _machine()
    pid = os.getpid()
    start = start_time_of(pid)
    if start is None:  # pragma: no cover - only without /proc
        raise RuntimeError("reclaim needs /proc to identify processes (Linux)")
    return Identity(host=host, boot_id=boot_id, pidns=pidns, pid=pid, start_time=start)

"""Child processes: ``Process(argv, **popen_kwargs)`` gives a running ``subprocess.Popen``.

The child starts in a session and process group of its own, with ``RECLAIM_RESOURCE=<name>`` in
its environment. Release sends SIGTERM to everything that is still the resource's, waits a grace
period, then sends SIGKILL (the escalation trio's ``deliver_cancel`` uses); both are overridable.

What counts as "the resource's" is decided from the record alone (I2), and never by pid alone:

- the leader, when its pid still carries the recorded start time;
- the members of its process group, when the leader is either that same process or gone (a
  group's number cannot be given to a new process while any member lives, so a group whose
  leader's pid now has another start time is somebody else's);
- any process of this machine whose environment carries the resource's marker: grandchildren that
  left the group with ``setsid``, and the child of a process killed after ``fork`` but before
  its pid was journaled (the planned-but-never-recorded case of I1).

A pid and start time are not proof enough (I8): a damaged or hostile record can carry the pid and
start time of a user's process beside a valid reclaim name. So before anything is signalled, the
leader must carry the marker of exactly the record's name in its environment; when the leader is
gone, every member of its group must carry it too (a group outlives its leader, and a record can
name anyone's group). Otherwise the record is refused with a ``ForeignNameError`` and nothing is
sent. A leader whose environment is unreadable (another user's process) is refused likewise. So
a child that drops the marker from its environment at ``exec`` (``env -i``) is not released by
its record: as the leader, always; as a member of the group, once its leader is gone. reclaim
refuses and says so (the entry stays failed) rather than guess.

Every signal goes through a pidfd opened *before* the start time is checked again, so a pid
reused between the scan and the signal is never hit. Zombies count as gone: they have exited, and
on machines whose pid 1 does not reap, the zombies of a dead owner's children stay forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Final

from reclaim._identity import ProcessState, current_identity, process_state, start_time_of
from reclaim.backends import Backend, ForeignNameError, ReclaimName, Record, refuse

__all__ = ["MARKER_ENV", "Process"]

#: The environment variable that marks every process started for a resource.
MARKER_ENV: Final = "RECLAIM_RESOURCE"

_KILL_WAIT: Final = 5.0  # seconds to wait for SIGKILL to take effect before calling it a failure
#: Seconds a process whose environment reads empty is watched before it counts as not ours:
#: a process exiting after our SIGTERM reads empty for a moment before it is gone.
_EMPTY_ENV_WAIT: Final = 1.0


class Process(Backend["subprocess.Popen[Any]"]):
    """A child process in its own process group, stopped and reaped at release.

    Args:
        argv: the program and its arguments (no shell).
        grace: seconds between the polite signal and SIGKILL.
        term_signal: the polite signal, SIGTERM by default.
        **popen_kwargs: passed to ``subprocess.Popen`` (``stdout``, ``env``, ``cwd``, ...).
            ``start_new_session`` and ``process_group`` are reclaim's to set.
    """

    kind = "process"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        grace: float = 5.0,
        term_signal: int = signal.SIGTERM,
        **popen_kwargs: Any,
    ) -> None:
        if isinstance(argv, str | bytes) or not argv:
            raise TypeError("Process argv must be a non-empty list of strings, not a shell line")
        for key in ("start_new_session", "process_group"):
            if key in popen_kwargs:
                raise ValueError(f"Process sets {key} itself: the child needs a group of its own")
        self.argv = [os.fspath(a) for a in argv]
        self.grace = float(grace)
        self.term_signal = int(term_signal)
        self.popen_kwargs = popen_kwargs

    def plan(self, name: str) -> Record:
        return {
            "name": name,
            "program": os.path.basename(self.argv[0]),
            "boot_id": current_identity().boot_id,
            "grace": self.grace,
            "signal": self.term_signal,
        }

    def acquire(self, name: str) -> tuple[subprocess.Popen[Any], Record]:
        record = self.plan(name)
        kwargs = dict(self.popen_kwargs)
        env = dict(kwargs.pop("env", None) or os.environ)
        env[MARKER_ENV] = name
        popen: subprocess.Popen[Any] = subprocess.Popen(
            self.argv, env=env, start_new_session=True, **kwargs
        )
        # The child is ours and unreaped, so its pid cannot be reused before we read this.
        started = start_time_of(popen.pid)
        record.update(pid=popen.pid, pgid=popen.pid, start_time=started)
        # Popen returns once exec has closed the child's descriptors, a moment before the kernel
        # has set up the new program's environment: until then the marker cannot be read, and a
        # release in that moment could not prove the child is ours.
        _wait_past_exec(popen.pid, f"{MARKER_ENV}={name}".encode() + b"\0")
        return popen, record

    @classmethod
    def release(cls, record: Record) -> None:
        if record.get("boot_id") not in (None, current_identity().boot_id):
            return  # every process of an earlier boot is gone
        grace = float(record.get("grace", 5.0))
        sig = int(record.get("signal", signal.SIGTERM))
        for _round in range(3):  # members may fork while we stop them; look again after
            targets = _find(record)
            if not targets:
                return
            _signal_all(targets, sig)
            remaining = _wait_gone(targets, grace)
            if remaining:
                _signal_all(remaining, signal.SIGKILL)
                remaining = _wait_gone(remaining, _KILL_WAIT)
            if remaining:
                pids = ", ".join(str(p) for p in sorted(remaining))
                raise OSError(f"processes {pids} still run after SIGKILL")
        if _find(record):
            raise OSError("the process group keeps starting new processes")

    @classmethod
    def exists(cls, record: Record) -> bool:
        if record.get("boot_id") not in (None, current_identity().boot_id):
            return False
        return bool(_find(record))

    @classmethod
    def describe(cls, record: Record) -> str:
        pid = record.get("pid")
        return f"{record.get('program', '?')} (pid {pid})" if pid else str(record.get("name"))

    def discard(self, value: subprocess.Popen[Any]) -> None:
        # Reap our own child so it does not stay a zombie, and give Popen its return code.
        with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
            value.wait(timeout=1.0)


def _find(record: Record) -> dict[int, int]:
    """Live processes that belong to the resource: pid -> start time.

    Raises:
        ForeignNameError: the record's pid (or the group it names) is a live process that does
            not carry the resource's marker: not reclaim's, so nothing may be signalled.
    """
    found: dict[int, int] = {}
    name = str(record["name"])
    pid, started = _checked_ids(record)
    pgid = pid
    marker = f"{MARKER_ENV}={name}".encode() + b"\0"
    group_is_ours, group_may_be_ours = _leader(record, pid, started, marker, found)
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        other = int(entry)
        if other == me or other in found:
            continue
        state = process_state(other)
        if state is None or not state.alive:
            continue
        in_group = (group_is_ours or group_may_be_ours) and (
            state.pgid == pgid and state.start_time >= (started or 0)
        )
        if in_group and group_is_ours:
            found[other] = state.start_time
            continue
        if not in_group:
            verdict = _marked(other, marker)
            if verdict is None and _in_exec(other, state):
                verdict = _whose(other, state.start_time, marker) == "ours"
            if verdict:  # escaped the group (setsid) but carries the marker
                found[other] = state.start_time
            continue
        member = _whose(other, state.start_time, marker)
        if member == "foreign":
            raise _foreign(record, "pgid", pgid, marker, member=other)
        if member == "ours":
            found[other] = state.start_time
    return found


def _leader(
    record: Record, pid: int | None, started: int | None, marker: bytes, found: dict[int, int]
) -> tuple[bool, bool]:
    """(the group is ours: its leader lives, is the recorded process and carries the marker;
    the group may be ours: the leader is gone, so each member must prove itself)."""
    if pid is None or started is None:
        return False, False
    leader = process_state(pid)
    if leader is None or not leader.alive:
        return False, leader is None or leader.start_time == started
    if leader.start_time != started:
        return False, False  # the pid was reused: the recorded process is gone
    verdict = _whose(leader.pid, started, marker)
    if verdict == "foreign":
        raise _foreign(record, "pid", leader.pid, marker)
    if verdict == "ours":
        found[leader.pid] = leader.start_time
    return True, False  # ours, or it died while we looked: its group was ours


def _checked_ids(record: Record) -> tuple[int | None, int | None]:
    """The record's pid and start time, refused unless they can only name its own child."""
    pid = record.get("pid")
    started = record.get("start_time")
    for field, value in (("pid", pid), ("start_time", started)):
        if value is not None and (type(value) is not int or value <= 0):
            raise refuse(Process.kind, field, value, "a positive integer", name=_parsed(record))
    pgid = record.get("pgid", pid)
    if pid is not None and pgid != pid:
        # The child leads a session of its own, so its group is its pid: a record naming another
        # group would reach somebody else's processes.
        raise refuse(Process.kind, "pgid", pgid, f"exactly the pid {pid}", name=_parsed(record))
    return pid, started


def _foreign(
    record: Record, field: str, value: object, marker: bytes, *, member: int | None = None
) -> ForeignNameError:
    """The refusal of a record whose process (or group member) is not reclaim's."""
    who = "the process" if member is None else f"its member {member}"
    shown = marker[:-1].decode(errors="replace")
    wanted = f"a process reclaim started ({who} has no {shown} in its environment)"
    return refuse(Process.kind, field, value, wanted, name=_parsed(record))


def _parsed(record: Record) -> ReclaimName | None:
    return Process.name_style.parse(record.get("name"))


def _marked(pid: int, marker: bytes) -> bool | None:
    """Does the process carry the marker? None when its environment reads empty: a process that
    is exiting (its memory is already gone) or one that cleared its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return False  # another user's process: not provably ours
    if not environ:
        return None
    return environ.startswith(marker) or (b"\0" + marker) in environ


def _in_exec(pid: int, state: ProcessState) -> bool:
    """Is the process between the two halves of an ``exec``? Its new memory holds neither
    arguments nor environment yet. A kernel thread, or a process that only cleared its
    environment (``env -i``), still has its command line."""
    if state.kernel_thread:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return not f.read(1)
    except OSError:
        return False


def _wait_past_exec(pid: int, marker: bytes) -> None:
    """Wait, bounded, until the new child's environment reads (or the child is gone)."""
    deadline = time.monotonic() + _EMPTY_ENV_WAIT
    while _marked(pid, marker) is None and time.monotonic() < deadline:
        state = process_state(pid)
        if state is None or not state.alive:
            return
        time.sleep(0.001)


def _whose(pid: int, started: int, marker: bytes) -> str:
    """ "ours", "foreign" or "gone". A process whose environment reads empty is watched for a
    moment: one that is exiting (say, after our own SIGTERM) is gone, one that stays with an
    empty environment cannot be shown to be ours and is refused."""
    deadline = time.monotonic() + _EMPTY_ENV_WAIT
    while True:
        verdict = _marked(pid, marker)
        if verdict is not None:
            return "ours" if verdict else "foreign"
        state = process_state(pid)
        if state is None or not state.alive or state.start_time != started:
            return "gone"
        if time.monotonic() > deadline:
            return "foreign"
        time.sleep(0.005)


def _signal_all(targets: dict[int, int], sig: int) -> None:
    for pid, started in targets.items():
        _send(pid, started, sig)


def _send(pid: int, started: int, sig: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # pragma: no cover - kernels before 5.3
        if start_time_of(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return
    try:
        # The pidfd pins the process: if the start time still matches now, the signal reaches
        # exactly the process we found, never one that got its pid since.
        if start_time_of(pid) == started:
            signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _wait_gone(targets: dict[int, int], timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        remaining = {}
        for pid, started in targets.items():
            state = process_state(pid)
            if state is not None and state.alive and state.start_time == started:
                remaining[pid] = started
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(delay)
        delay = min(delay * 2, 0.05)

"""Adversaries of ``process``: a user's ``sleep 60`` children, started outside reclaim.

Process lists no leftovers (it has no server to list), so only its records are tried: a record
may hold a valid reclaim name beside the pid and start time of a user's process, or the number of
a user's process group whose leader is gone; reclaim must refuse each before any signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest

from adversaries import Adversary, Factory, Foreign
from reclaim._identity import process_state, start_time_of
from reclaim.backends.process import MARKER_ENV

_VALID = "rc_0badf00d_t0a1b2_1"


def _user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    env.update(extra)
    return env


def _running(pid: int, started: int | None) -> bool:
    state = process_state(pid)
    return state is not None and state.alive and state.start_time == started


def _kill(pid: int, started: int | None) -> None:
    if _running(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def process(request: pytest.FixtureRequest) -> Adversary:
    # The user's own process: a plain child of the test, no marker, in the test's group.
    user = subprocess.Popen(["sleep", "60"], env=_user_env())
    user_started = start_time_of(user.pid)

    def stop_user() -> None:
        user.kill()
        user.wait()

    request.addfinalizer(stop_user)

    # A user's process group whose leader has exited: its member lives on in the group that
    # still bears the dead leader's number.
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!"],
        env=_user_env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert shell.stdout is not None
    with shell.stdout:
        orphan = int(shell.stdout.readline())
    shell_started = start_time_of(shell.pid)
    shell.wait()  # reaped: the leader's pid is gone, the group's number is not
    orphan_started = start_time_of(orphan)
    request.addfinalizer(lambda: _kill(orphan, orphan_started))

    # Objects "named" like reclaim's, for the interface: a sleep carrying the marker.
    made: dict[str, subprocess.Popen[bytes]] = {}

    def create(name: str) -> None:
        made[name] = subprocess.Popen(["sleep", "60"], env=_user_env(**{MARKER_ENV: name}))

    def present(name: str) -> bool:
        proc = made.get(name)
        return proc is not None and proc.poll() is None

    def remove(name: str) -> None:
        proc = made.pop(name, None)
        if proc is not None:
            proc.kill()
            proc.wait()

    def user_present() -> bool:
        return user.poll() is None and _running(user.pid, user_started)

    return Adversary(
        kind="process",
        leftovers_url=None,
        create=create,
        present=present,
        remove=remove,
        foreign=[
            Foreign(
                "a user's process, by a record with a name that is not reclaim's",
                {"name": "sleep", "pid": user.pid, "pgid": user.pid, "start_time": user_started},
                present=user_present,
            ),
            Foreign(
                "a user's process, by a valid reclaim name and its real pid and start time",
                {"name": _VALID, "pid": user.pid, "pgid": user.pid, "start_time": user_started},
                present=user_present,
            ),
            Foreign(
                "the user's process group, by a pgid that is not the record's pid",
                {
                    "name": _VALID,
                    "pid": user.pid,
                    "pgid": os.getpgid(user.pid),
                    "start_time": user_started,
                },
                present=user_present,
            ),
            Foreign(
                "a user's process group whose leader is gone",
                {"name": _VALID, "pid": shell.pid, "start_time": shell_started},
                present=lambda: _running(orphan, orphan_started),
            ),
        ],
    )


KINDS: dict[str, Factory] = {"process": process}

"""Running one command as a run's child: ``reclaim run``'s supervision of the process it starts.

The command is started in reclaim's process group, and the signals sent to reclaim are passed on
to it until it ends (see :func:`supervise`); its exit status becomes reclaim's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

__all__ = ["supervise"]

#: ``si_code`` of a signal the kernel sent (a terminal's Ctrl-C), as opposed to kill(2).
_SI_KERNEL: Final = 0x80

_FORWARDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervise(argv: list[str], env: dict[str, str], *, say: Callable[[str], None]) -> int:
    """Start the command, pass signals on to it until it ends, and return its exit status.

    Signals are taken with ``sigtimedwait`` while the command runs, because the way a signal was
    sent matters for SIGINT: a Ctrl-C on the terminal reaches the whole foreground process
    group, so the command (in our group) has it already, and a second one would interrupt its
    clean-up (layer 1). A SIGINT sent with kill(2) to reclaim alone is passed on. SIGTERM and
    SIGHUP are always passed on. Signals that were ignored when reclaim started stay ignored.
    """
    proc: subprocess.Popen[bytes] | None = None
    early: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Until the mask below is set, and for signals another thread of ours takes: the way
        # they were sent is unknown, so they are passed on.
        if proc is None:
            early.append(signum)
        else:
            _forward(proc, signum, from_terminal=False)

    previous: dict[int, Any] = {}
    for sig in _FORWARDED:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        try:
            proc = subprocess.Popen(argv, env=env)
        except (FileNotFoundError, NotADirectoryError):
            say(f"command not found: {argv[0]!r}; check its name and PATH")
            return 127
        except OSError as exc:
            say(f"cannot run {shlex.join(argv)!r}: {exc.strerror or exc}")
            return 126
        waited = {*previous, signal.SIGCHLD}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        try:
            for signum in early:
                _forward(proc, signum, from_terminal=False)
            while proc.poll() is None:
                info = signal.sigtimedwait(waited, 0.1)
                if info is not None and info.si_signo != signal.SIGCHLD:
                    _forward(proc, info.si_signo, from_terminal=info.si_code == _SI_KERNEL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    code = proc.returncode
    return 128 - code if code < 0 else code


def _forward(proc: subprocess.Popen[bytes], signum: int, *, from_terminal: bool) -> None:
    if from_terminal and signum == signal.SIGINT:
        with contextlib.suppress(OSError):
            if os.getpgid(proc.pid) == os.getpgrp():
                return  # the terminal sent it to the command too
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)

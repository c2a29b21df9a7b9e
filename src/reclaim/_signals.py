"""Layer 2 of the crash model: signals unwind the stack, but never split bookkeeping (I9).

SIGTERM and SIGHUP become :class:`Terminated` (a KeyboardInterrupt) while a run is open, where no
handler of the user's is installed, so that ``with`` blocks, ``finally`` and pytest's teardown run
as they do for Ctrl-C (layer 1).

A signal's exception arrives between any two bytecodes, which is fatal in two places: inside a
registry transaction (it would stay open, holding the write lock, after ``BEGIN IMMEDIATE``) and
inside a release between its claim and its outcome (the row would stay ``releasing`` while the
resource stays on disk). Those are :func:`critical` sections: a signal that arrives inside one
is noted and its exception raised when the outermost section ends, never lost. trio protects its
own bookkeeping from KeyboardInterrupt the same way. SIGINT is handled so only while a run is
open and only where Python's default handler is installed (asyncio's runner and a user's own
handler are left alone); outside sections it behaves exactly as the default. The handler stays
installed for the whole run: swapping it per section would let a signal that was already on its
way be run by the default handler, at any instant, after the section.

Only the main thread runs signal handlers, so sections in other threads need no protection and
cost nothing. Standard library only: the registry and the watchdog import this.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; CPython's own C module
import functools
import inspect
import os
import signal
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Final, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Terminated", "critical", "install", "protected", "restore"]

#: The signals that unwind a run (while one is open): SIGINT unwinds on its own.
UNWINDING: Final = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGHUP arrives while a run is open.

    A KeyboardInterrupt, so that everything that unwinds on Ctrl-C (``with`` blocks, pytest's
    teardown, ``finally``) unwinds on SIGTERM too, and ``except Exception`` does not swallow it.
    A signal that arrives while reclaim writes its registry or releases a resource is raised when
    that step ends (I9). Every signal is raised: a second one during unwinding stops the
    in-process releases, and the watchdog finishes them once the process is gone.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


_protected: set[CodeType] = set()  # code of functions that run as critical sections whole
_installed: dict[int, Any] = {}  # signal -> the handler that was there before ours
_depth = 0  # critical sections open in the main thread
_pending: int | None = None  # the first signal that arrived inside one


def _exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending  # noqa: PLW0603
    if _depth > 0 or _inside_protected(frame):
        if _pending is None:
            _pending = signum
        return
    raise _exception(signum)


def _inside_protected(frame: FrameType | None) -> bool:
    # A signal can land on the first bytecodes of a protected function, before its critical
    # section is entered: the frames say so. (Signals are rare; walking the stack is cheap.)
    while frame is not None:
        if frame.f_code in _protected:
            return True
        frame = frame.f_back
    return False


def protected(func: F) -> F:
    """Run ``func`` (sync or async) as one critical section, from its first bytecode: for
    ``__exit__`` methods, which must never be cut before they have released everything."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with critical():
                return await func(*args, **kwargs)

        _protected.update((func.__code__, _code(run_async)))
        return run_async  # type: ignore[return-value]

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with critical():
            return func(*args, **kwargs)

    _protected.update((func.__code__, _code(run)))
    return run  # type: ignore[return-value]


def _code(func: object) -> CodeType:
    code = getattr(func, "__code__", None)
    assert isinstance(code, CodeType)
    return code


class _Critical:
    """The context manager :func:`critical` returns: one object, since the state is global.
    A class rather than a generator: registry writes enter it on every call (issue 15)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth  # noqa: PLW0603
        if threading.get_ident() != _main_ident:
            return  # signal handlers run in the main thread only
        if _depth == 0 and _raw_getsignal(_SIGINT) is signal.default_int_handler:
            # Ctrl-C must wait too, also where no run is open (the CLI's sweep). Installed for
            # good: outside sections ours raises KeyboardInterrupt exactly as the default does.
            signal.signal(signal.SIGINT, _on_signal)
        _depth += 1

    def __exit__(self, *_exc: object) -> None:
        global _depth, _pending  # noqa: PLW0603
        if threading.get_ident() != _main_ident:
            return
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise _exception(signum)


# The C function: signal.getsignal turns the handler into an enum first, which costs more
# than the rest of a critical section (issue 15).
_raw_getsignal: Final[Callable[[int], object]] = _signal.getsignal
_SIGINT: Final = int(signal.SIGINT)
_CRITICAL: Final = _Critical()
_main_ident = threading.main_thread().ident


def critical() -> _Critical:
    """A section that no signal's exception can split; the signal is raised when it ends."""
    return _CRITICAL


def install() -> None:
    """While a run is open: SIGTERM and SIGHUP become :class:`Terminated`, and all three (with
    SIGINT) wait for critical sections to end. Only where the default handler is installed
    (SIG_DFL, or Python's ``default_int_handler`` for SIGINT): a handler of the user's, asyncio's
    runner or SIG_IGN is left alone. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (*UNWINDING, signal.SIGINT):
        if signum in _installed:
            continue
        current = signal.getsignal(signum)
        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        if current is default:
            signal.signal(signum, _on_signal)
            _installed[signum] = current


def restore() -> None:
    """Put back the handlers :func:`install` replaced."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_installed.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)
        del _installed[signum]


def reset_after_fork() -> None:
    """A forked child starts with no section open and nothing pending; the thread that forked
    is its main thread."""
    global _depth, _pending, _main_ident  # noqa: PLW0603
    _depth, _pending = 0, None
    _main_ident = threading.main_thread().ident


os.register_at_fork(after_in_child=reset_after_fork)

"""This process's ownership of resources: the run.

A run is opened lazily, at the first acquisition in a process, and closed when the process ends
cleanly (``atexit``): whatever is still held then is released, last in first out, and the run's
row goes. A process that does not end cleanly leaves its run open with its owner dead, and the
watchdog or the next sweep releases what it held.

A forked child is not the owner of its parent's run: after ``fork`` the child starts with no run
and opens its own at its first acquisition.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import sys
import threading
from typing import Final

from reclaim._identity import Identity, current_identity
from reclaim._reaper import release_resource
from reclaim._registry import Registry, ResourceState, default_location, open_registry
from reclaim.backends import make_name

__all__ = ["Run", "current_run", "end_run", "existing_run"]

#: Environment variable naming the run a process belongs to (``reclaim run``, xdist workers).
PARENT_ENV: Final = "RECLAIM_PARENT_RUN"
LABEL_ENV: Final = "RECLAIM_RUN_LABEL"


class Run:
    """One process's claim on the resources it acquires."""

    def __init__(self, registry: Registry, owner: Identity, label: str) -> None:
        self.registry = registry
        self.owner = owner
        self._seq = itertools.count(1)
        parent = os.environ.get(PARENT_ENV) or None
        for _ in range(5):
            run_id = secrets.token_hex(4)
            try:
                registry.open_run(run_id, owner, label=label, parent_id=parent)
            except Exception as exc:  # an id collision: draw again
                if "UNIQUE" not in str(exc):
                    raise
                continue
            self.id = run_id
            break
        else:  # pragma: no cover - five collisions in 2**32
            raise RuntimeError("could not draw a unique run id")
        self.closed = False

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

    def __repr__(self) -> str:
        return f"<Run {self.id} pid={self.owner.pid} registry={self.registry.location!r}>"


_lock = threading.Lock()
_runs: dict[str, Run] = {}


def current_run(registry: Registry | str | None = None) -> Run:
    """The run of this process for ``registry`` (by default the configured one), opened on first
    use."""
    key = registry.location if isinstance(registry, Registry) else registry or default_location()
    with _lock:
        run = _runs.get(key)
        if run is None or run.closed:
            reg = registry if isinstance(registry, Registry) else open_registry(key)
            label = os.environ.get(LABEL_ENV) or os.path.basename(sys.argv[0] or "python")
            run = Run(reg, current_identity(), label[:120])
            _runs[key] = run
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
    # The child is not the owner: it must neither release nor close the parent's run.
    global _lock  # noqa: PLW0603
    _lock = threading.Lock()
    _runs.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)

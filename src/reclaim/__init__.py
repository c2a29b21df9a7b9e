"""reclaim: what a test creates outside its process is deleted again, even after SIGKILL.

General layout:

- ``_registry/``: the durable journal of runs, resources and events (SQLite by default).
- ``_identity.py``: who owns a run and whether that owner still lives.
- ``_run.py``: this process's run, opened at the first acquisition, closed at a clean exit.
- ``_fixture.py``: :class:`Fixture`, the user's API (layer 1 of the crash model).
- ``_reaper.py``: release one resource, one dead run, or sweep every dead run (layer 4).
- ``backends/``: the backend contract (for backend authors) and the built-in kinds.
- ``testing.py``: ``check_backend``, the conformance kit for backends.
- ``_watchdog.py``: the per-run watchdog process (layer 3); standard library only.
- ``_cli.py``: ``reclaim status``, ``sweep``, ``forget``, ``watch``, ``run``, ``acquire``,
  ``release``, ``demo``.

This module re-exports the friendly public API.
"""

from __future__ import annotations

from reclaim._errors import (
    AcquireError,
    BackendError,
    BackendNotFoundError,
    FixtureStateError,
    MissingExtraError,
    ReclaimError,
    ReclaimWarning,
    RegistryCorruptError,
    RegistryError,
    RegistryVersionError,
    ReleaseError,
)
from reclaim._fixture import Fixture
from reclaim._reaper import RetryPolicy, SweepReport, sweep
from reclaim._registry import ResourceState, RunState, default_location, open_registry

__all__ = [
    "AcquireError",
    "BackendError",
    "BackendNotFoundError",
    "Fixture",
    "FixtureStateError",
    "MissingExtraError",
    "ReclaimError",
    "ReclaimWarning",
    "RegistryCorruptError",
    "RegistryError",
    "RegistryVersionError",
    "ReleaseError",
    "ResourceState",
    "RetryPolicy",
    "RunState",
    "SweepReport",
    "__version__",
    "default_location",
    "open_registry",
    "sweep",
]

__version__ = "0.1.0"

for _name in ("Fixture", "ResourceState", "RunState", "RetryPolicy", "SweepReport"):
    globals()[_name].__module__ = "reclaim"
del _name

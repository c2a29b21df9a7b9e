"""reclaim: what a test creates outside its process is deleted again, even after SIGKILL.

General layout:

- ``_registry/``: the durable journal of runs, resources and events (SQLite by default).
- ``_identity.py``: who owns a run and whether that owner still lives.
- ``_run.py``: this process's run, opened at the first acquisition, closed at a clean exit.
- ``_fixture.py``: :class:`Fixture`, the user's API (layer 1 of the crash model).
- ``_signals.py``: signals unwind the stack but never split bookkeeping (layer 2).
- ``_reaper.py``: release one resource, or everything of one dead run (every layer uses it).
- ``_sweep.py``, ``_leftovers.py``: the sweep of dead runs, and the registry-less pass (layer 4).
- ``_acquire.py``: the journal steps of an acquisition, for Fixture and ``reclaim acquire``.
- ``_settings.py``: every environment variable, its default and meaning.
- ``backends/``: the backend contract (for backend authors) and the built-in kinds.
- ``testing.py``: ``check_backend``, the conformance kit for backends.
- ``_watchdog.py``: the per-run watchdog process (layer 3); standard library only.
- ``_cli.py``: ``reclaim status``, ``sweep``, ``forget``, ``watch``, ``run``, ``acquire``,
  ``release``, ``demo``.

This module re-exports the friendly public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reclaim._errors import (
        AcquireError,
        BackendError,
        BackendNotFoundError,
        FixtureStateError,
        ForeignNameError,
        MissingExtraError,
        NotCreatedError,
        ReclaimError,
        ReclaimWarning,
        RegistryCorruptError,
        RegistryError,
        RegistryVersionError,
        ReleaseError,
    )
    from reclaim._fixture import Fixture
    from reclaim._persona import AsyncPersona, Persona
    from reclaim._reaper import RetryPolicy
    from reclaim._registry import ResourceState, RunState, open_registry
    from reclaim._settings import default_location
    from reclaim._signals import Terminated
    from reclaim._sweep import SweepReport, sweep

# Names are imported on first use (PEP 562): `import reclaim` stays cheap for the pytest plugin
# of a suite that acquires nothing, and for the watchdog, which imports reclaim only after its
# owner died and every millisecond delays the releases.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "AcquireError",
            "BackendError",
            "BackendNotFoundError",
            "FixtureStateError",
            "ForeignNameError",
            "MissingExtraError",
            "NotCreatedError",
            "ReclaimError",
            "ReclaimWarning",
            "RegistryCorruptError",
            "RegistryError",
            "RegistryVersionError",
            "ReleaseError",
        ),
        "reclaim._errors",
    ),
    "Fixture": "reclaim._fixture",
    "Persona": "reclaim._persona",
    "AsyncPersona": "reclaim._persona",
    "RetryPolicy": "reclaim._reaper",
    "SweepReport": "reclaim._sweep",
    "sweep": "reclaim._sweep",
    "ResourceState": "reclaim._registry",
    "RunState": "reclaim._registry",
    "default_location": "reclaim._settings",
    "open_registry": "reclaim._registry",
    "Terminated": "reclaim._signals",
}

__all__ = [
    "AcquireError",
    "AsyncPersona",
    "BackendError",
    "BackendNotFoundError",
    "Fixture",
    "FixtureStateError",
    "ForeignNameError",
    "MissingExtraError",
    "NotCreatedError",
    "Persona",
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
    "Terminated",
    "__version__",
    "default_location",
    "open_registry",
    "sweep",
]

__version__ = "0.1.0"

_REHOMED = frozenset(
    [
        "AsyncPersona",
        "Fixture",
        "Persona",
        "ResourceState",
        "RetryPolicy",
        "RunState",
        "SweepReport",
        "Terminated",
    ]
)


def __getattr__(name: str) -> object:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'reclaim' has no attribute {name!r}")
    import importlib  # noqa: PLC0415  (PEP 562: on first use only)

    value = getattr(importlib.import_module(module_name), name)
    if name in _REHOMED:
        value.__module__ = "reclaim"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

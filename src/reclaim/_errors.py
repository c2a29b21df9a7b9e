"""reclaim's exceptions and warnings.

The tree::

    ReclaimError                      root of everything reclaim raises on purpose
    ├── RegistryError                 the registry cannot be used as it is
    │   ├── RegistryCorruptError      not a reclaim registry, or damaged
    │   └── RegistryVersionError      written by a newer reclaim
    ├── BackendNotFoundError          no backend is installed for a kind (LookupError too)
    ├── MissingExtraError             a backend's driver is not installed (ImportError too)
    ├── BackendError                  a backend failed; carries .kind, .resource, .run_id
    │   ├── AcquireError              creating the resource failed
    │   │   └── NotCreatedError       ... and the backend knows that nothing was created
    │   └── ReleaseError              deleting it failed; the entry stays `failed` for the sweeper
    │       └── ForeignNameError      a record or a listed object does not name what reclaim made
    └── FixtureStateError             misuse of a Fixture (RuntimeError too)

    ReclaimWarning (UserWarning)      root of reclaim's warnings

Driver errors (psycopg, redis, OSError, ...) are translated at the backend boundary with
``raise ReleaseError(...) from exc``: callers never need to know a driver's exception classes.
"""

from __future__ import annotations

__all__ = [
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
]


class ReclaimError(Exception):
    """Root of the errors reclaim raises on purpose."""


class RegistryError(ReclaimError):
    """The registry cannot be used as it is. ``path`` names the file (or URL, secrets removed)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class RegistryCorruptError(RegistryError):
    """The file is not a reclaim registry, or it is damaged. It is never replaced silently."""


class RegistryVersionError(RegistryError):
    """The registry was written by a newer reclaim whose schema this one does not know."""


class BackendNotFoundError(ReclaimError, LookupError):
    """No backend is installed for a kind named in the registry or asked for by a user."""

    def __init__(self, kind: str, detail: str = "") -> None:
        message = (
            f"no reclaim backend is installed for kind {kind!r}"
            + (f" ({detail})" if detail else "")
            + "; install the package that provides it (entry-point group 'reclaim.backends'),"
            " or name it in RECLAIM_BACKENDS as kind=module:Class"
        )
        super().__init__(message)
        self.kind = kind


class MissingExtraError(ReclaimError, ImportError):
    """A backend's driver is missing; the message names the extra to install."""

    def __init__(self, kind: str, extra: str, driver: str) -> None:
        super().__init__(
            f"the {kind} backend needs {driver}, which is not installed;"
            f" install it with: pip install 'reclaim[{extra}]'"
        )
        self.kind = kind
        self.extra = extra


class BackendError(ReclaimError):
    """A backend failed to create or delete a resource.

    Attributes:
        kind: the backend's registry name, e.g. ``"path.tempdir"``.
        resource: the resource's name as journaled.
        run_id: the run that owns it, when known.
        resource_id: its id in the registry, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        resource: str,
        run_id: str | None = None,
        resource_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.resource = resource
        self.run_id = run_id
        self.resource_id = resource_id


class AcquireError(BackendError):
    """Creating a resource failed. What was planned stays journaled until released (I1)."""


class NotCreatedError(AcquireError):
    """Creating a resource failed, and the backend knows that nothing was created: the
    connection never opened, the server refused the credentials before any command, the create
    request was never sent, the operating system refused the name.

    A backend raises it (``raise backend_error(NotCreatedError, ...) from exc``) only when it
    is sure; the fixture then closes the planned entry as never created, instead of releasing
    it (which would fail against a server that is down, and leave an entry failing forever).
    When in doubt a backend raises :class:`AcquireError`: the entry is released, or kept (I1).
    """


class ReleaseError(BackendError):
    """Deleting a resource failed after its retries; it stays ``failed`` for the next sweep (I5)."""


class ForeignNameError(ReleaseError):
    """A record, or an object a server listed, does not name something reclaim created (I8).

    Raised before anything reaches the server, by the one guard every backend's ``release``,
    ``exists`` and leftover listing goes through. It is never retried: the entry stays
    ``failed`` with this message until a person looks at it (``reclaim forget`` removes it).

    Attributes:
        field: the record's field that was refused (``"name"``, ``"path"``, ``"prefix"``...).
        value: what it held.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        resource: str,
        field: str,
        value: object,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, kind=kind, resource=resource, run_id=run_id)
        self.field = field
        self.value = value


class FixtureStateError(ReclaimError, RuntimeError):
    """A Fixture was used in a way its lifecycle does not allow (re-entered while open, ...)."""


class ReclaimWarning(UserWarning):
    """Root of reclaim's warnings."""


for _name in __all__:
    globals()[_name].__module__ = "reclaim"

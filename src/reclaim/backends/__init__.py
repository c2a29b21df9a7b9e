"""The contract every kind of resource implements, and finding a kind by its name.

A backend creates and deletes one kind of thing. It knows nothing of the registry, runs or
fixtures: reclaim proposes a name, the backend says what must be journaled to find the resource
again (:meth:`Backend.plan`), creates it (:meth:`Backend.acquire`) and, later and perhaps in
another process, deletes it from that JSON record alone (:meth:`Backend.release`, invariant I2)::

    class Bucket(Backend[str]):
        kind = "example.bucket"
        secret_fields = frozenset({"token"})

        def __init__(self, url: str, token: str) -> None:
            self.url, self.token = url, token

        def plan(self, name: str) -> Record:
            return {"name": name, "url": self.url, "token": self.token}

        def acquire(self, name: str) -> tuple[str, Record]:
            create_bucket(self.url, self.token, name)
            return name, self.plan(name)

        @classmethod
        def release(cls, record: Record) -> None:
            delete_bucket(record["url"], record["token"], record["name"])  # gone already: no-op

        @classmethod
        def exists(cls, record: Record) -> bool:
            return bucket_exists(record["url"], record["token"], record["name"])

Register it under the entry-point group ``reclaim.backends`` (the built-ins load the same way)::

    [project.entry-points."reclaim.backends"]
    "example.bucket" = "mypackage.reclaim_backends:Bucket"

``reclaim.testing.check_backend`` checks that a backend keeps this contract.
"""

from __future__ import annotations

from reclaim._errors import (
    AcquireError,
    BackendError,
    ForeignNameError,
    MissingExtraError,
    NotCreatedError,
    ReleaseError,
)
from reclaim.backends._base import (
    ENTRY_POINT_GROUP,
    Backend,
    Leftover,
    Record,
    SecretRecord,
    load_backend,
    redact_record,
    redact_text,
    release_batch,
    secret_record,
)
from reclaim.backends._guard import check_leftover, check_record, refuse
from reclaim.backends._names import (
    NAME_PREFIX,
    NAMES,
    NameStyle,
    ReclaimName,
    make_name,
    parse_name,
)
from reclaim.backends._support import (
    ServerURL,
    backend_error,
    raise_backend_error,
    redact_url,
    require_extra,
    split_url,
    translate_errors,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "NAMES",
    "NAME_PREFIX",
    "AcquireError",
    "Backend",
    "BackendError",
    "ForeignNameError",
    "Leftover",
    "MissingExtraError",
    "NameStyle",
    "NotCreatedError",
    "ReclaimName",
    "Record",
    "ReleaseError",
    "SecretRecord",
    "ServerURL",
    "backend_error",
    "check_leftover",
    "check_record",
    "load_backend",
    "make_name",
    "parse_name",
    "raise_backend_error",
    "redact_record",
    "redact_text",
    "redact_url",
    "refuse",
    "release_batch",
    "require_extra",
    "secret_record",
    "split_url",
    "translate_errors",
]

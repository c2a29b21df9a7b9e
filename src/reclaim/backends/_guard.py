"""Only our own (I8): the one check between a record and a server.

Every ``release``, ``exists`` and leftover listing of every backend passes here before anything
reaches a server: :class:`~reclaim.backends.Backend` wraps the methods of each subclass at class
creation, so a backend cannot forget it, and ``reclaim sweep --leftovers`` checks each listed
object with the same function. A record is accepted only when

- its ``name`` is, whole, a reclaim name in the backend's :class:`NameStyle`, and
- every other field that reaches the server as an object's identity (a directory's path, a
  Redis key prefix, a table prefix) is *exactly* what that name makes of it: the backend
  declares them in :meth:`Backend.owned_identities`; for kinds that own everything under a
  prefix, the prefix is the name plus the backend's one declared separator, nothing else.

Anything else (``public``, ``mysql``, ``rc_..._1_backup``, ``myapp_rc_...``, ``/home/user``) is
refused with a :class:`~reclaim.ForeignNameError`, which the reaper never retries: the entry
stays ``failed`` (I5) with a message saying why, and nothing is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from reclaim._errors import ForeignNameError
from reclaim.backends._names import ReclaimName

if TYPE_CHECKING:
    from reclaim.backends import Backend, Leftover

__all__ = ["check_leftover", "check_record", "refuse"]

_SHOWN: Final = 120  # characters of a refused value quoted in a message


def check_record(backend: type[Backend[Any]], record: object) -> ReclaimName:
    """The record's reclaim name, once every identity in it is known to be reclaim's own.

    Raises:
        ForeignNameError: the record names something reclaim did not create; nothing was sent.
    """
    kind = backend.kind or backend.__name__
    if not isinstance(record, Mapping):
        raise refuse(kind, "record", record, "a JSON object")
    name = record.get("name")
    parsed = backend.name_style.parse(name)
    if parsed is None:
        raise refuse(kind, "name", name, _whole_name(backend))
    for field, actual, expected in backend.owned_identities(record, parsed):
        if not isinstance(actual, str) or actual != expected:
            raise refuse(kind, field, actual, f"exactly {expected!r}", name=parsed)
    return parsed


def check_leftover(backend: type[Backend[Any]], leftover: Leftover) -> ReclaimName:
    """Like :func:`check_record` for an object a listing yielded; its run id and time must be
    the ones its name carries.

    Raises:
        ForeignNameError: the listed object is not reclaim's (a backend's bug: never touched).
    """
    parsed = check_record(backend, leftover.record)
    if (parsed.run_id, parsed.created_at) != (leftover.run_id, leftover.created_at):
        raise refuse(
            backend.kind,
            "run",
            f"{leftover.run_id}@{leftover.created_at}",
            f"the run {parsed.run_id} and time {parsed.created_at:.0f} its name carries",
            name=parsed,
        )
    return parsed


def refuse(
    kind: str, field: str, value: object, wanted: str, *, name: ReclaimName | None = None
) -> ForeignNameError:
    """The error for a record field that does not name reclaim's own object.

    Backends raise it themselves for what only the server can answer: the object behind an id
    must carry the record's whole name before it is deleted (asked with a read, never a write).
    """
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[: _SHOWN - 3] + "..."
    resource = name.text if name is not None else (value if isinstance(value, str) else "?")
    return ForeignNameError(
        f"{kind}: refused: the record's {field} {shown} is not {wanted}; reclaim deletes only"
        " what it created, so it was left alone",
        kind=kind,
        resource=str(resource)[:_SHOWN],
        field=field,
        value=value,
        run_id=name.run_id if name is not None else None,
    )


def _whole_name(backend: type[Backend[Any]]) -> str:
    style = backend.name_style
    s = style.separator
    shape = f"rc{s}<run>{s}<time>{s}<seq>"
    if style.user_prefix is not None:
        return f"a whole reclaim name ({shape}, after a prefix matching {style.user_prefix})"
    return f"a whole reclaim name ({shape}, nothing before or after it)"

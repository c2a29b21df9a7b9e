"""Adversaries: for each built-in kind, real objects that look like reclaim's and records that
name what is not reclaim's, so that tests/test_only_ours.py can prove invariant I8 (only our own)
against the real server of every kind, through one parametrisation.

Each module here exposes ``KINDS``: a mapping from a kind to a factory that takes the pytest
request and returns an :class:`Adversary` for that kind's real server (skipping, or failing in
CI, when the server is not there, as every backend test does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from reclaim.backends import Record
from reclaim.testing import lookalikes

__all__ = ["Adversary", "Factory", "Foreign", "lookalikes"]


@dataclasses.dataclass
class Foreign:
    """A record that names an object reclaim did not create, and that object, for real."""

    #: What it stands for, in the test id and messages ("the public schema").
    label: str
    #: The record a damaged or hostile registry row would hold.
    record: Record
    #: Is the object still there? Asked of the real server or filesystem.
    present: Callable[[], bool]
    #: Make the object (when it is not one the server always has); None: nothing to make.
    create: Callable[[], None] | None = None
    #: Remove it at the end of the test (best effort); None: nothing to remove.
    remove: Callable[[], None] | None = None


@dataclasses.dataclass
class Adversary:
    """One kind's real server, as the I8 tests need it."""

    kind: str
    #: What ``reclaim sweep --leftovers`` is given for this kind; None when it lists nothing.
    leftovers_url: str | None
    #: Make an object with exactly this server-side name, outside reclaim.
    create: Callable[[str], None]
    #: Is an object of this exact name there? Asked of the real server.
    present: Callable[[str], bool]
    #: Remove it (best effort, for the test's own clean-up; a no-op when it is gone).
    remove: Callable[[str], None]
    #: The server's spelling of a default-style reclaim name (S3 buckets use hyphens).
    spell: Callable[[str], str] = lambda name: name
    #: Names this server can hold at all (look-alikes it cannot hold are not tried).
    valid: Callable[[str], bool] = lambda name: True
    #: Records naming objects that are not reclaim's.
    foreign: list[Foreign] = dataclasses.field(default_factory=list)
    #: Look-alikes that are not a plain name (a symlink named like a reclaim name): given the
    #: exact name, make them and return (what, is it still there?) for each.
    extra_objects: Callable[[str], list[tuple[str, Callable[[], bool]]]] = lambda name: []


Factory = Callable[[pytest.FixtureRequest], Adversary]


def any_record(**fields: Any) -> Record:
    """A record (typed as one) from keyword fields."""
    return dict(fields)

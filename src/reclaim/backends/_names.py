"""The one grammar of reclaim's names, and the styles servers need it spelt in.

Every name reclaim proposes is ``rc_<run id>_<creation time>_<sequence>``: the run id is eight
lower-case hex digits, the time is whole seconds since the epoch in base 36, the sequence a
positive decimal number with no leading zero. Nothing else is ever a reclaim name: a string is
one only when it is one *whole*, from its first character to its last (I8). ``rc_..._1_backup``,
``myapp_rc_..._1``, ``rc_..._1.bak``, ``rc_..._12x`` and ``RC_..._1`` are not.

A server whose names cannot hold underscores (S3 buckets) spells the same grammar with another
separator; a backend that lets the user put a word before the name (an S3 bucket prefix)
declares the shape that word may have. Both are declared by the backend as a :class:`NameStyle`,
never re-implemented.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from typing import Final, NamedTuple

__all__ = ["NAMES", "NAME_PREFIX", "NameStyle", "ReclaimName", "make_name", "parse_name"]

#: Every name reclaim proposes starts with this (in the default style).
NAME_PREFIX: Final = "rc_"
#: A run's id in a name (and ``make_name``'s check of one): eight hex digits.
_RUN_ID_PATTERN: Final = "[0-9a-f]{8}"

_B36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


class ReclaimName(NamedTuple):
    """A string that is, whole, a reclaim name; and what it says."""

    #: The whole string, as the server spells it (user prefix included).
    text: str
    #: The run that made it: eight hex digits.
    run_id: str
    #: When it was made, seconds since the epoch (from the name, not from the server's clock).
    created_at: float
    #: Its sequence number within the run.
    seq: int
    #: What the user asked to be put before reclaim's part ("" when nothing).
    user_prefix: str = ""

    @property
    def bare(self) -> str:
        """The name without the user's prefix, in the style it is spelt in."""
        return self.text[len(self.user_prefix) :]


@dataclasses.dataclass(frozen=True)
class NameStyle:
    """How one kind of server spells reclaim names.

    Args:
        separator: between ``rc``, the run id, the time and the sequence: ``"_"`` by default,
            ``"-"`` where the server forbids underscores.
        user_prefix: a regular expression for what a user may put before the name (matched
            whole), or None when nothing may come before it.
        max_length: the longest name the server accepts (in UTF-8 bytes), user prefix included.
    """

    separator: str = "_"
    user_prefix: str | None = None
    max_length: int | None = None
    _pattern: re.Pattern[str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.separator not in ("_", "-"):
            raise ValueError(f"a NameStyle separator is '_' or '-', not {self.separator!r}")
        s = re.escape(self.separator)
        before = f"(?P<user>{self.user_prefix})" if self.user_prefix is not None else "(?P<user>)"
        pattern = (
            f"{before}rc{s}(?P<run>{_RUN_ID_PATTERN}){s}(?P<time>0|[1-9a-z][0-9a-z]{{0,7}})"
            f"{s}(?P<seq>[1-9][0-9]{{0,19}})"
        )
        object.__setattr__(self, "_pattern", re.compile(pattern))

    def parse(self, text: object) -> ReclaimName | None:
        """``text`` as a reclaim name of this style, or None when it is not one, whole."""
        if not isinstance(text, str):
            return None
        match = self._pattern.fullmatch(text)
        if match is None:
            return None
        if self.max_length is not None and len(text.encode()) > self.max_length:
            return None
        return ReclaimName(
            text=text,
            run_id=match["run"],
            created_at=float(int(match["time"], 36)),
            seq=int(match["seq"]),
            user_prefix=match["user"],
        )

    def spell(self, proposed: str, user_prefix: str = "") -> str:
        """The name reclaim proposed (default style), spelt in this style after ``user_prefix``.

        Raises:
            ValueError: the result is not a name of this style (a user prefix of the wrong
                shape, or longer than the server allows); says which rule it broke.
        """
        bare = NAMES.parse(proposed)
        if bare is None:
            raise ValueError(f"{proposed!r} is not a name reclaim makes (rc_<run>_<time>_<seq>)")
        text = user_prefix + proposed.replace("_", self.separator)
        if self.parse(text) is None:
            if self.max_length is not None and len(text.encode()) > self.max_length:
                raise ValueError(
                    f"the name {text!r} is longer than the server's {self.max_length} bytes"
                )
            raise ValueError(
                f"the prefix {user_prefix!r} does not fit the server's names"
                + (f" (it must match {self.user_prefix})" if self.user_prefix else "")
            )
        return text


#: The default style: underscores, nothing before the name.
NAMES: Final = NameStyle()


def make_name(run_id: str, seq: int, now: float | None = None) -> str:
    """The name reclaim proposes: prefix, run id, creation time (base 36 seconds), sequence.

    Lower case ASCII letters, digits and underscores only, at most 40 characters: valid as a
    PostgreSQL identifier, a Redis key prefix, a queue, stream or directory name.
    """
    seconds = int(time.time() if now is None else now)
    # Each part checked on its own (the run id once): what they make is then a name of the
    # default style by construction, which a test checks against ``NAMES.parse``.
    if not (
        isinstance(run_id, str)  # before the cache, which needs a hashable key
        and _is_run_id(run_id)
        and type(seq) is int
        and 0 < seq < _MAX_SEQ
        and 0 <= seconds < _MAX_TIME
    ):
        raise ValueError(
            f"run id {run_id!r} and sequence {seq!r} do not make a reclaim name"
            " (eight hex digits; a positive number)"
        )
    return f"{NAME_PREFIX}{run_id}_{_base36(seconds)}_{seq}"


_RUN_ID: Final = re.compile(_RUN_ID_PATTERN)
_MAX_SEQ: Final = 10**20  # the pattern's 20 digits
_MAX_TIME: Final = 36**8  # its 8 base-36 digits of seconds


@functools.lru_cache(maxsize=64)
def _is_run_id(run_id: str) -> bool:
    return _RUN_ID.fullmatch(run_id) is not None


def parse_name(text: object) -> ReclaimName | None:
    """``text`` as a reclaim name in the default style, or None unless it is one *whole*."""
    return NAMES.parse(text)


@functools.lru_cache(maxsize=4)  # the seconds of the names made now: the same for many
def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out

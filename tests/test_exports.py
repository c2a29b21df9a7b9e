"""The public front door: a short, sorted, complete ``__all__``."""

from __future__ import annotations

import subprocess
import sys

import pytest

import reclaim
import reclaim.backends


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions.
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


def test_all_is_sorted_and_complete() -> None:
    for module in (reclaim, reclaim.backends):
        public = {n for n in dir(module) if not n.startswith("_")} - {"annotations"}
        assert module.__all__ == sorted(module.__all__, key=_isort_key)
        assert set(module.__all__) - {"__version__"} <= public
        exported_objects = [getattr(module, n) for n in module.__all__]
        assert all(o is not None for o in exported_objects)


def test_public_classes_claim_the_public_module() -> None:
    assert reclaim.Fixture.__module__ == "reclaim"
    assert reclaim.ReleaseError.__module__ == "reclaim"
    assert str(reclaim.ResourceState.FAILED) == "failed"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Fixtur'"):
        reclaim.Fixtur  # noqa: B018


def test_import_reclaim_is_light() -> None:
    """The pytest plugin and the watchdog import ``reclaim``; the fixture machinery and the
    registry (sqlite3) load only on first use, and a program that acquires without asyncio
    never imports it (16 ms, with ssl)."""
    code = (
        "import sys, reclaim\n"
        "heavy = {'asyncio', 'sqlite3', 'reclaim._fixture', 'importlib.metadata'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "import reclaim.pytest_plugin\n"  # pytest itself imports importlib.metadata
        "print(sorted(heavy & set(sys.modules) - {'importlib.metadata'}))\n"
        "reclaim.Fixture\n"
        "print('reclaim._fixture' in sys.modules)\n"
        "from reclaim.backends.path import TempDir\n"
        "with reclaim.Fixture('light') as f:\n"
        "    f.acquire(TempDir())\n"
        "print('asyncio' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "[]", out
    assert out[2] == "True"
    assert out[3] == "False", "a sync acquire and release imported asyncio"

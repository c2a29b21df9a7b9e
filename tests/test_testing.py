"""The conformance kit's I8 checks (``reclaim.testing.check_backend``): they pass for a
backend that keeps to its own, and they catch one that does not."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from reclaim import backends
from reclaim.backends import NAMES, Record, parse_name
from reclaim.backends.path import TempDir
from reclaim.testing import FOREIGN_NAMES, check_backend, lookalikes
from reclaim_test_backends import Greedy


def _maker(directory: Path) -> Callable[[str], Callable[[], bool]]:
    def make(name: str) -> Callable[[], bool]:
        if "/" in name:
            raise ValueError(name)
        (directory / name).mkdir()
        (directory / name / "keep").write_text("the user's")
        return (directory / name / "keep").exists

    return make


def test_lookalikes_are_never_reclaim_names() -> None:
    exact = "rc_0a1b2c3d_t0a1b2_1"
    assert parse_name(exact) is not None
    for fake in [*lookalikes(exact), *FOREIGN_NAMES]:
        assert NAMES.parse(fake) is None, fake
    assert "rc_0a1b2c3d_t0a1b2_1_backup" in lookalikes(exact)
    assert "myapp_rc_0a1b2c3d_t0a1b2_1" in lookalikes(exact)


def test_kit_passes_tempdir_with_lookalikes_on_disk(
    scratch: Path, tmp_path: Path, registry_path: str
) -> None:
    check_backend(
        lambda: TempDir(parent=scratch),
        registry=tmp_path / "kit.sqlite3",
        make_lookalike=_maker(scratch),
        leftovers_url=f"file://{scratch}",
    )
    left = sorted(p.name for p in scratch.iterdir())
    assert left, "the look-alikes were made and are all still there"
    assert all((scratch / n / "keep").exists() for n in left)


def test_kit_catches_a_listing_that_takes_lookalikes(
    scratch: Path, tmp_path: Path, registry_path: str
) -> None:
    with pytest.raises(AssertionError, match="yields look-alikes"):
        check_backend(
            lambda: Greedy(scratch),
            registry=tmp_path / "kit.sqlite3",
            make_lookalike=_maker(scratch),
            leftovers_url=f"greedy://{scratch}",
        )
    shutil.rmtree(scratch)


def test_kit_catches_a_release_that_skips_the_guard(
    scratch: Path, tmp_path: Path, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unguarded(TempDir):
        # Replacing the guarded classmethod after class creation bypasses the wrapper: what a
        # backend that "optimised" its release into a staticmethod would do.
        pass

    def bare_release(record: Record) -> None:
        shutil.rmtree(record["path"], ignore_errors=True)

    Unguarded.release = staticmethod(bare_release)  # type: ignore[method-assign]
    Unguarded.kind = "path.tempdir"
    monkeypatch.setitem(backends._base._cache, "path.tempdir", Unguarded)
    with pytest.raises(AssertionError, match="refuse it with ForeignNameError"):
        check_backend(lambda: Unguarded(parent=scratch), registry=tmp_path / "kit.sqlite3")


def test_kit_catches_a_batch_that_says_released_and_is_not(
    scratch: Path, tmp_path: Path, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Boasting(TempDir):
        batch_size = 10

        @classmethod
        def release_many(cls, records: Sequence[Record]) -> Sequence[Exception | None]:
            return [None] * len(records)  # says "gone" and deletes nothing

    Boasting.kind = "path.tempdir"
    monkeypatch.setitem(backends._base._cache, "path.tempdir", Boasting)
    with pytest.raises(AssertionError, match="release_many left"):
        check_backend(lambda: Boasting(parent=scratch), registry=tmp_path / "kit.sqlite3")
    shutil.rmtree(scratch)

"""Adversaries of ``path.tempdir``: directories in a scratch folder of the test's own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from adversaries import Adversary, Factory, Foreign


def tempdir(request: pytest.FixtureRequest) -> Adversary:
    tmp: Path = request.getfixturevalue("tmp_path")
    root = tmp / "leftovers"
    root.mkdir()
    user = tmp / "home" / "user"
    (user / "_backup").mkdir(parents=True)
    (user / "_backup" / "keep.txt").write_text("the user's data")

    def create(name: str) -> None:
        (root / name).mkdir()
        (root / name / "data").write_text("x")

    def remove(name: str) -> None:
        shutil.rmtree(root / name, ignore_errors=True)

    def symlinked(exact: str) -> list[tuple[str, Callable[[], bool]]]:
        # A symlink with the exact reclaim name, pointing at the user's folder: neither the
        # link's target nor what is in it may go.
        target = tmp / "linked"
        target.mkdir()
        (target / "keep.txt").write_text("x")
        os.symlink(target, root / f"{exact}9")  # another reclaim-shaped name, as a link
        return [("the target of a symlink named like a reclaim name", (target / "keep.txt").exists)]

    return Adversary(
        kind="path.tempdir",
        leftovers_url=f"file://{root}",
        create=create,
        present=lambda name: os.path.lexists(root / name),
        remove=remove,
        valid=lambda name: "/" not in name,
        extra_objects=symlinked,
        foreign=[
            Foreign(
                "a user's directory",
                {"name": "rc_0badf00d_t0a1b2_1", "path": str(user), "prefix": ""},
                present=(user / "_backup" / "keep.txt").exists,
            ),
            Foreign(
                "a user's directory behind '..'",
                {
                    "name": "rc_0badf00d_t0a1b2_1",
                    "path": str(user / "rc_0badf00d_t0a1b2_1" / ".." / "_backup"),
                },
                present=(user / "_backup" / "keep.txt").exists,
            ),
            Foreign(
                "a directory whose name only contains a reclaim name",
                {"name": "rc_0badf00d_t0a1b2_1_backup", "path": str(user / "_backup")},
                present=(user / "_backup" / "keep.txt").exists,
            ),
            Foreign(
                "a directory under a prefix the record made up",
                {
                    "name": "rc_0badf00d_t0a1b2_1",
                    "path": str(user / "_backup"),
                    "prefix": "../",
                },
                present=(user / "_backup" / "keep.txt").exists,
            ),
        ],
    )


KINDS: dict[str, Factory] = {"path.tempdir": tempdir}

"""A registry that one row cannot break (issue 11): a damaged record is reported by its id and
skipped, ``reclaim forget`` removes it, and everything else keeps working."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import reclaim_cli
from reclaim import RegistryError
from reclaim._registry import ResourceState, open_registry
from reclaim.testing import dead_identity


def test_a_damaged_row_is_reported_skipped_and_forgettable(
    registry_path: str, scratch: Path
) -> None:
    reg = open_registry(registry_path)
    reg.open_run("0000dead", dead_identity(), label="damaged")
    ids = []
    for seq in (1, 2):
        name = f"rc_0000dead_t0a1b2_{seq}"
        path = scratch / name
        path.mkdir()
        record = {"name": name, "path": str(path), "prefix": ""}
        rid = reg.plan("0000dead", "f", "path.tempdir", name, record)
        reg.mark_acquired(rid, record)
        ids.append(rid)
    reg.close()
    bad, good = ids
    with sqlite3.connect(registry_path) as conn:
        conn.execute('UPDATE resources SET record = \'{"name": "rc_\' WHERE id = ?', (bad,))

    for args in (("status",), ("status", "--json"), ("sweep", "--dry-run", "--grace", "0")):
        result = reclaim_cli(*args, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        assert "JSONDecodeError" in result.stdout or str(bad) in result.stdout, result.stdout
    status = json.loads(reclaim_cli("status", "--json").stdout)
    (entry,) = [r for run in status["runs"] for r in run["resources"] if r["id"] == bad]
    assert entry["state"] == "failed"
    assert "damaged" in entry["last_error"]
    assert f"reclaim forget {bad}" in entry["last_error"]

    swept = reclaim_cli("sweep", "--grace", "0", "--json", check=False)
    assert swept.returncode == 1, "a damaged entry is a failure a cron job must see"
    assert not (scratch / "rc_0000dead_t0a1b2_2").exists(), "the healthy entry was released"
    assert (scratch / "rc_0000dead_t0a1b2_1").exists(), "nothing is released from a damaged row"

    reg = open_registry(registry_path)
    kept = reg.get_resource(bad)
    assert kept is not None
    assert kept.state == ResourceState.FAILED
    assert kept.damaged is not None
    assert reg.get_resource(good) is None
    reg.close()

    reclaim_cli("forget", str(bad), "--yes")
    reg = open_registry(registry_path)
    assert reg.get_resource(bad) is None
    reg.close()


def test_a_damaged_owner_does_not_break_status(registry_path: str) -> None:
    reg = open_registry(registry_path)
    reg.open_run("0000beef", dead_identity(), label="owner damaged")
    reg.close()
    with sqlite3.connect(registry_path) as conn:
        conn.execute("UPDATE runs SET owner = 'not json' WHERE id = '0000beef'")
    result = reclaim_cli("status", "--json")
    (run,) = json.loads(result.stdout)["runs"]
    assert run["id"] == "0000beef"


def _as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can read but only root can write (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="reclaim-ro-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_read_only_registry_is_a_one_line_registry_error(shared_dir: Path) -> None:
    location = shared_dir / "registry.sqlite3"
    open_registry(str(location)).close()
    location.chmod(0o644)
    code = (
        "import reclaim, sys\n"
        "from reclaim.backends.path import TempDir\n"
        "try:\n"
        "    with reclaim.Fixture('ro') as f:\n"
        "        f.acquire(TempDir(parent='/tmp'))\n"
        "except reclaim.NotCreatedError as exc:\n"  # an AcquireError: nothing was made (I1)
        "    print('NotCreatedError:', exc); sys.exit(3)\n"
    )
    env = {**os.environ, "RECLAIM_REGISTRY": str(location), "RECLAIM_WATCHDOG": "0"}
    result = subprocess.run(
        [*_as_nobody(), sys.executable, "-c", code],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not created, because the registry cannot journal it" in result.stdout
    assert "cannot be written" in result.stdout
    assert "RECLAIM_REGISTRY" in result.stdout
    cli = subprocess.run(
        [*_as_nobody(), sys.executable, "-m", "reclaim", "--registry", str(location), "status"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in cli.stderr, cli.stderr
    assert "OperationalError" not in cli.stdout + cli.stderr


def test_a_registry_whose_folder_cannot_be_made_is_a_registry_error(shared_dir: Path) -> None:
    (shared_dir / "file").write_text("not a folder")
    location = shared_dir / "file" / "state" / "registry.sqlite3"
    with pytest.raises(RegistryError, match="cannot create the folder"):
        open_registry(str(location))
    code = (
        "import reclaim\n"
        "from reclaim.backends.path import TempDir\n"
        "with reclaim.Fixture('x') as f:\n"
        "    f.acquire(TempDir(parent='/tmp'))\n"
    )
    env = {**os.environ, "RECLAIM_REGISTRY": str(location), "RECLAIM_WATCHDOG": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "reclaim.NotCreatedError: path.tempdir" in result.stderr, result.stderr
    assert "the registry cannot journal it: cannot create the folder" in result.stderr
    assert "FileNotFoundError" not in result.stderr, result.stderr


def test_read_only_commands_never_make_or_change_a_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    result = reclaim_cli("--registry", str(empty), "status", check=False)
    assert "Traceback" not in result.stderr
    assert empty.read_bytes() == b"", "status turned an empty file into a registry"

    foreign = tmp_path / "app.sqlite3"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    foreign.chmod(0o644)
    before = foreign.read_bytes()
    for args in (("status",), ("sweep", "--grace", "0")):
        result = reclaim_cli("--registry", str(foreign), *args, check=False)
        assert result.returncode != 0
        assert "not a reclaim registry" in result.stderr + result.stdout
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o644, "a foreign file was chmod-ed"
    assert foreign.read_bytes() == before


def test_a_releasing_row_whose_claimer_died_is_taken_over(
    registry_path: str, scratch: Path
) -> None:
    # The owner claimed the release (state releasing) and died before its outcome: the run is
    # closed, its owner dead. The next sweep takes the row over and releases it.
    reg = open_registry(registry_path)
    reg.open_run("0000c1a1", dead_identity(), label="claimed then killed")
    name = "rc_0000c1a1_t0a1b2_1"
    path = scratch / name
    path.mkdir()
    record = {"name": name, "path": str(path), "prefix": ""}
    rid = reg.plan("0000c1a1", "f", "path.tempdir", name, record)
    reg.mark_acquired(rid, record)
    claimed = reg.begin_release(rid, states=(ResourceState.ACQUIRED,))
    assert claimed is not None
    reg.close_run("0000c1a1")
    reg.close()
    result = reclaim_cli("sweep", "--grace", "0")
    assert "released" in result.stdout
    assert not path.exists()
    reg = open_registry(registry_path)
    assert reg.get_resource(rid) is None
    reg.close()

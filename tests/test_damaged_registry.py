"""A registry that one row cannot break (issue 11): a damaged record is reported by its id and
skipped, ``reclaim forget`` removes it, and everything else keeps working."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import reclaim_cli
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

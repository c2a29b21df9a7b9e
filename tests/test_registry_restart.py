"""The shared registry's server restarted in the middle of a run (issue 13): the run goes on or
fails cleanly, and nothing is lost.

A real PostgreSQL restart (``pg_ctlcluster ... restart``), while a child process acquires
temporary directories one after the other through a PostgreSQL registry and then ends normally.
Needs a local cluster this user may restart: skipped on a laptop without one, failed in CI
(``RECLAIM_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _services import require
from conftest import (
    CHILD_TIMEOUT,
    drop_postgres_registry,
    postgres_registry_url,
    registry_is_empty,
)
from reclaim._registry import open_registry
from reclaim._sweep import sweep

OWNER = """
import json, sys, time
import reclaim
from reclaim.backends.path import TempDir

parent, count = sys.argv[1], int(sys.argv[2])
made, errors = [], []
try:
    with reclaim.Fixture("through-a-restart") as f:
        for n in range(count):
            try:
                made.append(str(f.acquire(TempDir(parent=parent))))
            except reclaim.AcquireError as exc:  # a clean failure: nothing made, or held
                errors.append(f"{type(exc).__name__}: {exc}")
            print(json.dumps({"n": n}), flush=True)
            time.sleep(0.05)
except BaseException as exc:
    errors.append(f"exit: {type(exc).__name__}: {exc}")
print(json.dumps({"made": made, "errors": errors}), flush=True)
"""


def _cluster() -> list[str]:
    """The restart command of the local cluster, or a skip (a failure in CI)."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if shutil.which("pg_ctlcluster") is None or not versions:
        reason = "no local PostgreSQL cluster to restart (pg_ctlcluster)"
        if os.environ.get("RECLAIM_REQUIRE_SERVICES") == "1":
            pytest.fail(f"RECLAIM_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"]


def test_a_postgresql_restart_in_the_middle_of_a_run_loses_nothing(tmp_path: Path) -> None:
    require("postgres")
    restart = _cluster()
    url = postgres_registry_url()
    parent = tmp_path / "scratch"
    parent.mkdir()
    env = {**os.environ, "RECLAIM_REGISTRY": url}
    child = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(parent), "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        for _ in range(10):  # a run well under way
            assert json.loads(child.stdout.readline())["n"] >= 0
        subprocess.run(restart, check=True, capture_output=True, timeout=120)
        out, err = child.communicate(timeout=CHILD_TIMEOUT * 2)
        final = json.loads(out.strip().splitlines()[-1])
        assert child.returncode == 0, err
        # Gone on disk: what the run made was released at its exit, restart or not.
        assert not any(parent.iterdir()), f"left on disk: {list(parent.iterdir())}"
        # Every acquisition either succeeded or failed cleanly, saying it made nothing.
        for error in final["errors"]:
            assert error.startswith(("NotCreatedError", "AcquireError")), error
            assert "Traceback" not in error
        assert final["made"], "nothing was acquired at all"
        # Nothing lost: the registry holds no entry the run did not settle.
        assert registry_is_empty(url), "the registry kept entries of a run that ended"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        _wait_for_postgres(url)
        reg = open_registry(url)
        try:
            sweep(reg, grace=0)
        finally:
            reg.close()
        drop_postgres_registry(url)


def _wait_for_postgres(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            open_registry(url).close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

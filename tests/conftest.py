"""Shared fixtures: every test gets its own registry and scratch directory, and whatever a
test's child processes leave is swept (with reclaim itself) and killed at teardown, also when the
test fails."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

import reclaim
from _services import require
from reclaim._identity import process_state
from reclaim._registry import open_registry
from reclaim._run import end_run
from reclaim._sweep import sweep

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).parent
TEST_BACKENDS = ",".join(
    f"test.{name.lower()}=reclaim_test_backends:{name}"
    for name in (
        "Flaky",
        "Forgetful",
        "Greedy",
        "Halfway",
        "Leaky",
        "SlowDir",
        "Sticky",
        "Tally",
        "Unreachable",
    )
)
CHILD_TIMEOUT = 60.0


#: The modules whose tests of ``registry_path`` run on both registries, as ``[sqlite]`` and
#: ``[postgres]``. A test there that really needs the SQLite file (it opens it with sqlite3,
#: damages it, changes its mode) is marked ``@pytest.mark.sqlite_only("why")``.
BOTH_REGISTRIES: Final = frozenset(
    {
        "test_registry",
        "test_reaper",
        "test_fixture",
        "test_cli",
        "test_run",
        "test_watchdog",
        "test_watch",
        "test_interrupts",
        "test_acquire_failures",
        "test_pytest_plugin",
        "test_leases",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): the test needs the SQLite registry's file; its [postgres] variant"
        " is skipped with the reason",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "registry_kind" not in metafunc.fixturenames:
        return
    if metafunc.module.__name__.rpartition(".")[2] not in BOTH_REGISTRIES:
        return  # the fixture's default: SQLite, and the test's id unchanged
    only = metafunc.definition.get_closest_marker("sqlite_only")
    postgres: Any = "postgres"
    if only is not None:
        reason = only.args[0] if only.args else "needs the SQLite registry's file"
        postgres = pytest.param("postgres", marks=pytest.mark.skip(reason=f"SQLite only: {reason}"))
    metafunc.parametrize("registry_kind", ["sqlite", postgres], indirect=True)


@pytest.fixture
def registry_kind(request: pytest.FixtureRequest) -> str:
    """Which registry ``registry_path`` makes: ``sqlite`` (the default), or ``postgres`` where
    :func:`pytest_generate_tests` runs a test on both."""
    return str(getattr(request, "param", "sqlite"))


def postgres_registry_url() -> str:
    """A PostgreSQL registry URL with a schema of its own (``reclaim_t_<hex>``), on the test
    server (skips, or fails in CI, when it is down)."""
    base = require("postgres")
    return f"{base}{'&' if '?' in base else '?'}schema=reclaim_t_{secrets.token_hex(6)}"


def drop_postgres_registry(url: str) -> None:
    """Drop the (test) schema that the registry URL ``url`` names, and only that one."""
    import psycopg  # noqa: PLC0415  (only the PostgreSQL variants need it)
    from psycopg import sql  # noqa: PLC0415

    base, _, schema = url.rpartition("schema=")
    assert schema.startswith("reclaim_t_"), f"not a test registry: {url}"
    with psycopg.connect(base.rstrip("?&"), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def registry_exists(location: str) -> bool:
    """Is there a registry at ``location`` (a file, or a PostgreSQL schema with its tables)?"""
    if "://" not in location:
        return os.path.exists(location)
    try:
        open_registry(location, create=False).close()
    except FileNotFoundError:
        return False
    return True


@pytest.fixture
def registry_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_kind: str
) -> Iterator[str]:
    """A fresh registry for this test (a file, or a PostgreSQL schema of its own), also exported
    as RECLAIM_REGISTRY."""
    if registry_kind == "postgres":
        path = postgres_registry_url()
    else:
        path = str(tmp_path / "state" / "registry.sqlite3")
    monkeypatch.setenv("RECLAIM_REGISTRY", path)
    monkeypatch.setenv("RECLAIM_BACKENDS", TEST_BACKENDS)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    )
    yield path
    try:
        end_run(path)
        if registry_exists(path):
            reg = open_registry(path)
            try:
                sweep(reg, grace=0)
            finally:
                reg.close()
    finally:
        if registry_kind == "postgres":
            drop_postgres_registry(path)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """Where tests put temp directories they acquire (so a leak never reaches /tmp)."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path


def alive(pid: int) -> bool:
    """Is the process running (zombies have exited and do not count)?"""
    state = process_state(pid)
    return state is not None and state.alive


Spawner = Callable[..., tuple[subprocess.Popen[str], dict[str, Any]]]


@pytest.fixture
def spawn(registry_path: str) -> Iterator[Spawner]:
    """Start ``python -c CODE ARGS...`` that prints one JSON line once it holds its resources.

    Returns the process and the parsed line. Every such process is SIGKILLed at teardown.
    """
    started: list[subprocess.Popen[str]] = []

    def _spawn(code: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=CHILD_TIMEOUT)
            raise AssertionError(f"child failed (exit {proc.returncode}):\n{err}")
        return proc, json.loads(line)

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL and wait: the crash the tests are about."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)


def reclaim_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``reclaim`` command (as a user's shell would) with this test's env, or
    with ``env`` instead."""
    result = subprocess.run(
        [sys.executable, "-m", "reclaim", *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"reclaim {' '.join(args)} exited {result.returncode}:\n{result}")
    return result


def wait_until(predicate: Callable[[], object], timeout: float = 60.0) -> float:
    """Poll until ``predicate()`` is true; return the seconds it took.

    Fails after ``timeout`` seconds (generous: it bounds a failing test, a passing one returns
    as soon as the condition holds).
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s: {predicate}")
        time.sleep(0.005)
    return time.monotonic() - started


def registry_is_empty(location: str) -> bool:
    """Does the registry at ``location`` hold no resource entry at all?"""
    reg = open_registry(location)
    try:
        return reg.resources() == []
    finally:
        reg.close()


def acquire_creates_nothing(
    registry_path: str,
    backend: Any,
    *,
    says: str | tuple[str, ...],
    hidden: str | tuple[str, ...] = (),
    also_async: bool = False,
) -> None:
    """``Fixture.acquire`` (and, with ``also_async``, ``aacquire``) of ``backend`` fails with an
    AcquireError, never a ReleaseError, that names the kind and the cause (``says``, or one of
    them) and none of ``hidden``; and nothing of it is left in the registry: the backend proved
    that nothing was created (issue 11)."""
    with reclaim.Fixture("creates-nothing") as f, pytest.raises(reclaim.AcquireError) as info:
        f.acquire(backend)
    errors = [info.value]
    if also_async:

        async def main() -> reclaim.AcquireError:
            async with reclaim.Fixture("creates-nothing-async") as f:
                with pytest.raises(reclaim.AcquireError) as ainfo:
                    await f.aacquire(backend)
            return ainfo.value

        errors.append(asyncio.run(main()))
    causes = (says,) if isinstance(says, str) else says
    secrets_ = (hidden,) if isinstance(hidden, str) else hidden
    for error in errors:
        assert not isinstance(error, reclaim.ReleaseError)
        message = str(error)
        assert backend.kind in message
        assert any(cause in message for cause in causes), message
        for secret in secrets_:
            assert secret not in message
    assert registry_is_empty(registry_path), "the planned entry is closed as never created"

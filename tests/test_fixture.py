"""Layer 1: the Fixture releases last in first out, keeps every error, and cleans up after a
set-up that failed half-way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import reclaim
from conftest import alive
from reclaim import AcquireError, FixtureStateError, ReleaseError
from reclaim._registry import open_registry
from reclaim._run import existing_run
from reclaim.backends import Backend, Record
from reclaim.backends.path import TempDir
from reclaim.backends.process import Process
from reclaim_test_backends import SECRET, Flaky


class Broken(Backend[str]):
    """Creates nothing; its release always fails."""

    kind = "test.broken"

    def acquire(self, name: str) -> tuple[str, Record]:
        return name, {"name": name}

    @classmethod
    def release(cls, record: Record) -> None:
        raise OSError(f"cannot release {record['name']}")

    @classmethod
    def exists(cls, record: Record) -> bool:
        return True


class HalfMade(Backend[str]):
    """Creates its directory, then fails: acquire must release what it left."""

    kind = "path.tempdir"  # released through TempDir's class by the registry; here in-process

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.parent / name)}

    def acquire(self, name: str) -> tuple[str, Record]:
        (self.parent / name).mkdir()
        raise ConnectionError("server went away half-way")

    @classmethod
    def release(cls, record: Record) -> None:
        TempDir.release(record)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return TempDir.exists(record)


def _flush(registry_path: str) -> None:
    """Write the marks the owner deferred: what another process sees after the write delay."""
    run = existing_run(registry_path)
    assert run is not None
    run.registry.flush()


def test_releases_last_in_first_out(registry_path: str, scratch: Path) -> None:
    order: list[str] = []
    with reclaim.Fixture("lifo") as f:
        first = f.acquire(TempDir(parent=scratch))
        f.add_cleanup(lambda: order.append(f"cleanup sees first: {first.exists()}"))
        second = f.acquire(TempDir(parent=scratch))
        f.add_cleanup(lambda: order.append(f"cleanup sees second: {second.exists()}"))
        assert len(f) == 2
    assert order == ["cleanup sees second: True", "cleanup sees first: True"]
    assert not first.exists()
    assert not second.exists()
    _flush(registry_path)
    reg = open_registry(registry_path)
    events = [e.event for e in reg.events() if e.event.startswith("resource.")]
    assert events == ["resource.planned", "resource.acquired"] * 2 + ["resource.released"] * 2
    released = [e.name for e in reg.events() if e.event == "resource.released"]
    assert released == [second.name, first.name]
    assert reg.resources() == []
    reg.close()


def test_process_is_stopped_and_reaped(registry_path: str) -> None:
    with reclaim.Fixture("proc") as f:
        proc = f.acquire(Process(["sleep", "600"]))
        assert alive(proc.pid)
        assert os.getpgid(proc.pid) == proc.pid, "the child leads a process group of its own"
    assert proc.returncode is not None, "discard() reaped the child"
    assert not alive(proc.pid)


def test_setup_failure_releases_what_it_acquired(registry_path: str, scratch: Path) -> None:
    made: list[Path] = []

    class Database(reclaim.Fixture):
        def setup(self) -> None:
            made.append(self.acquire(TempDir(parent=scratch)))
            self.add_detail("server.log", lambda: "listening on 5432\n")
            raise RuntimeError("migration failed")

    fixture = Database("db")
    with pytest.raises(RuntimeError, match="migration failed"), fixture:
        pytest.fail("the block must not run")
    assert not made[0].exists()
    assert fixture.get_details() == {"server.log": "listening on 5432\n"}
    with pytest.raises(RuntimeError, match="migration"), fixture:  # entered again: not "open"
        pass
    assert not made[1].exists()


def test_setup_failure_with_a_failing_release_raises_both(registry_path: str) -> None:
    class Fragile(reclaim.Fixture):
        def setup(self) -> None:
            self.acquire(Broken())
            raise ValueError("set-up broke")

    with pytest.raises(ExceptionGroup) as info, Fragile("fragile"):
        pass
    assert "set-up of fixture 'fragile' failed" in str(info.value)
    kinds = [type(e) for e in info.value.exceptions]
    assert kinds == [ValueError, ReleaseError]


def test_keyboard_interrupt_in_setup_propagates_unchanged(
    registry_path: str, scratch: Path
) -> None:
    made: list[Path] = []

    class Interrupted(reclaim.Fixture):
        def setup(self) -> None:
            made.append(self.acquire(TempDir(parent=scratch)))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), Interrupted("ki"):
        pass
    assert not made[0].exists()


def test_every_release_failure_is_kept(registry_path: str, scratch: Path) -> None:
    calls: list[str] = []

    def bad_cleanup() -> None:
        calls.append("bad cleanup")
        raise LookupError("cleanup failed")

    with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("many") as f:
        good = f.acquire(TempDir(parent=scratch))
        f.acquire(Broken())
        f.add_cleanup(bad_cleanup)
        f.add_cleanup(calls.append, "good cleanup")
        raise ZeroDivisionError("the block failed")
    group = info.value
    assert [type(e) for e in group.exceptions] == [ZeroDivisionError, LookupError, ReleaseError]
    assert calls == ["good cleanup", "bad cleanup"]
    assert not good.exists(), "the good resource was released despite the failures around it"
    error = group.exceptions[2]
    assert isinstance(error, ReleaseError)
    assert error.kind == "test.broken"
    assert "stays in state failed" in str(error)
    _flush(registry_path)
    reg = open_registry(registry_path)
    (kept,) = reg.resources()
    assert kept.state == "failed"
    assert kept.kind == "test.broken"
    reg.close()


def test_release_failures_without_block_error(registry_path: str) -> None:
    with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("quiet") as f:
        f.acquire(Broken())
    assert [type(e) for e in info.value.exceptions] == [ReleaseError]


def test_keyboard_interrupt_in_block_keeps_release_errors_as_notes(registry_path: str) -> None:
    with pytest.raises(KeyboardInterrupt) as info, reclaim.Fixture("ctrl-c") as f:
        f.acquire(Broken())
        raise KeyboardInterrupt
    assert any("could not be released" in n for n in info.value.__notes__)


def test_secret_never_in_release_error(registry_path: str, scratch: Path) -> None:
    with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("secret") as f:
        path = f.acquire(Flaky(scratch))
        Path(f"{path}.fail").write_text("")
    error = info.value.exceptions[0]
    assert "cannot delete" in str(error)
    assert SECRET not in str(error)
    assert error.__cause__ is None
    (note,) = error.__notes__
    assert "PermissionError: cannot delete" in note
    assert SECRET not in note


def test_acquire_failure_releases_the_half_made(registry_path: str, scratch: Path) -> None:
    with reclaim.Fixture("half") as f, pytest.raises(AcquireError) as info:
        f.acquire(HalfMade(scratch))
    assert list(scratch.iterdir()) == []
    assert "server went away" in str(info.value)
    assert info.value.kind == "path.tempdir"
    # The driver's error is kept as a note, secrets redacted, never as a raw __cause__ (I7).
    assert info.value.__cause__ is None
    assert any("ConnectionError: server went away" in note for note in info.value.__notes__)


def test_double_exit_and_double_release_are_no_ops(registry_path: str, scratch: Path) -> None:
    fixture = reclaim.Fixture("twice")
    with fixture:
        path = fixture.acquire(TempDir(parent=scratch))
    fixture.__exit__(None, None, None)
    record = {"name": path.name, "path": str(path)}
    TempDir.release(record)
    TempDir.release(record)
    assert not path.exists()


def test_misuse_is_a_clear_error(registry_path: str) -> None:
    fixture = reclaim.Fixture("misuse")
    with pytest.raises(FixtureStateError, match="not open"):
        fixture.acquire(TempDir())
    with fixture, pytest.raises(FixtureStateError, match="already open"):
        fixture.__enter__()
    assert isinstance(FixtureStateError("x"), RuntimeError)


def test_use_composes_and_merges_details(registry_path: str, scratch: Path) -> None:
    class Child(reclaim.Fixture):
        def setup(self) -> None:
            self.path = self.acquire(TempDir(parent=scratch))
            self.add_detail("log", "child log")

    with reclaim.Fixture("parent") as parent:
        parent.add_detail("log", "parent log")
        child = parent.use(Child("child"))
        assert child.path.exists()
        assert parent.get_details() == {"log": "parent log", "log-1": "child log"}
    assert not child.path.exists()


def test_use_keeps_errors_of_children(registry_path: str) -> None:
    class Bad(reclaim.Fixture):
        def setup(self) -> None:
            self.acquire(Broken())

    with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("parent") as parent:
        parent.use(Bad("bad-1"))
        parent.use(Bad("bad-2"))
    nested = info.value.exceptions
    assert len(nested) == 2
    assert all(isinstance(e, ExceptionGroup) for e in nested)


def test_forked_child_does_not_release_the_parents(registry_path: str, scratch: Path) -> None:
    with reclaim.Fixture("forked") as f:
        path = f.acquire(TempDir(parent=scratch))
        pid = os.fork()
        if pid == 0:  # the child leaves the block it inherited, then exits at once
            try:
                f.__exit__(None, None, None)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert path.exists(), "a forked child must not release its parent's resources"
    assert not path.exists()


def test_async_acquire_and_release(registry_path: str, scratch: Path) -> None:
    async def main() -> tuple[Path, Any]:
        async with reclaim.Fixture("async") as f:
            path = await f.aacquire(TempDir(parent=scratch))
            proc = await f.aacquire(Process(["sleep", "600"]))
            assert path.exists()
            assert alive(proc.pid)
        return path, proc

    path, proc = asyncio.run(main())
    assert not path.exists()
    assert not alive(proc.pid)


def test_cancellation_does_not_skip_releases(registry_path: str, scratch: Path) -> None:
    paths: list[Path] = []
    cleaned: list[str] = []

    async def slow_cleanup() -> None:
        await asyncio.sleep(0.2)
        cleaned.append("slow cleanup finished")

    async def worker(ready: asyncio.Event) -> None:
        async with reclaim.Fixture("cancelled") as f:
            paths.append(await f.aacquire(TempDir(parent=scratch)))
            f.add_cleanup(slow_cleanup)
            paths.append(await f.aacquire(TempDir(parent=scratch)))
            ready.set()
            await asyncio.sleep(600)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(worker(ready))
        await ready.wait()
        task.cancel()  # lands in the block's sleep
        await asyncio.sleep(0.05)
        task.cancel()  # lands during the releases
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == ["slow cleanup finished"]
    assert not any(p.exists() for p in paths)


def test_async_cleanup_in_sync_exit_is_an_error(registry_path: str) -> None:
    async def cleanup() -> None:
        pass

    with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("sync") as f:
        f.add_cleanup(cleanup)
    assert "async with" in str(info.value.exceptions[0])


def test_at_exit_releases_what_is_still_held(registry_path: str, scratch: Path) -> None:
    """A clean exit with a resource never handed back (no `with`) still releases it."""
    code = (
        "import sys, reclaim\n"
        "from reclaim.backends.path import TempDir\n"
        "f = reclaim.Fixture('leaky').__enter__()\n"
        "print(f.acquire(TempDir(parent=sys.argv[1])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(scratch)], capture_output=True, text=True, check=True
    )
    path = Path(out.stdout.strip())
    assert path.parent == scratch
    assert not path.exists()
    reg = open_registry(registry_path)
    assert reg.list_runs() == []
    assert [e.detail.get("by") for e in reg.events() if e.event == "resource.released"] == ["exit"]
    reg.close()


def test_a_name_that_is_not_text_is_refused_before_anything_is_journaled(
    registry_path: str,
) -> None:
    """The name is journaled as text: a number or a path is refused at once, with a message
    that says so, rather than as a damaged journal line later."""
    with pytest.raises(TypeError, match=r"a Fixture's name is a str .* not int 5"):
        reclaim.Fixture(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not PosixPath"):
        reclaim.Fixture(Path("/tmp"))  # type: ignore[arg-type]
    assert not os.path.exists(registry_path), "nothing was journaled, nor a registry made"

"""``reclaim demo``: a process acquires temp directories and a child process, is killed with
SIGKILL, and reclaim releases what it left. Needs no server; runs on a fresh machine.

The child half runs as ``python -m reclaim._demo LOCATION``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from reclaim import _settings as settings
from reclaim._identity import process_state
from reclaim._reaper import is_alive, reap_run
from reclaim._registry import open_registry

__all__ = ["run_demo"]

_DIRS = 3


def _child(location: str) -> None:  # pragma: no cover - runs in the child process
    import reclaim  # noqa: PLC0415  (what the demo's child needs, imported in the child)
    from reclaim.backends.path import TempDir  # noqa: PLC0415  (what the demo's child needs, imported in the child)
    from reclaim.backends.process import Process  # noqa: PLC0415  (what the demo's child needs, imported in the child)

    with reclaim.Fixture("demo", registry=location) as fixture:
        dirs = []
        for n in range(_DIRS):
            path = fixture.acquire(TempDir(prefix="demo-"))
            (path / "data.txt").write_text(f"scratch data {n}\n")
            dirs.append(str(path))
        sleeper = fixture.acquire(Process([sys.executable, "-c", "import time; time.sleep(3600)"]))
        from reclaim._run import current_run  # noqa: PLC0415  (what the demo's child needs, imported in the child)

        run_id = current_run(location).id
        print(json.dumps({"run": run_id, "dirs": dirs, "pid": sleeper.pid}), flush=True)
        time.sleep(3600)  # killed long before this ends


def _alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state.alive


def run_demo(location: str, console: Console) -> bool:
    """Run the demo against the registry at ``location``; True when nothing remains.

    Everything printed is Text (paths and locations shown as they are, never read as markup),
    so ``console`` may have markup on or off.
    """
    console.print(
        Text.assemble(
            ("reclaim demo", "bold"), ": a process is killed with SIGKILL; its leftovers go."
        )
    )
    console.print(Text(f"registry: {location}", style="dim"))
    console.print()
    # No watchdog for the child: the demo shows what the sweeper does with a run whose owner and
    # watchdog died together (a whole CI machine killed at once).
    child = subprocess.Popen(
        [sys.executable, "-m", "reclaim._demo", location],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, settings.WATCHDOG.name: "0"},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            child.wait()
            console.print(
                Text(f"the demo's child process failed (exit {child.returncode})", style="red")
            )
            return False
        held: dict[str, Any] = json.loads(line)
        console.print(
            Text(
                f"1. Process {child.pid} (run {held['run']}) acquired {_DIRS} temp directories"
                f" and a child process (pid {held['pid']}):"
            )
        )
        for d in held["dirs"]:
            console.print(Text(f"     {d}"))
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    console.print(
        Text(f"2. Process {child.pid} was killed with SIGKILL: no `finally`, no atexit ran.")
    )

    registry = open_registry(location)
    try:
        run = registry.get_run(held["run"])
        left_dirs = [d for d in held["dirs"] if os.path.isdir(d)]
        console.print(
            Text(
                f"3. Left behind: {len(left_dirs)} directories on disk, child process "
                f"{'still running' if _alive(held['pid']) else 'gone'}; the registry holds "
                f"{len(registry.resources(held['run']))} entries for the run, whose owner is "
                f"{'alive' if run and is_alive(run) else 'dead'}."
            )
        )
        if run is not None:
            started = time.perf_counter()
            outcomes = reap_run(registry, run, actor="sweeper") or []
            elapsed = (time.perf_counter() - started) * 1000
            released = sum(1 for o in outcomes if o.released)
            console.print(
                Text(
                    f"4. reclaim released {released} of {len(outcomes)} in {elapsed:.0f} ms"
                    " (what `reclaim sweep` does for every dead run)."
                )
            )
        remaining_dirs = [d for d in held["dirs"] if os.path.exists(d)]
        running = _alive(held["pid"])
        entries = len(registry.resources(held["run"]))
    finally:
        registry.close()
    ok = not remaining_dirs and not running and entries == 0
    if ok:
        console.print(
            Text.assemble(
                "5. ",
                ("Nothing remains", "bold green"),
                ": no directory on disk, no process, no registry entry.",
            )
        )
    else:
        console.print(
            Text.assemble(
                "5. ",
                ("Something remains", "bold red"),
                f": dirs {remaining_dirs}, process running: {running},"
                f" registry entries: {entries}. See `reclaim status`.",
            )
        )
    return ok


if __name__ == "__main__":  # pragma: no cover
    _child(sys.argv[1])

"""Benchmark: how fast the watchdog releases what a SIGKILLed owner held, and what it costs.

Measured in one run:

- ``kill -> last release``: an owner acquires N temp directories (N = 1, 100, 1000) and is sent
  SIGKILL; the clock runs from the kill until the last directory is gone from disk, with no
  other command. Side by side: the same leftovers released by ``reclaim sweep --grace 0`` run
  right after the kill with the watchdog switched off (layer 4, what a cron job or the next run
  does), timed from the kill too. For scale: Testcontainers' Ryuk waits 10 s after its client's
  connection drops before it prunes anything (RYUK_RECONNECTION_TIMEOUT), and only knows Docker.
- ``watchdog start-up``: from spawning the watchdog to its exit when told at once that the run
  closed cleanly (an upper bound on the start-up, which the owner never waits for).
- ``watchdog RSS``: its resident memory while it waits.

Run from the project root: ``uv run python bench/watchdog.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOLDER = """
import sys, time, reclaim
from reclaim.backends.path import TempDir
with reclaim.Fixture("bench") as f:
    for _ in range(int(sys.argv[2])):
        f.acquire(TempDir(parent=sys.argv[1]))
    print("ready", flush=True)
    time.sleep(600)
"""


def _kill_and_time(n: int, workdir: Path, *, watchdog: bool, alive: float) -> float:
    scratch = Path(tempfile.mkdtemp(dir=workdir))
    env = {
        **os.environ,
        "RECLAIM_REGISTRY": str(scratch / "registry.sqlite3"),
        "RECLAIM_WATCHDOG": "1" if watchdog else "0",
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(scratch), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"
    time.sleep(alive)  # a test session lives on after its acquisitions
    started = time.perf_counter()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    if not watchdog:
        subprocess.run(
            [sys.executable, "-m", "reclaim", "sweep", "--grace", "0", "--json"],
            env=env,
            check=True,
            capture_output=True,
        )
    deadline = started + 120
    while any(p.name.startswith("rc_") for p in scratch.iterdir()):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{n} directories not released within 120 s")
        time.sleep(0.001)
    return (time.perf_counter() - started) * 1000


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _watchdog_startup_and_rss(workdir: Path) -> tuple[float, int, int]:
    from reclaim import _watchdog  # noqa: PLC0415  (measured: its import is part of the start-up)

    sleeper = subprocess.Popen(["sleep", "600"])
    stat = Path(f"/proc/{sleeper.pid}/stat").read_bytes()
    start = int(stat[stat.rfind(b")") + 2 :].split()[19])
    package_parent = str(Path(_watchdog.__file__).parent.parent)
    argv = [sys.executable, _watchdog.__file__, package_parent, "00000000", str(sleeper.pid)]
    argv += [str(start), "20.0"]
    env = {**os.environ, "RECLAIM_WATCHDOG_REGISTRY": str(workdir / "none.db")}
    try:
        read_end, write_end = os.pipe()
        waiting = subprocess.Popen(argv, stdin=read_end, env=env)
        time.sleep(0.3)
        rss_kb = _rss_kb(waiting.pid)  # before it imports ahead
        time.sleep(_watchdog.IMPORT_AHEAD_AFTER + 1.0)
        rss_ahead_kb = _rss_kb(waiting.pid)  # reclaim imported, the registry opened
        os.write(write_end, b"closed")
        waiting.wait(timeout=10)
        os.close(read_end)
        os.close(write_end)

        read_end, write_end = os.pipe()
        os.write(write_end, b"closed")
        started = time.perf_counter()
        subprocess.run(argv, stdin=read_end, check=True, timeout=10, env=env)
        elapsed = (time.perf_counter() - started) * 1000
        os.close(read_end)
        os.close(write_end)
    finally:
        sleeper.kill()
        sleeper.wait()
    return elapsed, rss_kb, rss_ahead_kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--alive",
        type=float,
        default=1.5,
        help="seconds the owner lives after its acquisitions before the SIGKILL (default 1.5:"
        " past the watchdog's import-ahead; 0 measures a death right after start)",
    )
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="reclaim-bench-") as tmp:
        workdir = Path(tmp)
        rows = []
        for n in (1, 100, 1000):
            repeat = args.repeat if n < 1000 else max(1, args.repeat // 2)
            wd: list[float] = []
            sw: list[float] = []
            for _ in range(repeat):  # interleaved, so noise hits both alike
                wd.append(_kill_and_time(n, workdir, watchdog=True, alive=args.alive))
                sw.append(_kill_and_time(n, workdir, watchdog=False, alive=args.alive))
            rows.append((n, statistics.median(wd), statistics.median(sw)))
            results[f"kill_to_last_release_ms_{n}"] = {
                "watchdog": statistics.median(wd),
                "sweep": statistics.median(sw),
            }
        startups = [_watchdog_startup_and_rss(workdir) for _ in range(args.repeat)]
        startup = statistics.median(s for s, _, _ in startups)
        rss = statistics.median(r for _, r, _ in startups)
        rss_ahead = statistics.median(r for _, _, r in startups)
    results["watchdog_startup_ms"] = startup
    results["watchdog_rss_kb"] = rss
    results["watchdog_rss_after_import_ahead_kb"] = rss_ahead
    results["owner_alive_s"] = args.alive
    print("| resources | watchdog: SIGKILL -> last release | sweep right after the kill | ratio |")
    print("|---:|---:|---:|---:|")
    for n, w, s in rows:
        print(f"| {n} | {w:.0f} ms | {s:.0f} ms | {s / w:.1f}x |")
    print(f"\nwatchdog start-up (spawn -> exit on a clean close): {startup:.0f} ms (median)")
    print(f"watchdog resident memory while waiting: {rss / 1024:.1f} MiB for its first second,")
    print(f"{rss_ahead / 1024:.1f} MiB once it has imported reclaim and opened the registry")
    if args.save:
        out = Path(__file__).parent / "results" / "watchdog.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: reclaim's registry bookkeeping per resource, next to one raw SQLite commit.

What it measures, per operation, all in one run:

- ``owner cycle``: the registry calls a Fixture makes for one resource, on a fresh
  :class:`reclaim._registry._sqlite.SQLiteRegistry`: ``plan(defer=True)`` (a line appended to
  the run's journal), ``mark_acquired(defer=True)`` (a record that adds nothing to the planned
  one waits in memory), ``mark_released(defer=True)`` (the owner of a live run releases
  without a claim: one more line). No write transaction: the journal is merged once 4096
  lines wait (here; a run's renewal thread merges it every second), a cost the mean carries.
- ``claimed cycle``: the same resource released the way a reaper releases one on its own:
  ``plan``, ``mark_acquired``, ``get_resource``, ``begin_release`` (the claim),
  ``mark_released``: four write transactions and one read. The time of each call is recorded.
- ``Fixture acquire+release``: the whole in-process path, ``with reclaim.Fixture(...) as f:
  f.acquire(NoopBackend())``, with a backend that creates nothing, so what remains is reclaim's
  own cost (run lookup, naming, the registry calls, the release loop).
- ``raw SQLite commit``: ``BEGIN IMMEDIATE; INSERT one row; COMMIT`` on a plain ``sqlite3``
  connection with the registry's settings (WAL, ``synchronous=NORMAL``, autocommit mode).

Every variant uses its own database file in one temporary directory. The variants run in
rounds, each round doing ``--n`` operations of every variant (in a rotated order), so machine
noise hits them all alike. The report gives medians in microseconds, means too (a WAL
checkpoint lands on one operation in thousands: the mean carries its share, the median not)
and the ratio ``/ raw commit`` (the owner's cycle takes no transaction of its own). It prints a
Markdown table and, with ``--save``, writes ``bench/results/bookkeeping.json``.

Run it from the project root::

    uv run python bench/bookkeeping.py                 # 5 rounds x 1000 operations
    uv run python bench/bookkeeping.py --n 200 --rounds 3 --dir /dev/shm
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import reclaim
from reclaim._identity import current_identity
from reclaim._registry import ENV_VAR, ResourceState
from reclaim._registry._sqlite import SQLiteRegistry
from reclaim._run import existing_run
from reclaim.backends import Backend, Record

RESULTS: Final = Path(__file__).resolve().parent / "results" / "bookkeeping.json"
OWN_STATES: Final = (ResourceState.PLANNED, ResourceState.ACQUIRED, ResourceState.FAILED)
STEPS: Final = ("plan", "mark_acquired", "get_resource", "begin_release", "mark_released")
WARMUP: Final = 50

OWNER: Final = "owner cycle"
REGISTRY: Final = "claimed cycle"
FIXTURE: Final = "Fixture acquire+release"
RAW: Final = "raw SQLite commit"


class NoopBackend(Backend[str]):
    """A backend that creates nothing: only reclaim's own bookkeeping is left to time."""

    kind: ClassVar[str] = "bench.noop"

    def acquire(self, name: str) -> tuple[str, Record]:
        return name, {"name": name}

    @classmethod
    def release(cls, record: Record) -> None:
        """Nothing was created, so nothing to delete."""

    @classmethod
    def exists(cls, record: Record) -> bool:
        return False


class RegistryCycle:
    """The registry calls of one resource's life, on a registry of its own."""

    def __init__(self, path: Path) -> None:
        self.registry = SQLiteRegistry(path)
        self.run_id = "bench0001"
        self.registry.open_run(self.run_id, current_identity(), label="bench")
        self.seq = 0
        #: Per-step durations (ns) of the measured cycles.
        self.steps: dict[str, list[int]] = {step: [] for step in STEPS}

    def once(self) -> int:
        """One full cycle; returns its duration in ns and records each step's."""
        self.seq += 1
        name = f"rc_{self.run_id}_bench_{self.seq}"
        reg = self.registry
        t0 = time.perf_counter_ns()
        rid = reg.plan(self.run_id, "bench", NoopBackend.kind, name, {"name": name})
        t1 = time.perf_counter_ns()
        reg.mark_acquired(rid, {"name": name})
        t2 = time.perf_counter_ns()
        found = reg.get_resource(rid)
        t3 = time.perf_counter_ns()
        claimed = reg.begin_release(rid, states=OWN_STATES)
        t4 = time.perf_counter_ns()
        reg.mark_released(rid, actor="bench")
        t5 = time.perf_counter_ns()
        if found is None or claimed is None:
            raise RuntimeError(f"resource {rid} vanished during the cycle")
        for step, start, end in zip(STEPS, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
            self.steps[step].append(end - start)
        return t5 - t0

    def close(self) -> None:
        self.registry.close_run(self.run_id)
        self.registry.close()


class OwnerCycle:
    """The registry calls of a Fixture's resource, on a registry of its own."""

    def __init__(self, path: Path) -> None:
        self.registry = SQLiteRegistry(path)
        self.run_id = "bench0002"
        self.registry.open_run(self.run_id, current_identity(), label="bench")
        self.seq = 0

    def once(self) -> int:
        self.seq += 1
        name = f"rc_{self.run_id}_bench_{self.seq}"
        reg = self.registry
        t0 = time.perf_counter_ns()
        rid = reg.plan(self.run_id, "bench", NoopBackend.kind, name, {"name": name}, defer=True)
        reg.mark_acquired(rid, {"name": name}, defer=True)
        reg.mark_released(rid, actor="bench", defer=True)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.registry.close_run(self.run_id)
        self.registry.close()


class FixtureCycle:
    """``with Fixture: acquire`` through the public API, on the registry RECLAIM_REGISTRY names."""

    def __init__(self, path: Path) -> None:
        os.environ[ENV_VAR] = str(path)
        self.backend = NoopBackend()

    def once(self) -> int:
        fixture = reclaim.Fixture("bench")
        t0 = time.perf_counter_ns()
        with fixture:
            fixture.acquire(self.backend)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        run = existing_run()
        if run is not None:
            run.close()
            run.registry.close()


class RawCommit:
    """One-row write transactions on a plain connection with the registry's settings."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL NOT NULL, v TEXT)"
        )
        self.seq = 0

    def once(self) -> int:
        self.seq += 1
        conn = self.conn
        t0 = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (at, v) VALUES (?, ?)", (time.time(), f"row {self.seq}"))
        conn.execute("COMMIT")
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.conn.close()


def median_us(samples: Sequence[int]) -> float:
    return statistics.median(samples) / 1000


def p90_us(samples: Sequence[int]) -> float:
    return statistics.quantiles(samples, n=10)[-1] / 1000


def measure(
    variants: dict[str, Callable[[], int]], n: int, rounds: int
) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Run ``n`` operations of every variant per round, rotating the order each round."""
    for once in variants.values():
        for _ in range(WARMUP):
            once()
    samples: dict[str, list[int]] = {name: [] for name in variants}
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            once = variants[name]
            gc.collect()
            block = [once() for _ in range(n)]
            samples[name].extend(block)
            per_round[name].append(round(median_us(block), 2))
    return samples, per_round


def build_report(
    samples: dict[str, list[int]],
    per_round: dict[str, list[float]],
    steps: dict[str, list[int]],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    raw = median_us(samples[RAW])
    variants: dict[str, Any] = {}
    for name, data in samples.items():
        med = median_us(data)
        variants[name] = {
            "median_us": round(med, 2),
            "mean_us": round(statistics.fmean(data) / 1000, 2),
            "p90_us": round(p90_us(data), 2),
            "round_medians_us": per_round[name],
            "ratio_to_raw_commit": round(med / raw, 2),
        }
    return {
        "n_per_round": args.n,
        "rounds": args.rounds,
        "workdir": str(workdir),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": variants,
        "registry_steps_median_us": {s: round(median_us(v), 2) for s, v in steps.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['rounds']} rounds x {report['n_per_round']} ops, SQLite {report['sqlite']},"
        f" Python {report['python']}, {report['machine']}, files in {report['workdir']}",
        "",
        "| variant | median µs | mean µs | p90 µs | / raw commit |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in report["variants"].items():
        lines.append(
            f"| {name} | {v['median_us']:.1f} | {v['mean_us']:.1f} | {v['p90_us']:.1f}"
            f" | {v['ratio_to_raw_commit']:.2f} |"
        )
    lines += ["", "| claimed cycle's step | median µs |", "|---|---:|"]
    lines += [f"| {s} | {us:.1f} |" for s, us in report["registry_steps_median_us"].items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000, help="operations per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the temporary databases"
    )
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args(argv)
    if args.n < 2 or args.rounds < 1:
        parser.error("--n must be at least 2 and --rounds at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="reclaim-bench-", dir=args.dir))
    try:
        cycle = RegistryCycle(workdir / "registry.sqlite3")
        owner = OwnerCycle(workdir / "owner.sqlite3")
        fixture = FixtureCycle(workdir / "fixture.sqlite3")
        raw = RawCommit(workdir / "raw.sqlite3")
        try:
            samples, per_round = measure(
                {OWNER: owner.once, REGISTRY: cycle.once, FIXTURE: fixture.once, RAW: raw.once},
                args.n,
                args.rounds,
            )
            # Only the measured cycles' steps: drop the warm-up's.
            steps = {s: v[WARMUP:] for s, v in cycle.steps.items()}
        finally:
            cycle.close()
            owner.close()
            fixture.close()
            raw.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(samples, per_round, steps, args, workdir)
    print(markdown(report))
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"\nwritten to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

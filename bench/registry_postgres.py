"""Benchmark: the PostgreSQL registry next to the SQLite one and next to its raw round trips;
sweep throughput of dead resources with 1 and 4 sweepers.

Part 1, per resource, all in one run (rounds rotate the order so noise hits all alike):

- ``sqlite cycle``: the registry calls of one resource released with a claim, as a reaper
  releases an entry on its own (``plan``, ``mark_acquired``, ``get_resource``,
  ``begin_release``, ``mark_released``: four write transactions and one read; a Fixture's own
  release needs two or three of them, see ``bench/bookkeeping.py``) on an SQLite registry;
- ``postgres cycle``: the same calls on a PostgreSQL registry (a schema of its own);
- ``raw postgres txn``: ``BEGIN; INSERT one row; COMMIT`` on a plain psycopg connection to the
  same server, the least one journaled write can cost; the cycle needs four of them and a read.

Part 2: 2,000 resources of 20 dead runs (owners on another "host" whose leases expired) in the
PostgreSQL registry, released by ``reclaim sweep`` processes with a backend that deletes
nothing, so what is timed is the registry's claim and bookkeeping. Once with one sweeper, once
with four at the same time (each resource is still released exactly once: the claims are made by
the database; the benchmark checks the count).

Run from the project root, with PostgreSQL at ``RECLAIM_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``)::

    uv run python bench/registry_postgres.py              # prints a Markdown table
    uv run python bench/registry_postgres.py --save       # also writes bench/results/...json

It leaves nothing behind: its schemas are dropped and its files removed, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

import psycopg
from psycopg import sql

from reclaim._identity import Identity, current_identity
from reclaim._registry import Registry, ResourceState, open_registry
from reclaim.backends import Backend, Record

RESULTS: Final = Path(__file__).resolve().parent / "results" / "registry_postgres.json"
PG_URL: Final = os.environ.get(
    "RECLAIM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
OWN_STATES: Final = (ResourceState.PLANNED, ResourceState.ACQUIRED, ResourceState.FAILED)
WARMUP: Final = 30


class NoopBackend(Backend[str]):
    """Creates and deletes nothing: what is left to time is reclaim's bookkeeping."""

    kind: ClassVar[str] = "bench.noop"

    def acquire(self, name: str) -> tuple[str, Record]:
        return name, {"name": name}

    @classmethod
    def release(cls, record: Record) -> None:
        """Nothing was made."""

    @classmethod
    def exists(cls, record: Record) -> bool:
        return False


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A registry URL on a schema of its own, dropped afterwards whatever happens."""
    schema = f"reclaim_bench_{secrets.token_hex(4)}"
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Cycle:
    """The registry calls of one resource's life, on ``registry``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.run_id = secrets.token_hex(4)
        registry.open_run(self.run_id, current_identity(), label="bench")
        self.seq = 0

    def once(self) -> int:
        self.seq += 1
        name = f"rc_{self.run_id}_b_{self.seq}"
        reg = self.registry
        t0 = time.perf_counter_ns()
        rid = reg.plan(self.run_id, "bench", NoopBackend.kind, name, {"name": name})
        reg.mark_acquired(rid, {"name": name})
        found = reg.get_resource(rid)
        claimed = reg.begin_release(rid, states=OWN_STATES)
        reg.mark_released(rid, actor="bench")
        elapsed = time.perf_counter_ns() - t0
        if found is None or claimed is None:
            raise RuntimeError(f"resource {rid} vanished during the cycle")
        return elapsed


class RawTxn:
    """One-row write transactions on a plain psycopg connection."""

    def __init__(self, schema_url: str) -> None:
        self.schema = schema_url.rpartition("schema=")[2]
        self.conn = psycopg.connect(PG_URL)
        with self.conn.transaction():
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            self.conn.execute(
                sql.SQL("CREATE TABLE {}.t (id bigserial PRIMARY KEY, at float8, v text)").format(
                    sql.Identifier(self.schema)
                )
            )
        self.insert = sql.SQL("INSERT INTO {}.t (at, v) VALUES (%s, %s)").format(
            sql.Identifier(self.schema)
        )

    def once(self) -> int:
        t0 = time.perf_counter_ns()
        with self.conn.transaction():
            self.conn.execute(self.insert, (time.time(), "row"))
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.conn.close()


def measure(variants: dict[str, Callable[[], int]], n: int, rounds: int) -> dict[str, list[int]]:
    for once in variants.values():
        for _ in range(WARMUP):
            once()
    samples: dict[str, list[int]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            samples[name].extend(variants[name]() for _ in range(n))
    return samples


def per_resource(n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    with pg_schema() as pg_url, pg_schema() as raw_url:
        sqlite_reg = open_registry(str(workdir / "registry.sqlite3"))
        pg_reg = open_registry(pg_url)
        raw = RawTxn(raw_url)
        try:
            samples = measure(
                {
                    "sqlite cycle": Cycle(sqlite_reg).once,
                    "postgres cycle": Cycle(pg_reg).once,
                    "raw postgres txn": raw.once,
                },
                n,
                rounds,
            )
        finally:
            raw.close()
            sqlite_reg.close()
            pg_reg.close()
    medians = {k: statistics.median(v) / 1000 for k, v in samples.items()}
    return {
        "median_us": {k: round(v, 1) for k, v in medians.items()},
        "postgres_cycle_over_sqlite_cycle": round(
            medians["postgres cycle"] / medians["sqlite cycle"], 2
        ),
        "postgres_cycle_over_4_raw_txns": round(
            medians["postgres cycle"] / (4 * medians["raw postgres txn"]), 2
        ),
    }


def _dead_owner(host: str) -> Identity:
    me = current_identity()
    return Identity(host=host, boot_id=me.boot_id, pidns=me.pidns, pid=1, start_time=1)


def fill(pg_url: str, runs: int, per_run: int) -> None:
    """``runs`` dead runs of another host, their leases long expired, ``per_run`` each."""
    reg = open_registry(pg_url)
    try:
        for _ in range(runs):
            run_id = secrets.token_hex(4)
            reg.open_run(run_id, _dead_owner("bench-dead-host"), label="dead", lease_seconds=1.0)
            for seq in range(1, per_run + 1):
                name = f"rc_{run_id}_b_{seq}"
                rid = reg.plan(run_id, "bench", NoopBackend.kind, name, {"name": name})
                reg.mark_acquired(rid, {"name": name})
    finally:
        reg.close()
    time.sleep(1.1)  # the leases expire


def sweep_with(pg_url: str, sweepers: int, total: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "RECLAIM_REGISTRY": pg_url,
        "RECLAIM_BACKENDS": "bench.noop=registry_postgres:NoopBackend",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "RECLAIM_HOST_ID": "bench-sweeper-host",
    }
    cmd = [sys.executable, "-m", "reclaim", "sweep", "--grace", "0", "--json"]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(sweepers)
    ]
    released = 0
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a sweeper failed: {err[-2000:]}")
        released += json.loads(out)["released"]
    seconds = time.perf_counter() - started
    if released != total:
        raise RuntimeError(f"{released} releases for {total} resources: each must be released once")
    return {
        "sweepers": sweepers,
        "seconds": round(seconds, 2),
        "resources_per_second": round(total / seconds, 1),
    }


def throughput(runs: int, per_run: int) -> list[dict[str, Any]]:
    out = []
    for sweepers in (1, 4):
        with pg_schema() as pg_url:
            fill(pg_url, runs, per_run)
            out.append(sweep_with(pg_url, sweepers, runs * per_run))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="operations per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="dead runs for the sweep part")
    parser.add_argument("--per-run", type=int, default=100)
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reclaim-bench-") as tmp:
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs,"
            f" Python {platform.python_version()}",
            "per_resource": per_resource(args.n, args.rounds, Path(tmp)),
            "sweep": throughput(args.runs, args.per_run),
        }
    pr = report["per_resource"]
    print("| per resource | median µs |\n|---|---|")
    for name, us in pr["median_us"].items():
        print(f"| {name} | {us} |")
    print(
        f"\npostgres cycle / sqlite cycle: {pr['postgres_cycle_over_sqlite_cycle']}x;"
        f" postgres cycle / 4 raw transactions: {pr['postgres_cycle_over_4_raw_txns']}x\n"
    )
    total = args.runs * args.per_run
    print(f"| sweep of {total} dead resources | seconds | resources/s |\n|---|---|---|")
    for row in report["sweep"]:
        print(
            f"| {row['sweepers']} sweeper(s) | {row['seconds']} | {row['resources_per_second']} |"
        )
    if args.save:
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

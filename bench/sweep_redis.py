"""Benchmark: ``reclaim._reaper.sweep`` releasing thousands of a dead run's Redis namespaces,
next to the same SCAN + UNLINK done by hand on one client.

What it measures, in one run:

- ``reclaim sweep``: ``--n`` namespaces (10,000 by default), each holding ``--keys`` small
  string keys (3 by default) plus the marker key :class:`~reclaim.backends.redis.RedisNamespace`
  writes at acquire, exist in one database and are journaled, as acquired ``redis.namespace``
  resources, in a fresh SQLite registry under a run whose owner is dead
  (``reclaim.testing.dead_identity()``). The clock times ``sweep(registry, grace=0)``: claiming
  the run, then for each batch of up to 1000 namespaces one registry transaction for their
  claims, the backend's ``release_many`` (one ``SCAN`` of the database for the whole batch,
  then ``UNLINK``) and one transaction for their outcomes, then closing the run. The time spent
  inside the backend is measured too, so the rest (reclaim's bookkeeping) is known.
- ``raw SCAN+UNLINK``: the same namespaces, made the same way, each deleted with the same
  ``SCAN MATCH <prefix>* COUNT 1000`` loop and ``UNLINK`` on one redis-py client, with nothing
  else.

A namespace's release on its own must SCAN the whole database (Redis has no prefix index), so
the cost of one release grows with the keys that are left: the raw variant pays that per
namespace, as reclaim did before it released in batches. ``--profile`` runs the reclaim sweep
under cProfile as well (not timed) and prints where its time goes. The two variants alternate
``--repeat`` times. The report gives namespaces per second both ways and their ratio (issue 15
aims at ten times the 116 /s a release per namespace gave), prints a Markdown table and, with
``--save``, writes ``bench/results/sweep_redis.json``.

Run from the project root, with Redis at ``RECLAIM_TEST_REDIS`` (default
``redis://127.0.0.1:6379/0``; use a database nobody else writes to while it runs)::

    uv run python bench/sweep_redis.py                        # 10,000 namespaces, once each
    uv run python bench/sweep_redis.py --n 1000 --repeat 3    # a quicker look
    uv run python bench/sweep_redis.py --n 2000 --keys 20 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import redis
from _timing import TimedRelease

from reclaim._registry import open_registry
from reclaim._sweep import sweep
from reclaim.backends import make_name
from reclaim.backends.redis import MARKER, RedisNamespace, glob_escape
from reclaim.testing import dead_identity

RESULTS: Final = Path(__file__).resolve().parent / "results" / "sweep_redis.json"
DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
BATCH: Final = 1000  # commands per pipeline while setting up
SCAN_COUNT: Final = 1000  # what the backend asks for too


def create_namespaces(client: redis.Redis, prefixes: Sequence[tuple[str, str]], keys: int) -> None:
    """Write every namespace's marker (as acquire does) and its keys (untimed)."""
    pipe = client.pipeline(transaction=False)
    for n, (name, prefix) in enumerate(prefixes, 1):
        pipe.set(prefix + MARKER, name)
        for k in range(keys):
            pipe.set(f"{prefix}key:{k}", f"value {k}")
        if n % BATCH == 0:
            pipe.execute()
    pipe.execute()


def count_left(client: redis.Redis, prefixes: Sequence[tuple[str, str]]) -> int:
    """Keys left under any of the namespaces (one SCAN of the run's shared stem)."""
    stems = {prefix.rsplit("_", 2)[0] for _, prefix in prefixes}
    return sum(
        1
        for stem in stems
        for _ in client.scan_iter(match=glob_escape(stem.encode()) + b"*", count=SCAN_COUNT)
    )


def server_stats(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Calls and server-side microseconds of SCAN and UNLINK so far (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return {
        cmd: {k: int(stats.get(f"cmdstat_{cmd}", {}).get(k, 0)) for k in ("calls", "usec")}
        for cmd in ("scan", "unlink")
    }


def stats_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], n: int
) -> dict[str, Any]:
    """What the server did for the variant: calls, and microseconds per namespace."""
    out: dict[str, Any] = {}
    for cmd, now in after.items():
        calls = now["calls"] - before[cmd]["calls"]
        usec = now["usec"] - before[cmd]["usec"]
        out[cmd] = {"calls": calls, "server_us_per_namespace": round(usec / n, 1)}
    return out


def _journal(url: str, n: int, keys: int, workdir: Path) -> tuple[Any, list[tuple[str, str]]]:
    """A dead run's registry holding ``n`` acquired namespaces, which exist on the server."""
    run_id = secrets.token_hex(4)
    backend = RedisNamespace(url)
    records = [backend.plan(make_name(run_id, seq)) for seq in range(1, n + 1)]
    prefixes = [(r["name"], r["prefix"]) for r in records]
    create_namespaces(redis.Redis.from_url(url), prefixes, keys)
    registry = open_registry(str(workdir / f"registry-{run_id}.sqlite3"))
    registry.open_run(run_id, dead_identity(), label="bench-sweep")
    for record in records:
        rid = registry.plan(run_id, "bench", RedisNamespace.kind, record["name"], record)
        registry.mark_acquired(rid, record)
    return registry, prefixes


def reclaim_sweep(url: str, n: int, keys: int, workdir: Path) -> dict[str, Any]:
    registry, prefixes = _journal(url, n, keys, workdir)
    client = redis.Redis.from_url(url)
    try:
        before = server_stats(client)
        with TimedRelease(RedisNamespace) as timer:
            t0 = time.perf_counter_ns()
            report = sweep(registry, grace=0)
            elapsed = time.perf_counter_ns() - t0
        server = stats_delta(before, server_stats(client), n)
    finally:
        registry.close()
    left = count_left(client, prefixes)
    if report.released != n or left:
        raise RuntimeError(f"the sweep released {report.released} of {n}; {left} keys left")
    return {
        "seconds": elapsed / 1e9,
        "namespaces_per_second": n / (elapsed / 1e9),
        "server": server,
        "in_backend_release_seconds": timer.ns / 1e9,
        "bookkeeping_seconds": (elapsed - timer.ns) / 1e9,
        "per_namespace_us": {
            "total": elapsed / n / 1000,
            "backend_release": timer.ns / n / 1000,
            "reclaim_bookkeeping": (elapsed - timer.ns) / n / 1000,
        },
    }


def raw_scan_unlink(url: str, n: int, keys: int) -> dict[str, Any]:
    run_id = secrets.token_hex(4)
    prefixes = [(name, f"{name}:") for name in (make_name(run_id, s) for s in range(1, n + 1))]
    client = redis.Redis.from_url(url)
    create_namespaces(client, prefixes, keys)
    before = server_stats(client)
    t0 = time.perf_counter_ns()
    for _name, prefix in prefixes:
        batch = list(client.scan_iter(match=glob_escape(prefix.encode()) + b"*", count=SCAN_COUNT))
        for start in range(0, len(batch), 1000):
            client.unlink(*batch[start : start + 1000])
    elapsed = time.perf_counter_ns() - t0
    server = stats_delta(before, server_stats(client), n)
    left = count_left(client, prefixes)
    if left:
        raise RuntimeError(f"{left} keys left after the raw SCAN+UNLINK")
    return {
        "seconds": elapsed / 1e9,
        "server": server,
        "namespaces_per_second": n / (elapsed / 1e9),
        "per_namespace_us": {"total": elapsed / n / 1000},
    }


def profile_sweep(url: str, n: int, keys: int, workdir: Path, top: int = 25) -> str:
    """Where a reclaim sweep's time goes (cProfile; not a timed run)."""
    registry, _ = _journal(url, n, keys, workdir)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        sweep(registry, grace=0)
        profiler.disable()
    finally:
        registry.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="namespaces per sweep (10000)")
    parser.add_argument("--keys", type=int, default=3, help="keys in each namespace (3)")
    parser.add_argument("--repeat", type=int, default=1, help="alternations (default 1)")
    parser.add_argument("--profile", action="store_true", help="also profile one reclaim sweep")
    parser.add_argument(
        "--url",
        default=os.environ.get("RECLAIM_TEST_REDIS", DEFAULT_URL),
        help="the server and database (default: RECLAIM_TEST_REDIS or the local one)",
    )
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.keys < 0:
        parser.error("--n and --repeat must be at least 1, --keys at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="reclaim-bench-"))
    sweeps: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    profile = None
    try:
        for r in range(args.repeat):  # alternate, so drift on the server hits both
            if r % 2 == 0:
                sweeps.append(reclaim_sweep(args.url, args.n, args.keys, workdir))
                raws.append(raw_scan_unlink(args.url, args.n, args.keys))
            else:
                raws.append(raw_scan_unlink(args.url, args.n, args.keys))
                sweeps.append(reclaim_sweep(args.url, args.n, args.keys, workdir))
        if args.profile:
            profile = profile_sweep(args.url, args.n, args.keys, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reclaim_rate = statistics.median(s["namespaces_per_second"] for s in sweeps)
    raw_rate = statistics.median(s["namespaces_per_second"] for s in raws)
    info = redis.Redis.from_url(args.url).info("server")
    report = {
        "namespaces": args.n,
        "keys_per_namespace": args.keys,
        "repeat": args.repeat,
        "server_version": info.get("redis_version"),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reclaim_sweep": sweeps,
        "raw_scan_unlink": raws,
        "reclaim_namespaces_per_second": round(reclaim_rate, 1),
        "raw_namespaces_per_second": round(raw_rate, 1),
        "reclaim_over_raw": round(reclaim_rate / raw_rate, 3),
    }
    per = statistics.median(s["per_namespace_us"]["reclaim_bookkeeping"] for s in sweeps)
    inside = statistics.median(s["per_namespace_us"]["backend_release"] for s in sweeps)
    in_server = statistics.median(
        s["server"]["scan"]["server_us_per_namespace"]
        + s["server"]["unlink"]["server_us_per_namespace"]
        for s in sweeps
    )
    scans = statistics.median(s["server"]["scan"]["calls"] / args.n for s in sweeps)
    print(
        f"{args.n} namespaces ({args.keys} keys + a marker each), {args.repeat} repeats,"
        f" Redis {report['server_version']}, {report['machine']}\n\n"
        "| variant | namespaces/s | µs per namespace |\n|---|---:|---:|\n"
        f"| reclaim sweep | {reclaim_rate:.0f} | {1e6 / reclaim_rate:.0f} |\n"
        f"| raw SCAN+UNLINK, one client | {raw_rate:.0f} | {1e6 / raw_rate:.0f} |\n\n"
        f"reclaim / raw: {reclaim_rate / raw_rate:.2f}; of reclaim's time per namespace,"
        f" {inside:.0f} µs are the backend's SCAN+UNLINK ({scans:.3f} SCAN calls, {in_server:.0f}"
        f" µs of them inside the server) and {per:.0f} µs reclaim's bookkeeping"
    )
    if profile is not None:
        print("\n" + profile)
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"\nwritten to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

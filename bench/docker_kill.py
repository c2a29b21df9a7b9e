"""Benchmark: a SIGKILLed owner's containers, removed by its watchdog, next to ``docker rm -f``.

Measured in one run, interleaved round by round so that noise hits both alike (medians):

- ``watchdog``: an owner process acquires N containers (``DockerContainer(image, ["sleep",
  "600"])``, N = 1 and 20) through a ``reclaim.Fixture`` and is sent SIGKILL. The clock runs from
  the kill until the engine lists none of them any more (asked of the engine by label, every
  10 ms). Nothing else runs: the watchdog notices the death, imports the backend and removes
  each container with ``DELETE /containers/<id>?force=1&v=1``, one after the other.
- ``docker rm -f``: the same number of the same containers, made by hand, removed by the
  engine's own command line, ``docker rm -f NAME...`` (one call naming all of them), timed from
  the call until the engine lists none. This is the floor: what removing them costs at all.

The reference a reader knows: Testcontainers' Ryuk waits for its reconnection timeout, 10 s by
default (``RYUK_RECONNECTION_TIMEOUT``), after its client's connection drops before it prunes
anything by label; and it knows only Docker's objects.

Run from the project root, with an engine and a local image (``.ci/run`` sets up podman)::

    DOCKER_HOST=unix:///tmp/reclaim-podman/podman.sock uv run python bench/docker_kill.py

Options: ``--rounds 3``, ``--image localhost/reclaim-test-busybox``, ``--engine URL`` (default
``DOCKER_HOST``). It prints a Markdown table; ``--save`` also writes
``bench/results/docker_kill.json`` (without it, the work tree is left as it was). Whatever
happens, every container it made (labelled ``bench.reclaim.token=<token>``) is removed before it
exits.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]  # the docker SDK ships no type information

from reclaim.backends.docker import engine_url

HOLDER = """
import json, sys, time
import reclaim
from reclaim.backends.docker import DockerContainer

image, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
key, _, value = label.partition("=")
with reclaim.Fixture("bench") as f:
    names = [
        f.acquire(DockerContainer(image, ["sleep", "600"], labels={key: value})).name
        for _ in range(n)
    ]
    print(json.dumps(names), flush=True)
    time.sleep(600)
"""

LABEL_KEY = "bench.reclaim.token"
TIMEOUT = 120.0


def _left(client: Any, label: str) -> int:
    """How many containers carrying ``label`` the engine lists (created, running or exited)."""
    return len(client.api.containers(all=True, filters={"label": label}))


def _until_none(client: Any, label: str, started: float) -> float:
    while _left(client, label):
        if time.perf_counter() - started > TIMEOUT:
            raise RuntimeError(f"containers labelled {label} still there after {TIMEOUT:g} s")
        time.sleep(0.01)
    return (time.perf_counter() - started) * 1000


def _watchdog_round(client: Any, engine: str, image: str, n: int, label: str) -> float:
    """SIGKILL of an owner holding ``n`` containers -> the last one gone, in ms."""
    with tempfile.TemporaryDirectory(prefix="reclaim-bench-docker-") as scratch:
        env = {
            **os.environ,
            "DOCKER_HOST": engine,
            "RECLAIM_REGISTRY": str(Path(scratch) / "registry.sqlite3"),
        }
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, image, str(n), label],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            assert holder.stdout is not None
            line = holder.stdout.readline()
            if not line:
                raise RuntimeError("the owner failed to acquire its containers")
            assert len(json.loads(line)) == n
            assert _left(client, label) == n
            started = time.perf_counter()
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            return _until_none(client, label, started)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()


def _rm_f_round(client: Any, engine: str, image: str, n: int, label: str) -> float:
    """``docker rm -f`` of ``n`` running containers -> the last one gone, in ms."""
    key, _, value = label.partition("=")
    names = []
    for i in range(n):
        made = client.containers.create(
            image, ["sleep", "600"], name=f"bench-rm-{value}-{i}", labels={key: value}
        )
        made.start()
        names.append(made.name)
    assert _left(client, label) == n
    started = time.perf_counter()
    subprocess.run(
        ["docker", "-H", engine, "rm", "-f", *names],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return _until_none(client, label, started)


def _clean(client: Any, label: str) -> None:
    for item in client.api.containers(all=True, filters={"label": label}):
        try:
            client.api.remove_container(item["Id"], force=True, v=True)
        except docker.errors.NotFound:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default="localhost/reclaim-test-busybox")
    parser.add_argument("--engine", default=None, help="the engine (default: DOCKER_HOST)")
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args()
    if shutil.which("docker") is None:
        raise SystemExit("the docker command line is needed for the `docker rm -f` side")
    engine = engine_url(args.engine)
    client = docker.DockerClient(base_url=engine, timeout=60)
    client.images.get(args.image)  # a local image: nothing is pulled
    token = secrets.token_hex(4)
    label = f"{LABEL_KEY}={token}"
    rows = []
    results: dict[str, Any] = {"engine": engine, "image": args.image, "rounds": args.rounds}
    try:
        for n in (1, 20):
            watchdog: list[float] = []
            rm_f: list[float] = []
            for _ in range(args.rounds):
                watchdog.append(_watchdog_round(client, engine, args.image, n, label))
                rm_f.append(_rm_f_round(client, engine, args.image, n, label))
            rows.append((n, statistics.median(watchdog), statistics.median(rm_f)))
            results[f"containers_{n}"] = {
                "watchdog_ms": watchdog,
                "rm_f_ms": rm_f,
                "watchdog_median_ms": statistics.median(watchdog),
                "rm_f_median_ms": statistics.median(rm_f),
            }
    finally:
        _clean(client, label)
        client.close()
    print(f"engine: {engine}, image {args.image}, medians of {args.rounds} rounds\n")
    print("| containers | watchdog: SIGKILL -> last one gone | `docker rm -f` of as many |", end="")
    print(" watchdog / rm -f | Ryuk's reconnection timeout |")
    print("|---:|---:|---:|---:|---:|")
    for n, w, r in rows:
        print(f"| {n} | {w:.0f} ms | {r:.0f} ms | {w / r:.1f}x | 10 s, then its prune |")
    if args.save:
        out = Path(__file__).parent / "results" / "docker_kill.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

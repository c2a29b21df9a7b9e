"""Invariant I8, only our own: against the real server of every built-in kind, through one
parametrisation (tests/adversaries has one module per family).

- ``reclaim sweep --leftovers URL --yes`` releases an old object whose whole name is a reclaim
  name, and spares every look-alike beside it (suffixes, prefixes, extensions, other separators,
  case variants, leading zeros, symlinks), each asked of the server afterwards.
- A registry record naming an object reclaim did not create (``public``, the ``postgres``
  database, ``mysql``, a user's role, a foreign key prefix, a user's directory...) is refused by
  ``reclaim sweep``, which exits 1; the object is still there and the entry stays ``failed``
  with a message that says why. Calling the backend directly refuses it too, before any I/O.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import secrets
import time
from importlib.metadata import entry_points

import pytest

import adversaries
from adversaries import Adversary, Factory, lookalikes
from conftest import reclaim_cli
from reclaim import ForeignNameError
from reclaim._registry import ResourceState, open_registry
from reclaim.backends import ENTRY_POINT_GROUP, load_backend, make_name
from reclaim.testing import dead_identity

DAY = 86400.0


def _all_factories() -> dict[str, Factory]:
    found: dict[str, Factory] = {}
    for info in pkgutil.iter_modules(adversaries.__path__):
        module = importlib.import_module(f"adversaries.{info.name}")
        found.update(module.KINDS)
    return found


ALL = _all_factories()
BUILT_IN = sorted(
    ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("reclaim.")
)


def test_every_built_in_kind_has_an_adversary() -> None:
    missing = sorted(set(BUILT_IN) - set(ALL))
    assert not missing, f"kinds without an I8 adversary in tests/adversaries: {missing}"


@pytest.mark.parametrize("kind", sorted(ALL))
def test_leftover_sweep_takes_only_whole_reclaim_names(
    kind: str, request: pytest.FixtureRequest, registry_path: str
) -> None:
    adversary = ALL[kind](request)
    backend = load_backend(kind)
    assert (adversary.leftovers_url is None) == (not backend.url_schemes), (
        f"{kind}: lists leftovers at {backend.url_schemes} but the adversary gives no URL"
    )
    if adversary.leftovers_url is None:
        pytest.skip(f"{kind} does not list leftovers (no url_schemes); its records are tested")
    run_id = secrets.token_hex(4)
    exact = adversary.spell(make_name(run_id, 1, now=time.time() - 2 * DAY))
    fakes = [n for n in lookalikes(exact, backend.name_style.separator) if adversary.valid(n)]
    made: list[str] = []
    try:
        for name in [exact, *fakes]:
            adversary.create(name)
            made.append(name)
        extras = adversary.extra_objects(exact)
        for name in made:
            assert adversary.present(name), f"{kind}: the test could not make {name!r}"
        result = reclaim_cli(
            "sweep", "--leftovers", adversary.leftovers_url, "--older-than", "1h", "--yes",
            "--json", check=False,
        )  # fmt: skip
        report = json.loads(result.stdout)
        released = {item["name"] for item in report["leftovers"] if item["action"] == "released"}
        assert not adversary.present(exact), f"{kind}: the exact leftover {exact!r} is still there"
        assert exact in released or adversary.spell(exact) in released, report
        spared = [n for n in fakes if adversary.present(n)]
        assert spared == fakes, f"{kind}: look-alikes deleted: {sorted(set(fakes) - set(spared))}"
        for what, present in extras:
            assert present(), f"{kind}: {what} was deleted"
        touched = released & set(fakes)
        assert not touched, f"{kind}: the sweep says it released look-alikes {touched}"
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        for name in made:
            adversary.remove(name)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_records_naming_foreign_objects_are_refused(
    kind: str, request: pytest.FixtureRequest, registry_path: str
) -> None:
    adversary: Adversary = ALL[kind](request)
    assert adversary.foreign, f"{kind}: give at least one record naming a foreign object"
    backend = load_backend(kind)
    made = []
    try:
        for foreign in adversary.foreign:
            if foreign.create is not None:
                foreign.create()
            made.append(foreign)
            assert foreign.present(), f"{kind}: the test could not make {foreign.label}"
            # Straight at the backend: refused before any I/O.
            with pytest.raises(ForeignNameError, match="refused"):
                backend.release(dict(foreign.record))
            with pytest.raises(ForeignNameError, match="refused"):
                backend.exists(dict(foreign.record))
        # Through the registry, as a damaged or hostile row of a dead run, by the real CLI.
        reg = open_registry(registry_path)
        run_id = secrets.token_hex(4)
        reg.open_run(run_id, dead_identity(), label="hostile")
        ids = []
        for foreign in adversary.foreign:
            name = str(foreign.record.get("name", "?"))
            rid = reg.plan(run_id, "hostile", kind, name, foreign.record)
            reg.mark_acquired(rid, foreign.record)
            ids.append(rid)
        dry = reclaim_cli("sweep", "--dry-run", "--grace", "0", "--json", check=False)
        assert dry.returncode in (0, 1), dry.stderr
        result = reclaim_cli("sweep", "--grace", "0", "--json", check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        for foreign, rid in zip(adversary.foreign, ids, strict=True):
            assert foreign.present(), f"{kind}: {foreign.label} was deleted"
            kept = reg.get_resource(rid)
            assert kept is not None, f"{kind}: the entry for {foreign.label} was dropped"
            assert kept.state == ResourceState.FAILED
            assert kept.last_error is not None
            assert "refused" in kept.last_error, kept.last_error
            assert kept.attempts == 1, "a refusal is not retried"
        for rid in ids:
            reg.forget(rid, actor="test")
        reg.close()
    finally:
        for foreign in made:
            if foreign.remove is not None:
                foreign.remove()

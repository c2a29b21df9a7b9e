"""Adversaries of ``docker.container``, ``docker.network`` and ``docker.volume``: objects on the
real engine made with the plain docker SDK (never through reclaim), each carrying reclaim's
``io.reclaim.name`` label with its own name (so that only the name rule can spare a look-alike),
and records naming what is not reclaim's: the engine's default network, a user's container, and
a user's object that has the exact name of a reclaim name but not the label."""

from __future__ import annotations

import contextlib
import re
import secrets
from typing import Any

import docker.errors  # type: ignore[import-untyped]  # the docker SDK ships no type information
import pytest

from _engine import SLEEP, TEST_IMAGE, client, local_engine
from adversaries import Adversary, Factory, Foreign
from reclaim.backends import Record
from reclaim.backends.docker import LABEL_NAME, DockerContainer, DockerNetwork, DockerVolume

#: A valid reclaim name of nobody's run.
GOOD = "rc_0badf00d_t0a1b2_1"

#: What the engine accepts as a container, network or volume name.
_VALID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def _adversary(request: pytest.FixtureRequest, what: str) -> Adversary:
    url = local_engine()
    sdk = client(url)
    request.addfinalizer(sdk.close)
    token = secrets.token_hex(4)
    backend: Any = {
        "container": DockerContainer(TEST_IMAGE, SLEEP, base_url=url),
        "network": DockerNetwork(base_url=url),
        "volume": DockerVolume(base_url=url),
    }[what]

    def create(name: str, labels: dict[str, str] | None = None) -> None:
        labels = {LABEL_NAME: name} if labels is None else labels
        if what == "container":
            sdk.containers.create(TEST_IMAGE, SLEEP, name=name, labels=labels).start()
        elif what == "network":
            sdk.networks.create(name, labels=labels)
        else:
            sdk.volumes.create(name=name, labels=labels)

    def present(name: str) -> bool:
        if what == "container":
            return any(c.name == name for c in sdk.containers.list(all=True))
        if what == "network":
            return any(n.name == name for n in sdk.networks.list())
        return any(v.name == name for v in sdk.volumes.list())

    def remove(name: str) -> None:
        with contextlib.suppress(docker.errors.APIError):
            if what == "container":
                sdk.api.remove_container(name, force=True, v=True)
            elif what == "network":
                for net in sdk.networks.list(names=[name]):
                    if net.name == name:
                        net.remove()
            else:
                sdk.api.remove_volume(name, force=True)

    def record(name: str) -> Record:
        return {**backend.plan(GOOD), "name": name}

    def users(label: str, name: str, labels: dict[str, str]) -> Foreign:
        return Foreign(
            label,
            record(name),
            present=lambda: present(name),
            create=lambda: create(name, labels),
            remove=lambda: remove(name),
        )

    exact = f"rc_{token}_t0a1b2_1"
    foreign = [
        users(f"a user's {what}", f"app-{token}", {}),
        users(f"a user's {what} whose name only contains a reclaim name", f"{exact}_backup", {}),
        users(f"a user's {what} with the exact name of a reclaim name, no label", exact, {}),
        users(
            f"a user's {what} with a reclaim name and another name's label",
            f"rc_{token}_t0a1b2_2",
            {LABEL_NAME: exact},
        ),
    ]
    if what == "network":
        default = next(n.name for n in sdk.networks.list() if n.name in ("bridge", "podman"))
        foreign.append(
            Foreign("the engine's default network", record(default), lambda: present(default))
        )
    return Adversary(
        kind=f"docker.{what}",
        leftovers_url=f"docker+{url}",
        create=create,
        present=present,
        remove=remove,
        valid=lambda name: _VALID.fullmatch(name) is not None,
        foreign=foreign,
    )


def container(request: pytest.FixtureRequest) -> Adversary:
    return _adversary(request, "container")


def network(request: pytest.FixtureRequest) -> Adversary:
    return _adversary(request, "network")


def volume(request: pytest.FixtureRequest) -> Adversary:
    return _adversary(request, "volume")


KINDS: dict[str, Factory] = {
    "docker.container": container,
    "docker.network": network,
    "docker.volume": volume,
}

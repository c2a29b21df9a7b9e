"""The Docker Engine API backends against a real engine (podman from .ci/run, or Docker): the
three kinds keep the backend contract; objects are called by reclaim's name and carry its labels;
a container goes with its anonymous volumes, a network after its containers are disconnected
(never removed), a volume in use fails and stays for a sweep; a look-alike (``..._backup``, the
exact name without the label) survives release and ``reclaim sweep --leftovers``; acquire
failures that made nothing leave no entry; the engine's URL is journaled without user info; a
testcontainers-python container is named and labelled before it starts and reclaimed after a
SIGKILL; the module imports without the docker SDK.

The crash kits (SIGKILL, watchdog killed too, engine away at release) run over the three kinds
in tests/test_crash_kit.py. Containers run ``sleep`` in a local busybox image (tests/_engine.py).

Whatever a test makes, reclaim's or by hand, is removed at teardown with the plain SDK, whether
the test passed or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]  # the docker SDK ships no type information
import docker.errors  # type: ignore[import-untyped]
import pytest

import reclaim
from _engine import SLEEP, TEST_IMAGE, client, local_engine
from _services import closed_port
from conftest import CHILD_TIMEOUT, acquire_creates_nothing, reclaim_cli, registry_is_empty
from reclaim import ForeignNameError, NotCreatedError, ReleaseError
from reclaim._registry import open_registry
from reclaim.backends import Record, check_leftover, make_name
from reclaim.backends.docker import (
    LABEL_NAME,
    LABEL_RUN,
    DockerContainer,
    DockerNetwork,
    DockerVolume,
    TestcontainersContainer,
    engine_url,
)
from reclaim.testing import check_backend, check_crash

DAY = 86400.0


# --- the engine, and everything a test made on it removed whatever happens ------------------


@dataclasses.dataclass
class Engine:
    """The engine of the tests, a plain SDK client on it, and what to remove at teardown."""

    url: str
    sdk: Any
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    made: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def leftovers_url(self) -> str:
        return f"docker+{self.url}"

    def name(self, seq: int, *, age: float = 0.0) -> str:
        return make_name(self.token, seq, now=time.time() - age)

    def note(self, what: str, name: str) -> None:
        self.made.append((what, name))

    def container(
        self, name: str, labels: dict[str, str] | None = None, *, start: bool = True, **options: Any
    ) -> Any:
        """A container made by hand, running unless ``start=False`` (a user's, unless
        ``labels`` say otherwise)."""
        self.note("container", name)
        made = self.sdk.containers.create(
            TEST_IMAGE, SLEEP, name=name, labels=labels or {}, **options
        )
        if start:
            made.start()
        return made

    def network(self, name: str, labels: dict[str, str] | None = None) -> Any:
        self.note("network", name)
        return self.sdk.networks.create(name, labels=labels or {})

    def volume(self, name: str, labels: dict[str, str] | None = None) -> Any:
        self.note("volume", name)
        return self.sdk.volumes.create(name=name, labels=labels or {})

    def has(self, what: str, name: str) -> bool:
        """Is there a ``what`` of exactly this name (asked of the engine)?"""
        if what == "container":
            return any(c.name == name for c in self.sdk.containers.list(all=True))
        if what == "network":
            return any(n.name == name for n in self.sdk.networks.list())
        return any(v.name == name for v in self.sdk.volumes.list())

    def remove(self, what: str, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            if what == "container":
                self.sdk.api.remove_container(name, force=True, v=True)
            elif what == "network":
                for net in self.sdk.networks.list(names=[name]):
                    if net.name == name:
                        net.remove()
            else:
                self.sdk.api.remove_volume(name, force=True)

    def cleanup(self) -> None:
        order = {"container": 0, "network": 1, "volume": 2}
        for what, name in sorted(set(self.made), key=lambda item: order[item[0]]):
            with contextlib.suppress(docker.errors.APIError):
                self.remove(what, name)
        self.sdk.close()


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The test's engine. Every name the backends plan in this process is noted (``plan`` is
    wrapped, nothing else changes) and removed at teardown with the plain SDK."""
    url = local_engine()
    me = Engine(url=url, sdk=client(url))
    for cls in (DockerContainer, DockerNetwork, DockerVolume):
        original = cls.plan

        def noting(self: Any, name: str, _original: Any = original) -> Record:
            record: Record = _original(self, name)
            me.note(type(self).what, name)
            return record

        monkeypatch.setattr(cls, "plan", noting)
    try:
        yield me
    finally:
        me.cleanup()


def _lookalike(engine: Engine, what: str) -> Callable[[str], Callable[[], bool]]:
    """``make_lookalike`` of the kit: an object of that name that carries reclaim's label with
    its own (look-alike) name, made by hand."""

    def make(name: str) -> Callable[[], bool]:
        labels = {LABEL_NAME: name, LABEL_RUN: "0badc0de"}
        options = {"start": False} if what == "container" else {}  # created is enough, and quick
        try:
            getattr(engine, what)(name, labels=labels, **options)
        except docker.errors.APIError as exc:  # the engine cannot hold that name
            raise ValueError(str(exc)) from exc
        return lambda: engine.has(what, name)

    return make


# --- the contract ---------------------------------------------------------------------------


def test_conformance_container(engine: Engine, tmp_path: Path) -> None:
    check_backend(
        lambda: DockerContainer(TEST_IMAGE, SLEEP, base_url=engine.url),
        registry=tmp_path / "kit.sqlite3",
        delete_outside=lambda record: engine.remove("container", record["name"]),
        make_lookalike=_lookalike(engine, "container"),
        leftovers_url=engine.leftovers_url,
    )


def test_conformance_network(engine: Engine, tmp_path: Path) -> None:
    check_backend(
        lambda: DockerNetwork(base_url=engine.url),
        registry=tmp_path / "kit.sqlite3",
        delete_outside=lambda record: engine.remove("network", record["name"]),
        make_lookalike=_lookalike(engine, "network"),
        leftovers_url=engine.leftovers_url,
    )


def test_conformance_volume(engine: Engine, tmp_path: Path) -> None:
    check_backend(
        lambda: DockerVolume(base_url=engine.url),
        registry=tmp_path / "kit.sqlite3",
        delete_outside=lambda record: engine.remove("volume", record["name"]),
        make_lookalike=_lookalike(engine, "volume"),
        leftovers_url=engine.leftovers_url,
    )


# --- what acquire makes, what release removes -------------------------------------------------


def test_a_container_is_named_labelled_started_and_goes_with_its_anonymous_volumes(
    engine: Engine, registry_path: str
) -> None:
    with reclaim.Fixture("container") as f:
        container = f.acquire(
            DockerContainer(
                TEST_IMAGE, SLEEP, base_url=engine.url, volumes=["/scratch"], labels={"app": "x"}
            )
        )
        name = container.name
        assert container.status == "running"
        assert name.startswith("rc_")
        labels = engine.sdk.containers.get(name).labels
        assert labels[LABEL_NAME] == name
        assert labels[LABEL_RUN] == name.split("_")[1]
        assert labels["app"] == "x", "the user's labels are kept"
        anonymous = [m["Name"] for m in container.attrs["Mounts"] if m.get("Name")]
        assert anonymous, "the container has an anonymous volume"
        assert all(engine.has("volume", v) for v in anonymous)
    assert not engine.has("container", name)
    assert not any(engine.has("volume", v) for v in anonymous), "v=True removed them"


def test_the_journaled_record_is_the_plan_and_names_the_engine(
    engine: Engine, registry_path: str
) -> None:
    with reclaim.Fixture("record") as f:
        network = f.acquire(DockerNetwork(base_url=engine.url))
        reg = open_registry(registry_path)
        try:
            (entry,) = reg.resources()
        finally:
            reg.close()
        assert entry.kind == "docker.network"
        assert entry.record["name"] == network.name
        assert entry.record["engine"] == engine_url(engine.url)
        assert entry.record["labels"] == {
            LABEL_NAME: network.name,
            LABEL_RUN: network.name.split("_")[1],
        }
        assert entry.record["id"] == network.id
        assert DockerNetwork.describe(entry.record).endswith(f"network {network.name}")
    assert not engine.has("network", network.name)


def test_a_network_goes_after_its_containers_are_disconnected_never_removed(
    engine: Engine, registry_path: str
) -> None:
    with reclaim.Fixture("network") as f:
        network = f.acquire(DockerNetwork(base_url=engine.url))
        user = engine.container(f"user-{engine.token}", network=network.name)
        ours = f.acquire(DockerContainer(TEST_IMAGE, SLEEP, base_url=engine.url))
        network.connect(ours)
        network.reload()
        assert len(network.containers) == 2
    assert not engine.has("network", network.name)
    assert not engine.has("container", ours.name), "ours goes by its own record"
    user.reload()
    assert user.status == "running", "a user's container is disconnected, never removed"
    assert network.name not in user.attrs["NetworkSettings"]["Networks"]


def test_a_volume_in_use_fails_to_release_and_goes_once_it_is_free(
    engine: Engine, registry_path: str
) -> None:
    with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("volume") as f:
        volume = f.acquire(DockerVolume(base_url=engine.url))
        user = engine.container(
            f"user-{engine.token}", volumes={volume.name: {"bind": "/data", "mode": "rw"}}
        )
    (error,) = info.value.exceptions
    assert isinstance(error, ReleaseError)
    assert "docker.volume" in str(error)
    assert "never removes a container to free a volume" in str(error)
    assert engine.has("volume", volume.name), "kept: a sweep retries it"
    user.reload()
    assert user.status == "running", "the container that holds it is left alone"
    reg = open_registry(registry_path)
    try:
        (entry,) = reg.resources()
        assert entry.state == "failed"
    finally:
        reg.close()
    engine.remove("container", user.name)
    DockerVolume.release(entry.record)
    assert not engine.has("volume", volume.name)


# --- only our own ------------------------------------------------------------------------------


def test_the_exact_name_without_the_label_is_refused_and_survives(engine: Engine) -> None:
    for what, backend, make in (
        ("container", DockerContainer(TEST_IMAGE, base_url=engine.url), engine.container),
        ("network", DockerNetwork(base_url=engine.url), engine.network),
        ("volume", DockerVolume(base_url=engine.url), engine.volume),
    ):
        name = engine.name({"container": 1, "network": 2, "volume": 3}[what])
        make(name)  # a user's object that happens to carry a reclaim name
        record = backend.plan(name)
        cls = type(backend)
        for method in (cls.release, cls.exists):
            with pytest.raises(ForeignNameError, match=f"does not carry the label {LABEL_NAME}"):
                method(record)
        assert engine.has(what, name), f"the user's {what} was left alone"
        with pytest.raises(NotCreatedError):
            backend.acquire(name)  # never adopted either
        assert engine.has(what, name)


def test_lookalikes_survive_a_leftover_sweep_that_takes_ours(
    engine: Engine, registry_path: str
) -> None:
    """``reclaim sweep --leftovers docker+unix://... --yes``: the old container of ours goes;
    the exact name without the label, and ``..._backup`` carrying our label, stay. Only
    objects older than 9 days may go, so no other test's objects can be touched."""
    old = 10 * DAY
    ours = engine.name(1, age=old)
    stranger = engine.name(2, age=old)
    backend = DockerContainer(TEST_IMAGE, SLEEP, base_url=engine.url)
    backend.acquire(ours)  # a dead run's container; its registry is lost
    engine.container(stranger)  # the exact name of a reclaim name, no label
    engine.container(f"{ours}_backup", labels={LABEL_NAME: ours, LABEL_RUN: engine.token})
    engine.container(f"x{ours}", labels={LABEL_NAME: f"x{ours}"})
    listed = {lo.record["name"]: lo for lo in DockerContainer.list_leftovers(engine.leftovers_url)}
    assert ours in listed
    check_leftover(DockerContainer, listed[ours])
    assert not {stranger, f"{ours}_backup", f"x{ours}"} & set(listed)
    done = reclaim_cli(
        "sweep", "--leftovers", engine.leftovers_url, "--older-than", "9d", "--yes", "--json"
    )
    report = json.loads(done.stdout)
    released = {item["name"] for item in report["leftovers"] if item["action"] == "released"}
    assert ours in released
    assert not engine.has("container", ours)
    for name in (stranger, f"{ours}_backup", f"x{ours}"):
        assert engine.has("container", name), name


def test_docker_scheme_lists_the_engine_of_docker_host(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    name = engine.name(1)
    DockerVolume().acquire(name)
    listed = {lo.record["name"]: lo.record for lo in DockerVolume.list_leftovers("docker://")}
    assert listed[name]["engine"] == engine_url(engine.url)
    with pytest.raises(ValueError, match="takes nothing after it"):
        list(DockerVolume.list_leftovers("docker://elsewhere"))
    with pytest.raises(ValueError, match="must start with"):
        list(DockerVolume.list_leftovers(engine.url))  # unix:// is Redis's scheme
    DockerVolume.release(listed[name])
    assert not engine.has("volume", name)


# --- acquire failures ------------------------------------------------------------------------


def test_an_engine_that_does_not_answer_creates_nothing(registry_path: str, tmp_path: Path) -> None:
    url = f"tcp://127.0.0.1:{closed_port()}"
    acquire_creates_nothing(
        registry_path, DockerContainer(TEST_IMAGE, base_url=url), says="cannot reach the engine"
    )
    acquire_creates_nothing(registry_path, DockerVolume(base_url=url), says="is it up")
    socket = f"unix://{tmp_path}/no-engine.sock"  # no ResourceWarning either (-W error)
    acquire_creates_nothing(
        registry_path, DockerNetwork(base_url=socket), says="cannot reach the engine"
    )


def test_a_missing_image_is_refused_and_nothing_is_pulled(
    engine: Engine, registry_path: str
) -> None:
    image = f"localhost/reclaim-no-such-image-{engine.token}"
    acquire_creates_nothing(
        registry_path, DockerContainer(image, base_url=engine.url), says="never pulls"
    )
    assert not [c for c in engine.sdk.containers.list(all=True) if engine.token in c.name]


def test_a_container_that_fails_to_start_is_removed_again(
    engine: Engine, registry_path: str
) -> None:
    backend = DockerContainer(TEST_IMAGE, ["/no/such/program"], base_url=engine.url)
    acquire_creates_nothing(registry_path, backend, says="start the container")
    planned = [name for what, name in engine.made if what == "container"]
    assert planned
    assert not any(engine.has("container", name) for name in planned)


def test_options_reclaim_sets_itself_are_refused(engine: Engine) -> None:
    with pytest.raises(TypeError, match="reclaim sets name"):
        DockerContainer(TEST_IMAGE, base_url=engine.url, name="mine")
    with pytest.raises(ValueError, match="reclaim's own"):
        DockerNetwork(base_url=engine.url, labels={LABEL_NAME: "rc_x"})
    with pytest.raises(TypeError, match="str to str"):
        DockerVolume(base_url=engine.url, labels={"n": 1})


# --- the engine's URL ------------------------------------------------------------------------


def test_the_engine_is_base_url_then_docker_host_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert DockerVolume().engine == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert DockerNetwork().engine == "tcp://127.0.0.1:2375"
    assert DockerNetwork(base_url="docker+unix:///run/x.sock").engine == "unix:///run/x.sock"
    assert DockerNetwork(base_url="TCP://h:1").engine == "tcp://h:1"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("tcp://admin:s3cret-pw@127.0.0.1:2375", "user info"),
        ("unix://relative.sock", "absolute socket path"),
        ("ssh://host", "must start with"),
        ("redis://127.0.0.1:6379", "must start with"),
        ("tcp://", "names no host"),
    ],
)
def test_engine_urls_that_cannot_be_journaled_are_refused(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        DockerContainer(TEST_IMAGE, base_url=url)
    assert "s3cret-pw" not in str(info.value)


def test_docker_host_with_a_password_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://me:hunter2-pw@127.0.0.1:2375")
    with pytest.raises(ValueError, match="from DOCKER_HOST") as info:
        DockerVolume()
    assert "hunter2-pw" not in str(info.value)


def test_without_the_sdk_the_module_imports_and_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['docker'] = None\n"
        "import reclaim.backends.docker as m\n"
        "for make in (lambda: m.DockerContainer('x'), m.DockerNetwork, m.DockerVolume):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=CHILD_TIMEOUT,
    ).stdout
    assert out.count("MissingExtraError") == 3, out
    assert "pip install 'reclaim[docker]'" in out


# --- testcontainers-python ---------------------------------------------------------------------


@pytest.fixture
def ryuk_off(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """testcontainers on the test engine, Ryuk switched off (it could not be pulled anyway)."""
    from testcontainers.core.config import testcontainers_config  # noqa: PLC0415

    monkeypatch.setenv("DOCKER_HOST", engine.url)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    return engine


def test_a_testcontainers_container_is_journaled_named_and_labelled_before_it_starts(
    ryuk_off: Engine, registry_path: str
) -> None:
    from testcontainers.core.container import DockerContainer as TcContainer  # noqa: PLC0415

    engine = ryuk_off
    tc = TcContainer(TEST_IMAGE, command=" ".join(SLEEP)).with_kwargs(labels={"app": "tc"})
    seen: dict[str, Any] = {}
    start = tc.start

    def start_and_look() -> Any:
        reg = open_registry(registry_path)
        try:
            (entry,) = reg.resources()
        finally:
            reg.close()
        seen.update(state=entry.state, name=entry.record["name"], tc_name=tc._name)
        return start()

    tc.start = start_and_look  # type: ignore[method-assign]
    with reclaim.Fixture("testcontainers") as f:
        value = f.acquire(TestcontainersContainer(tc))
        assert value is tc
        name = seen["name"]
        assert seen == {"state": "planned", "name": name, "tc_name": name}, "journaled first"
        wrapped = tc.get_wrapped_container()
        wrapped.reload()
        assert wrapped.name == name
        assert wrapped.status == "running"
        assert wrapped.labels[LABEL_NAME] == name
        assert wrapped.labels["app"] == "tc"
        assert wrapped.labels["org.testcontainers"] == "true", "testcontainers' own are kept"
    assert not engine.has("container", name)


def test_a_testcontainers_container_that_is_named_or_started_is_refused(ryuk_off: Engine) -> None:
    from testcontainers.core.container import DockerContainer as TcContainer  # noqa: PLC0415

    with pytest.raises(ValueError, match="name of its own"):
        TestcontainersContainer(TcContainer(TEST_IMAGE).with_name("mine"))
    with pytest.raises(TypeError, match="testcontainers DockerContainer"):
        TestcontainersContainer(object())


def test_a_sigkilled_owner_of_a_testcontainers_container_leaves_nothing(
    ryuk_off: Engine, registry_path: str
) -> None:
    """Ryuk is off: the watchdog removes the container after SIGKILL (and, with the watchdog
    killed too, the sweep does). ``exists`` asks the engine."""
    report = check_crash("kinds:docker", registry=registry_path, args={"kind": "testcontainers"})
    assert report.watchdog_seconds < 10, "faster than Ryuk's 10 s reconnection timeout"
    assert registry_is_empty(registry_path)

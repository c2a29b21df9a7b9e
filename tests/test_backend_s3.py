"""The S3 bucket backend against a real local S3 server (moto's server mode, over HTTP).

Proves: bucket names that S3 accepts and the sweeper can parse back; a versioned bucket holding
more than a page of versions, delete markers and an unfinished upload is emptied and deleted; a
release that meets a server that is down, at a fixture's exit (its error names the bucket and
the endpoint; the run's end retries it) or in the watchdog of a SIGKILLed owner (a later sweep
deletes the bucket, objects and all), keeps the entry ``failed`` until a later release succeeds;
hostile names, prefixes, endpoints and regions never reach a URL; only reclaim's own buckets are
listed as leftovers; the secret key is in no error, status or stored error text. Every check of a
release asks the server itself (``head_bucket``, ``list_buckets``) through a client of its own.

The kits run the kind on moto's server too, with no AWS variable anywhere (the record is
enough): ``check_backend`` in two regions (tests/test_conformance.py); ``check_crash`` (a
SIGKILLed owner's bucket is deleted by its watchdog, or by a sweep when the watchdog died too)
and ``check_outage`` (the child's own release meets the outage) in tests/test_crash_kit.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

import reclaim
from _services import TcpProxy
from conftest import (
    CHILD_TIMEOUT,
    Spawner,
    acquire_creates_nothing,
    alive,
    kill,
    reclaim_cli,
    wait_until,
)
from reclaim import (
    AcquireError,
    ForeignNameError,
    MissingExtraError,
    NotCreatedError,
    ReleaseError,
)
from reclaim._registry import open_registry
from reclaim._run import end_run
from reclaim.backends import load_backend, make_name, parse_name
from reclaim.backends import s3 as s3_backend
from reclaim.backends.s3 import Bucket, S3Bucket

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

REGION: Final = "eu-west-1"
OBSERVER_SECRET = "observer-secret"
KEY_ID = "AKIARECLAIMTEST0001"
SECRET = "s3cr3t-Rcl41m-9f8e7d6c5b4a"

#: Every variable boto3 (or the backend) reads, so that the developer's own AWS setup never
#: leaks into a test and a test's never leaks out.
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


# --- the server and an independent client ----------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a thread of this process, on a free port: its URL. Also for the kits'
    cases (tests/test_crash_kit.py, tests/test_conformance.py), whose child processes and
    watchdogs reach it over HTTP."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's S3 server for this module alone."""
    with moto_server() as url:
        yield url


def no_aws_environment(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """No AWS variable and no AWS file (``directory`` holds none) for this process and the
    processes it starts: only what a backend is given, or its record holds, reaches boto3."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(directory / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(directory / "no-aws-credentials"))


def raw_client(endpoint: str, region: str = REGION) -> S3Client:
    """A client that does not go through the backend: how the tests ask the server."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="AKIAOBSERVER",
        aws_secret_access_key=OBSERVER_SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Client]:
    """The AWS variables point at moto; after the test, every bucket on it is emptied and
    deleted (the server is this module's alone), also when the test failed."""
    no_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    client = raw_client(moto_url)
    yield client
    for name in bucket_names(client):
        wipe(client, name)


def bucket_names(client: S3Client) -> set[str]:
    return {b["Name"] for b in client.list_buckets().get("Buckets", [])}


def bucket_exists(client: S3Client, name: str) -> bool:
    try:
        client.head_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchBucket"):
            return False
        raise
    return True


def wipe(client: S3Client, name: str) -> None:
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for up in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    while True:
        listed = client.list_object_versions(Bucket=name)
        entries = [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]
        if not entries:
            break
        for start in range(0, len(entries), 1000):
            client.delete_objects(
                Bucket=name,
                Delete={
                    "Objects": [
                        {"Key": e["Key"], "VersionId": e["VersionId"]}
                        for e in entries[start : start + 1000]
                    ]
                },
            )
    client.delete_bucket(Bucket=name)


def entry_count(client: S3Client, name: str) -> tuple[int, int]:
    """(pages, versions + delete markers) as ``list_object_versions`` pages them (1000 each)."""
    pages = entries = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
        pages += 1
        entries += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return pages, entries


# --- the contract ---------------------------------------------------------------------------


def test_entry_point() -> None:
    assert load_backend("s3.bucket") is S3Bucket


def test_names_fit_s3_and_parse_back(s3: S3Client) -> None:
    proposed = make_name("0a1b2c3d", 42, now=1_800_000_000)
    name = S3Bucket().adapt_name(proposed)
    assert name == proposed.replace("_", "-")
    assert name.startswith("rc-0a1b2c3d-")
    prefixed = S3Bucket(prefix="team-ci-").adapt_name(proposed)
    assert prefixed == f"team-ci-{name}"
    value, record = S3Bucket(prefix="team-ci-").acquire(prefixed)
    try:
        assert bucket_names(s3) == {prefixed}, "S3 accepted the name as it is"
        assert value.name == record["name"] == prefixed
        assert record["prefix"] == "team-ci-"
        parsed = S3Bucket.name_style.parse(prefixed)
        assert parsed is not None
        assert (parsed.run_id, parsed.created_at) == ("0a1b2c3d", 1_800_000_000.0)
        assert (parsed.user_prefix, parsed.bare) == ("team-ci-", name)
        bare = parse_name(name.replace("-", "_"))
        assert bare is not None
        assert bare.run_id == parsed.run_id
    finally:
        S3Bucket.release(record)
    assert not bucket_exists(s3, prefixed)


@pytest.mark.parametrize(
    "prefix", ["Team-", "team", "-team-", "team_ci-", "../", "a/b-", "x" * 31 + "-", "t.e-"]
)
def test_bad_prefixes_are_refused(s3: S3Client, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        S3Bucket(prefix=prefix)


def test_the_value_reaches_the_bucket(s3: S3Client, registry_path: str) -> None:
    with reclaim.Fixture("value") as f:
        bucket = f.acquire(S3Bucket())
        assert isinstance(bucket, Bucket)
        assert str(bucket) == bucket.name
        assert bucket.url == f"s3://{bucket.name}"
        assert (bucket.region, bucket.endpoint_url) == (REGION, os.environ["AWS_ENDPOINT_URL"])
        bucket.client().put_object(Bucket=bucket.name, Key="hello.txt", Body=b"hi")
        body = s3.get_object(Bucket=bucket.name, Key="hello.txt")["Body"].read()
        assert body == b"hi"
        assert SECRET not in repr(bucket)
        assert SECRET not in repr(S3Bucket())
        location = s3.get_bucket_location(Bucket=bucket.name)["LocationConstraint"]
        assert location == REGION
    assert not bucket_exists(s3, bucket.name)


@pytest.mark.parametrize("round_size", [None, 300], ids=["one-round", "rounds-of-300"])
def test_versioned_bucket_with_more_than_a_page_is_emptied(
    s3: S3Client, monkeypatch: pytest.MonkeyPatch, round_size: int | None
) -> None:
    """1050 versions and delete markers (two pages of list_object_versions) plus an unfinished
    multipart upload: all gone in a single pass, then the bucket. With rounds smaller than a
    page, a huge bucket's way: list a page, delete it, list again from the start."""
    # One pass only: without it a release that read just the first page would still get there
    # by listing again, and this test would not see the missing pagination.
    monkeypatch.setattr(s3_backend, "_PASSES", 1)
    if round_size is not None:
        monkeypatch.setattr(s3_backend, "_ROUND", round_size)
    backend = S3Bucket(versioned=True)
    bucket, record = backend.acquire(backend.adapt_name(make_name("0000b16b", 1)))
    name = bucket.name
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    keys = [f"dir/{i:03}" for i in range(150)]
    for _ in range(2):
        for key in keys:
            s3.put_object(Bucket=name, Key=key, Body=b"v")
    for _ in range(5):  # each round stacks one more delete marker on every key
        s3.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys]})
    s3.create_multipart_upload(Bucket=name, Key="half-uploaded")
    pages, entries = entry_count(s3, name)
    assert (pages, entries) == (2, 150 * 2 + 150 * 5), "the bucket must span two pages"
    with pytest.raises(ClientError, match="BucketNotEmpty"):
        s3.delete_bucket(Bucket=name)  # what a plain delete meets

    S3Bucket.release(record)
    assert not bucket_exists(s3, name)
    assert name not in bucket_names(s3)
    S3Bucket.release(record)  # I3: NoSuchBucket is success


def test_unversioned_bucket_with_objects_is_emptied(s3: S3Client) -> None:
    backend = S3Bucket()
    bucket, record = backend.acquire(backend.adapt_name(make_name("0000b16c", 1)))
    for i in range(30):
        s3.put_object(Bucket=bucket.name, Key=f"k{i}", Body=b"x")
    assert S3Bucket.exists(record)
    S3Bucket.release(record)
    assert not bucket_exists(s3, bucket.name)


def test_existing_name_is_never_adopted(s3: S3Client, registry_path: str) -> None:
    """The bucket exists already (409): it is somebody else's, the acquire made nothing, and
    the failed acquire leaves the bucket alone."""
    name = S3Bucket().adapt_name(make_name("0000ad07", 1))
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=name, Key="theirs", Body=b"x")
    with pytest.raises(NotCreatedError) as info:
        S3Bucket().acquire(name)
    message = str(info.value)
    assert name in message
    assert "could not create the bucket" in message
    assert "HTTP 409 BucketAlreadyOwnedByYou" in message
    assert "s3:CreateBucket" in message, "says what to check"
    assert SECRET not in message
    assert info.value.kind == "s3.bucket"
    _acquire_leaves_no_entry(registry_path, _Named(name), says="HTTP 409")
    assert s3.get_object(Bucket=name, Key="theirs")["Body"].read() == b"x"


class _Named(S3Bucket):
    """Takes the name it is given (to collide with somebody else's bucket on purpose)."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


_acquire_leaves_no_entry = functools.partial(acquire_creates_nothing, hidden=SECRET)


def test_an_acquire_that_cannot_connect_creates_nothing(s3: S3Client, registry_path: str) -> None:
    """A port nobody listens on: no request reached a server (botocore's retries included);
    the entry is closed instead of failing every later sweep against a server not there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = int(probe.getsockname()[1])
    backend = S3Bucket(endpoint_url=f"http://127.0.0.1:{closed}")
    with pytest.raises(NotCreatedError, match="Could not connect") as info:
        backend.acquire(backend.adapt_name(make_name("0000dead", 1)))
    assert SECRET not in str(info.value)
    _acquire_leaves_no_entry(registry_path, backend, says="S3 endpoint is up")


class Scripted(BaseHTTPRequestHandler):
    """An S3 stand-in that answers requests with the statuses of ``answers``, in turn (the last
    one for ever): an S3 error document with the status's code."""

    answers: ClassVar[list[tuple[int, str]]] = []
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        type(self).seen.append(self.command)
        index = min(len(type(self).seen), len(self.answers)) - 1
        status, code = self.answers[index]
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            f"<Error><Code>{code}</Code><Message>scripted</Message></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def scripted(*answers: tuple[int, str]) -> Iterator[str]:
    """An S3 stand-in's endpoint, answering ``answers`` in turn."""
    handler = type("Answers", (Scripted,), {"answers": list(answers), "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_create_creates_nothing_unless_a_retry_came_before(
    s3: S3Client, registry_path: str
) -> None:
    """403 to the only CreateBucket: nothing was made. The same 409 after a 500 that botocore
    retried is not proof: the first request may have made the bucket (AcquireError)."""
    name = S3Bucket().adapt_name(make_name("0000f00d", 1))
    with scripted((403, "SignatureDoesNotMatch")) as endpoint:
        with pytest.raises(NotCreatedError, match="HTTP 403 SignatureDoesNotMatch"):
            S3Bucket(endpoint_url=endpoint).acquire(name)
        _acquire_leaves_no_entry(
            registry_path, S3Bucket(endpoint_url=endpoint), says="SignatureDoesNotMatch"
        )
    with scripted((500, "InternalError"), (409, "BucketAlreadyOwnedByYou")) as endpoint:
        with pytest.raises(AcquireError, match="HTTP 409") as info:
            S3Bucket(endpoint_url=endpoint).acquire(name)
        assert not isinstance(info.value, NotCreatedError)


def test_keep_credentials_false_stores_no_keys(s3: S3Client) -> None:
    backend = S3Bucket(keep_credentials=False)
    bucket, record = backend.acquire(backend.adapt_name(make_name("0000c0de", 1)))
    assert record["access_key_id"] is None
    assert record["secret_access_key"] is None
    assert SECRET not in json.dumps(record)
    assert bucket_exists(s3, bucket.name)
    S3Bucket.release(record)  # with what boto3 finds here: the environment
    assert not bucket_exists(s3, bucket.name)


def test_region_comes_from_the_aws_profile(
    s3: S3Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = eu-central-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert S3Bucket().region == "eu-central-1"
    assert S3Bucket(region="ap-south-1").region == "ap-south-1"
    config.write_text("")
    assert S3Bucket().region == "us-east-1"


def test_half_credentials_are_refused(s3: S3Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match="both an access key id and a secret"):
        S3Bucket()


class EchoingS3(BaseHTTPRequestHandler):
    """A broken S3-compatible server that quotes the caller's secret key in every error."""

    def _answer(self) -> None:
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
            f"<Message>signature made with {SECRET} does not match</Message></Error>"
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_secret_quoted_by_the_server_is_redacted(s3: S3Client) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = S3Bucket(endpoint_url=f"http://127.0.0.1:{server.server_address[1]}")
        name = backend.adapt_name(make_name("0000ec40", 1))
        with pytest.raises(AcquireError) as acquired:
            backend.acquire(name)
        with pytest.raises(ReleaseError) as released:
            S3Bucket.release(backend.plan(name))
        for error in (acquired.value, released.value):
            text = str(error)
            assert "HTTP 403 AccessDenied" in text, "the server's answer is quoted..."
            assert "signature made with *** does not match" in text, "...with the key redacted"
            assert SECRET not in text
            assert name in text
    finally:
        server.shutdown()
        server.server_close()


# --- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "victim/../other"),
        ("name", "victim?versioning"),
        ("name", "Victim"),
        ("name", "rc_0a1b2c3d_x_1"),
        ("name", "a"),
        ("name", "x" * 64),
        ("name", 7),
        ("prefix", "team-"),
        ("prefix", None),
        ("endpoint_url", "file:///etc/passwd"),
        ("endpoint_url", "http://evil.example@127.0.0.1:1"),
        ("endpoint_url", "http://127.0.0.1:1/?x=1"),
        ("region", "eu-west-1.evil.example/x"),
        ("region", "EU-WEST-1"),
    ],
)
def test_hostile_records_never_reach_a_url(s3: S3Client, field: str, value: object) -> None:
    """A tampered record is refused before any request: the victim bucket survives. A name or
    prefix that is not reclaim's own is refused by the guard (I8), a bad endpoint or region
    before a client is made."""
    backend = S3Bucket()
    victim, record = backend.acquire(backend.adapt_name(make_name("0000bad0", 1)))
    s3.put_object(Bucket=victim.name, Key="precious", Body=b"x")
    hostile = {**record, field: value}
    error = ForeignNameError if field in ("name", "prefix") else ValueError
    with pytest.raises(error, match=r"refused|endpoint|region"):
        S3Bucket.release(hostile)
    with pytest.raises(error, match=r"refused|endpoint|region"):
        S3Bucket.exists(hostile)
    assert s3.get_object(Bucket=victim.name, Key="precious")["Body"].read() == b"x"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint_url": "ftp://127.0.0.1:21"},
        {"endpoint_url": "http:///no-host"},
        {"region": "us-east-1/../x"},
    ],
)
def test_hostile_arguments_are_refused(s3: S3Client, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"endpoint|region"):
        S3Bucket(**kwargs)  # type: ignore[arg-type]


def test_hostile_names_are_refused(s3: S3Client) -> None:
    with pytest.raises(ValueError, match="not a name reclaim makes"):
        S3Bucket().adapt_name("rc_0a1b2c3d_x_1/../../victim")
    with pytest.raises(ValueError, match="longer than the server's 63 bytes"):
        S3Bucket(prefix="x" * 30 + "-").adapt_name(make_name("0a1b2c3d", 10**19))
    with pytest.raises(ValueError, match="not a bucket name"):
        S3Bucket().plan("victim?delete")
    with pytest.raises(ValueError, match="not a bucket name"):
        S3Bucket().plan("team-rc-0a1b2c3d-x-1")  # another backend's prefix
    assert S3Bucket(prefix="team-").plan("team-rc-0a1b2c3d-x-1")["prefix"] == "team-"


# --- leftovers --------------------------------------------------------------------------------


def test_list_leftovers_finds_only_reclaim_buckets(s3: S3Client, moto_url: str) -> None:
    run_id = "5eedf00d"
    ours = []
    for seq in (1, 2):
        backend = S3Bucket()
        _, record = backend.acquire(backend.adapt_name(make_name(run_id, seq, now=1_800_000_000)))
        ours.append(record["name"])
    team = S3Bucket(prefix="team-")
    _, team_record = team.acquire(team.adapt_name(make_name(run_id, 3, now=1_800_000_000)))
    foreign = [
        "my-data",
        "rc-5eedf00d-tsq0g0",  # no sequence
        "rc-5eedf00d-tsq0g0-1-backup",  # something after the name
        "xrc-5eedf00d-tsq0g0-1",  # not a prefix ending in '-'
        "rc-5eedf00-tsq0g0-1",  # 7 hex digits
        "rc-5eedf00g-tsq0g0-1",  # not hex
        "rc-5eedf00d-tsq0g0x12-1",  # time too long
        "myapp-rc-5eedf00d-tsq0g0-9",  # another prefix than the one asked for
        "rc-5eedf00d-tsq0g0-01",  # a leading zero
    ]
    for name in foreign:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    url = moto_url.replace("http://", "s3+http://") + f"?region={REGION}"

    found = list(S3Bucket.list_leftovers(url))
    assert sorted(left.record["name"] for left in found) == sorted(ours)
    for left in found:
        assert (left.run_id, left.created_at) == (run_id, 1_800_000_000.0)
    team_found = list(S3Bucket.list_leftovers(url + "&prefix=team-"))
    assert [left.record["name"] for left in team_found] == [team_record["name"]]
    assert team_found[0].record["prefix"] == "team-"

    for left in [*found, *team_found]:  # each record is one release accepts
        S3Bucket.release(left.record)
    assert bucket_names(s3) == set(foreign)


def test_list_leftovers_takes_credentials_from_the_url(s3: S3Client, moto_url: str) -> None:
    backend = S3Bucket()
    backend.acquire(backend.adapt_name(make_name("5eedf00e", 1)))
    url = moto_url.replace("http://", "s3+http://AKIAURL:url%2Fsecret@")
    (left,) = S3Bucket.list_leftovers(url)
    assert left.record["access_key_id"] == "AKIAURL"
    assert left.record["secret_access_key"] == "url/secret"
    S3Bucket.release(left.record)
    assert bucket_names(s3) == set()


def test_list_leftovers_refuses_other_urls(s3: S3Client) -> None:
    with pytest.raises(ValueError, match="must start with s3://"):
        list(S3Bucket.list_leftovers("http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="prefix"):
        list(S3Bucket.list_leftovers("s3+http://127.0.0.1:1?prefix=../"))


# --- outages the crash kits do not stage ------------------------------------------------------

HOLDER = """
import json, os, sys, time
import reclaim
from reclaim.backends.s3 import S3Bucket
from reclaim._run import current_run

with reclaim.Fixture("s3-holder") as f:
    bucket = f.acquire(S3Bucket(versioned=True, endpoint_url=sys.argv[1]))
    client = bucket.client()
    for i in range(20):
        client.put_object(Bucket=bucket.name, Key=f"k{i % 5}", Body=b"x")
    client.delete_object(Bucket=bucket.name, Key="k0")
    run = current_run()
    print(json.dumps({"bucket": bucket.name, "run": run.id, "watchdog": run.watchdog.pid}),
          flush=True)
    time.sleep(600)
"""


def resource_states(registry_path: str) -> list[str]:
    reg = open_registry(registry_path)
    try:
        return [str(r.state) for r in reg.resources()]
    finally:
        reg.close()


def test_an_outage_at_fixture_exit_names_bucket_and_endpoint_and_the_runs_end_retries(
    s3: S3Client, moto_url: str, registry_path: str
) -> None:
    """The server is unreachable when the fixture exits: the release fails with a clear error
    that holds no secret, the entry stays failed, and the run's close retries it later."""
    port = int(moto_url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    proxy.start()
    endpoint = f"http://127.0.0.1:{proxy.port}"
    try:
        with pytest.raises(ExceptionGroup) as info, reclaim.Fixture("down") as f:
            bucket = f.acquire(S3Bucket(endpoint_url=endpoint, versioned=True))
            bucket.client().put_object(Bucket=bucket.name, Key="k", Body=b"x")
            proxy.stop()
        (error,) = info.value.exceptions
        assert isinstance(error, ReleaseError)
        text = str(error)
        assert bucket.name in text
        assert endpoint in text
        assert "stays in state failed" in text
        assert SECRET not in text
        assert SECRET not in str(error.__cause__)
        assert bucket_exists(s3, bucket.name), "the server never saw a delete"

        reg = open_registry(registry_path)
        (kept,) = reg.resources()
        reg.close()
        assert kept.state == "failed"
        assert kept.last_error is not None
        assert "could not delete the bucket" in kept.last_error
        assert SECRET not in kept.last_error
        status = reclaim_cli("status", "--json").stdout + reclaim_cli("status").stdout
        assert SECRET not in status
        assert '"condition": "failed"' in status

        proxy.start()
        end_run(registry_path)  # the run's close retries what failed
        assert not bucket_exists(s3, bucket.name)
        assert resource_states(registry_path) == []
    finally:
        proxy.stop()


def test_a_watchdog_release_that_meets_a_dead_server_is_kept_then_swept(
    s3: S3Client, moto_url: str, spawn: Spawner, registry_path: str
) -> None:
    """The owner is killed while the server is down: the watchdog's release fails and keeps the
    entry failed; once the server is back, ``reclaim sweep`` deletes the bucket."""
    port = int(moto_url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    proxy.start()
    try:
        proc, held = spawn(HOLDER, f"http://127.0.0.1:{proxy.port}")
        proxy.stop()
        kill(proc)
        wait_until(lambda: not alive(held["watchdog"]))
        assert resource_states(registry_path) == ["failed"]
        assert bucket_exists(s3, held["bucket"])
        status = reclaim_cli("status", "--json").stdout
        assert "could not delete the bucket" in status
        assert SECRET not in status

        proxy.start()
        swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
        assert (swept["released"], swept["failed"]) == (1, 0)
        assert not bucket_exists(s3, held["bucket"])
    finally:
        proxy.stop()


# --- without boto3 ----------------------------------------------------------------------------


def test_module_imports_without_boto3_and_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['boto3'] = None\n"
        "from reclaim import MissingExtraError\n"
        "from reclaim.backends.s3 import S3Bucket\n"
        "try:\n"
        "    S3Bucket()\n"
        "except MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=CHILD_TIMEOUT,
    )
    assert "pip install 'reclaim[s3]'" in out.stdout
    assert issubclass(MissingExtraError, ImportError)


def test_async_persona_s3_bucket_is_awaited_off_the_event_loop(
    s3: S3Client, registry_path: str
) -> None:
    # AsyncPersona's docstring says every method is awaited: the bucket is made in a worker
    # thread, so the event loop keeps running meanwhile (a ticker task proves it).
    assert inspect.iscoroutinefunction(reclaim.AsyncPersona.s3_bucket)
    assert inspect.iscoroutinefunction(reclaim.AsyncPersona.openfga_store)

    async def main() -> tuple[int, str]:
        ticks = 0
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        async with reclaim.Persona("bucketeer") as person:
            await asyncio.sleep(0)
            before = ticks
            bucket = await person.s3_bucket()
            during = ticks - before
            name = bucket.name
            assert name in bucket_names(s3)
        running = False
        await task
        return during, name

    during, name = asyncio.run(main())
    assert during > 0, "the loop ran while the bucket was made"
    assert name not in bucket_names(s3), "released when the persona ended"

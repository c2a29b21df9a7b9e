"""Adversaries of ``s3.bucket``: buckets on a moto S3 server of the test's own (server mode,
real HTTP on 127.0.0.1, as tests/test_backend_s3.py runs it), made with a client that is not
reclaim's."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Final

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from adversaries import Adversary, Factory, Foreign

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

KEY_ID: Final = "AKIAADVERSARY0001"
SECRET: Final = "adversary-secret"

#: What S3 lets a bucket be called (the look-alikes it cannot hold are not tried).
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _server(request: pytest.FixtureRequest) -> str:
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()

    def stop() -> None:
        server.stop()
        werkzeug.setLevel(level)

    request.addfinalizer(stop)
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def bucket(request: pytest.FixtureRequest) -> Adversary:
    endpoint = _server(request)
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )

    def create(name: str) -> None:
        client.create_bucket(Bucket=name)
        client.put_object(Bucket=name, Key="keep.txt", Body=b"the user's data")

    def present(name: str) -> bool:
        try:
            client.head_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchBucket"):
                return False
            raise
        return True

    def remove(name: str) -> None:
        if not present(name):
            return
        listed = client.list_objects_v2(Bucket=name).get("Contents", [])
        for item in listed:
            client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)

    def record(name: str, **more: object) -> dict[str, object]:
        return {
            "name": name,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "access_key_id": KEY_ID,
            "secret_access_key": SECRET,
            "session_token": None,
            **more,
        }

    def foreign(label: str, name: str, **more: object) -> Foreign:
        return Foreign(
            label,
            record(name, **more),
            present=lambda: present(name),
            create=lambda: create(name),
            remove=lambda: remove(name),
        )

    good = "rc-0badf00d-t0a1b2-1"
    host_port = endpoint.removeprefix("http://")
    return Adversary(
        kind="s3.bucket",
        leftovers_url=f"s3+http://{KEY_ID}:{SECRET}@{host_port}",
        create=create,
        present=present,
        remove=remove,
        spell=lambda name: name.replace("_", "-"),
        valid=lambda name: _BUCKET.fullmatch(name) is not None,
        foreign=[
            foreign("a user's bucket", "team-data"),
            foreign("a user's bucket that contains a reclaim name", f"{good}-backup"),
            # Shaped like a prefixed bucket of reclaim's, but the record does not say that
            # reclaim put "myapp-" there (no "prefix" field): the user's own naming scheme.
            foreign("a user's bucket named myapp-rc-...", f"myapp-{good}"),
            # A record that claims another prefix than the one its name carries.
            foreign("a bucket whose prefix field disagrees", f"team-{good}", prefix="team-rc-"),
        ],
    )


KINDS: dict[str, Factory] = {"s3.bucket": bucket}

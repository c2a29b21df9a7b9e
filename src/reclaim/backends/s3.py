"""S3 buckets: ``S3Bucket(versioned=False)`` gives a fresh, empty bucket (a :class:`Bucket`).

Works with AWS and with any S3-compatible server (MinIO, Ceph, R2, moto's server mode) through
``endpoint_url``. Release empties the bucket of every object version, delete marker and
unfinished multipart upload, then deletes it; a bucket that is already gone is fine (I3). A
server without ``ListObjectVersions`` or ``ListMultipartUploads`` (405 or 501, as npm's s3rver)
is emptied with the plain listing, and what it lacked is logged (``reclaim.backends.s3``).

Names. S3 bucket names allow lower case letters, digits, dots and hyphens (3-63 characters),
never underscores, so reclaim's ``rc_<run>_<time>_<seq>`` becomes ``rc-<run>-<time>-<seq>``
(:meth:`S3Bucket.adapt_name`), optionally after a prefix of the user's that ends with a hyphen
(``team-rc-3f2a1b0c-t1a2b3-7``). The backend declares that spelling as its
:attr:`~S3Bucket.name_style`; the record's ``name`` is the whole bucket name and its ``prefix``
the user's part of it, and release, ``exists`` and :meth:`S3Bucket.list_leftovers` act only on
names that are, whole, of that style (I8).

Configuration, each an argument with the environment variable boto3 itself reads as default:

==================  ==============================================  =====================
argument            environment                                     default
==================  ==============================================  =====================
endpoint_url        ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``   AWS
region              ``AWS_DEFAULT_REGION``, ``AWS_REGION``          profile, ``us-east-1``
access_key_id       ``AWS_ACCESS_KEY_ID``                           boto3's chain
secret_access_key   ``AWS_SECRET_ACCESS_KEY``                       boto3's chain
session_token       ``AWS_SESSION_TOKEN``                           none
==================  ==============================================  =====================

Credentials and the record (I2, I7). Static keys given as arguments *or found in the
environment* are stored in the record, the secret key and session token in
:attr:`~S3Bucket.secret_fields` (redacted in every output): the watchdog is started by a run's
first acquisition, perhaps before a test exported its AWS variables, and a sweep from cron has
none of them, so only the record is sure to be there. ``keep_credentials=False`` stores no keys;
release then uses whatever boto3 finds where it runs (environment, profile, instance role). Keys
that boto3 finds by itself (profiles, SSO, instance roles) are never stored either way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast
from urllib.parse import urlsplit

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    NameStyle,
    NotCreatedError,
    ReclaimName,
    Record,
    ReleaseError,
    raise_backend_error,
    require_extra,
    split_url,
)

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    _HAVE_BOTO3 = True
except ImportError:  # the module imports without its driver; using it raises MissingExtraError
    _HAVE_BOTO3 = False

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.literals import BucketLocationConstraintType

__all__ = ["Bucket", "S3Bucket"]

_KIND: Final = "s3.bucket"

_log = logging.getLogger("reclaim.backends.s3")

#: What a user may put before reclaim's name: starts like a bucket name, ends with the hyphen
#: before ``rc-``, at most 31 characters (or nothing at all). No dots: a dotted name breaks TLS
#: of virtual-hosted addressing.
_USER_PREFIX: Final = r"(?:[a-z0-9][a-z0-9-]{0,29}-)?"

#: A region: AWS's (``eu-west-1``) or an S3-compatible server's (``auto``, ``garage``). It can
#: become part of a host name, so one DNS label at most.
_REGION_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")

#: Codes meaning "that bucket does not exist": head_bucket has no body, so only "404".
_GONE: Final = frozenset({"NoSuchBucket", "404"})

#: delete_objects takes at most this many keys per call (S3's limit).
_DELETE_BATCH: Final = 1000

#: At most this many versions are listed before they are deleted (memory stays bounded).
_ROUND: Final = 100_000

#: Empty-then-delete passes before giving up: a writer may still be adding objects.
_PASSES: Final = 3


@dataclasses.dataclass(frozen=True)
class Bucket:
    """What a test gets from :class:`S3Bucket`: the bucket's name and how to reach it.

    ``str(bucket)`` is the name. :meth:`client` returns a boto3 S3 client configured like the
    backend that made the bucket (endpoint, region, credentials).
    """

    name: str
    region: str
    endpoint_url: str | None
    _record: Record = dataclasses.field(repr=False, compare=False)

    @property
    def url(self) -> str:
        """``s3://<name>``, the form the AWS CLI and many tools take."""
        return f"s3://{self.name}"

    def client(self) -> S3Client:
        """A new boto3 S3 client for this bucket's server, with the backend's credentials."""
        return _client(self._record)

    def __str__(self) -> str:
        return self.name


class S3Bucket(Backend[Bucket]):
    """A bucket of its own, emptied of every version and deleted at release.

    Args:
        versioned: turn on versioning after creating it (release removes every version and
            delete marker either way).
        prefix: put before reclaim's name, e.g. ``"team-"`` where a policy demands a prefix; lower
            case letters, digits and hyphens, ending with a hyphen.
        endpoint_url: an S3-compatible server (``http://127.0.0.1:9000``); AWS when None.
        region: the bucket's region (else the environment's, the AWS profile's, ``us-east-1``);
            created with a location constraint outside ``us-east-1``.
        access_key_id, secret_access_key, session_token: static credentials.
        keep_credentials: store the static credentials in the record, so that the watchdog and
            the sweeper can release without them in their environment (see the module's notes).

    Raises:
        MissingExtraError: boto3 is not installed (``pip install 'reclaim[s3]'``).
        ValueError: an argument that cannot be part of a bucket name or an endpoint.
    """

    kind = _KIND
    secret_fields = frozenset({"secret_access_key", "session_token"})
    url_schemes = ("s3", "s3+http", "s3+https")

    #: Bucket names cannot hold underscores: ``[<prefix>]rc-<run>-<time>-<seq>``, at most 63
    #: bytes. The record's ``name`` is the whole bucket name, the user's prefix included.
    name_style = NameStyle(separator="-", user_prefix=_USER_PREFIX, max_length=63)

    def __init__(
        self,
        *,
        versioned: bool = False,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        keep_credentials: bool = True,
    ) -> None:
        require_extra(_HAVE_BOTO3, _KIND, "s3", "boto3")
        self.versioned = versioned
        self.prefix = _check_prefix(prefix)
        self.endpoint_url = _check_endpoint(
            endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        )
        self.region = _check_region(
            region or _env("AWS_DEFAULT_REGION", "AWS_REGION") or _profile_region() or ""
        )
        key_id = access_key_id or _env("AWS_ACCESS_KEY_ID")
        secret = secret_access_key or _env("AWS_SECRET_ACCESS_KEY")
        if bool(key_id) != bool(secret):
            raise ValueError(
                "S3Bucket needs both an access key id and a secret access key, or neither"
                " (then boto3 finds credentials itself); set AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY together"
            )
        self._credentials: dict[str, str | None] = {
            "access_key_id": key_id,
            "secret_access_key": secret,
            "session_token": (session_token or _env("AWS_SESSION_TOKEN")) if key_id else None,
        }
        self.keep_credentials = keep_credentials

    def __repr__(self) -> str:  # never the secret
        where = self.endpoint_url or "aws"
        return f"S3Bucket(endpoint_url={where!r}, region={self.region!r})"

    def _connection(self) -> Record:
        """Endpoint, region and credentials: what a client needs, with every key."""
        return {"endpoint_url": self.endpoint_url, "region": self.region, **self._credentials}

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The ``prefix`` field says which part of the name is the user's: exactly the prefix
        the name carries (``""`` or absent for none). ``myapp-rc-...`` is the user's own naming
        unless the record says reclaim put ``myapp-`` there (I8)."""
        return (("prefix", record.get("prefix", ""), name.user_prefix),)

    def adapt_name(self, proposed: str) -> str:
        """``rc_3f2a1b0c_t1a2b3_7`` -> ``<prefix>rc-3f2a1b0c-t1a2b3-7``: S3 forbids underscores.

        Raises:
            ValueError: not a name reclaim makes, or too long for S3 with the prefix.
        """
        return self.name_style.spell(proposed, self.prefix)

    def plan(self, name: str) -> Record:
        parsed = self.name_style.parse(name)
        if parsed is None or parsed.user_prefix != self.prefix:
            raise ValueError(
                f"{name!r} is not a bucket name reclaim makes with the prefix {self.prefix!r}:"
                f" {self.prefix}rc-<run>-<time>-<seq>, at most 63 bytes"
            )
        record: Record = {"name": name, **self._connection()}
        if self.prefix:  # absent for none, as in the records of earlier versions
            record["prefix"] = self.prefix
        if not self.keep_credentials:
            record.update(dict.fromkeys(self._credentials))
        return record

    def acquire(self, name: str) -> tuple[Bucket, Record]:
        """Create the bucket (versioned if asked); fails if the name exists already.

        Raises :class:`NotCreatedError` when no bucket was made: no ``CreateBucket`` reached the
        server (it could not be reached, botocore refused the input or found no credentials),
        or the only one that did was answered with a ``4xx`` (``AccessDenied``, a bad signature,
        ``BucketAlreadyExists``/``BucketAlreadyOwnedByYou``: somebody else's bucket, never
        deleted on our behalf). After a retried request, or a failure to turn on versioning,
        it is :class:`AcquireError`: a bucket may exist, and is released.
        """
        record = self.plan(name)
        # Created with the credentials given now, even if the record keeps none of them.
        client = _client(self._connection())
        reached = _Reached()
        client.meta.events.register("needs-retry.s3.CreateBucket", reached)
        try:
            if self.region == "us-east-1":
                client.create_bucket(Bucket=name)
            else:
                client.create_bucket(
                    Bucket=name,
                    # Any region's name: S3-compatible servers have their own.
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", self.region)
                    },
                )
        except (ClientError, BotoCoreError) as exc:
            _fail(
                _create_failure(exc, reached.count), record, "create the bucket", exc, _ACQUIRE_HINT
            )
        if self.versioned:
            try:
                client.put_bucket_versioning(
                    Bucket=name, VersioningConfiguration={"Status": "Enabled"}
                )
            except (ClientError, BotoCoreError) as exc:
                _fail(AcquireError, record, "turn on versioning", exc, _ACQUIRE_HINT)
        value = Bucket(name, self.region, self.endpoint_url, self._connection())
        return value, record

    @classmethod
    def release(cls, record: Record) -> None:
        """Abort unfinished uploads, delete every object version and delete marker (in batches
        of 1000), then the bucket. A bucket that does not exist is already released (I3).

        A server that lacks ``ListMultipartUploads`` or ``ListObjectVersions`` (it answers
        ``501 NotImplemented`` or ``405 MethodNotAllowed``, as npm's s3rver does) has no
        uploads to abort, or no versions: its bucket is emptied with the plain listing
        (``ListObjectsV2``). What the server lacked is logged (``reclaim.backends.s3``) and
        named in the error if the release fails all the same."""
        client = _client(record)
        bucket = str(record["name"])
        lacks: set[str] = set()
        try:
            for _ in range(_PASSES):
                _abort_uploads(client, bucket, lacks)
                _delete_versions(client, bucket, lacks)
                try:
                    client.delete_bucket(Bucket=bucket)
                except ClientError as exc:
                    if _code(exc) == "BucketNotEmpty":  # somebody is still writing: again
                        continue
                    raise
                return
        except ClientError as exc:
            if _code(exc) in _GONE:
                return
            _fail(ReleaseError, record, "delete the bucket", exc, _RELEASE_HINT, lacks=lacks)
        except (BotoCoreError, _Stuck) as exc:
            _fail(ReleaseError, record, "delete the bucket", exc, _RELEASE_HINT, lacks=lacks)
        _fail(
            ReleaseError,
            record,
            "delete the bucket",
            _Stuck(
                f"still not empty after {_PASSES} passes; something keeps writing to it"
                " (or an object lock holds versions)"
            ),
            "",
            lacks=lacks,
        )

    @classmethod
    def exists(cls, record: Record) -> bool:
        """``head_bucket``: True when it answers, False on 404."""
        client = _client(record)
        try:
            client.head_bucket(Bucket=str(record["name"]))
        except ClientError as exc:
            if _code(exc) in _GONE:
                return False
            _fail(BackendError, record, "look up the bucket", exc, _RELEASE_HINT)
        except BotoCoreError as exc:
            _fail(BackendError, record, "look up the bucket", exc, _RELEASE_HINT)
        return True

    @classmethod
    def describe(cls, record: Record) -> str:
        where = record.get("endpoint_url") or f"aws {record.get('region', '?')}"
        return f"s3://{record.get('name', '?')} at {where}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Buckets at ``target`` whose whole name is reclaim's (``rc-<run>-<time>-<seq>``).

        ``target`` is ``s3://`` (AWS), ``s3://host[:port]`` (https), or ``s3+http://host:port``
        for a local server, with optional ``?region=...`` and ``?prefix=team-`` (list only
        names with exactly that prefix; without it, only names that start with ``rc-``).
        Credentials come from ``user:password@`` in the URL or from the environment, as for
        :class:`S3Bucket`, and go into each leftover's record.
        """
        require_extra(_HAVE_BOTO3, _KIND, "s3", "boto3")
        url = split_url(target, kind=_KIND, schemes=cls.url_schemes, need_host=False)
        query = dict(url.query)
        prefix = _check_prefix(query.get("prefix", ""))
        endpoint = None
        if url.host:
            scheme = "http" if url.scheme == "s3+http" else "https"
            host = f"[{url.host}]" if ":" in url.host else url.host
            endpoint = f"{scheme}://{host}" + (f":{url.port}" if url.port is not None else "")
        backend = cls(
            prefix=prefix,
            endpoint_url=endpoint,
            region=query.get("region") or None,
            access_key_id=url.username or None,
            secret_access_key=url.password or None,
        )
        connection = backend._connection()
        client = _client(connection)
        try:
            pages = list(client.get_paginator("list_buckets").paginate())
        except (ClientError, BotoCoreError) as exc:
            _fail(BackendError, connection, "list the buckets", exc, _UNREACHABLE_HINT)
        for page in pages:
            for item in page.get("Buckets", []):
                parsed = cls.name_style.parse(item.get("Name"))
                if parsed is None or parsed.user_prefix != prefix:
                    continue
                record = backend.plan(parsed.text)
                region = item.get("BucketRegion")
                if region and _REGION_RE.fullmatch(region):
                    record["region"] = region
                yield Leftover.of(record, parsed)


# --- talking to S3 ---------------------------------------------------------------------------

_ACQUIRE_HINT: Final = "check the endpoint, the region and that the credentials may s3:CreateBucket"
_RELEASE_HINT: Final = (
    "check that the credentials may s3:ListBucketVersions, s3:DeleteObjectVersion,"
    " s3:ListBucketMultipartUploads, s3:AbortMultipartUpload and s3:DeleteBucket"
)
_UNREACHABLE_HINT: Final = "check that the S3 endpoint is up and reachable from here"


#: Answers to a CreateBucket that mean it made nothing.
_REFUSED: Final = frozenset({400, 401, 403, 404, 405, 409, 422})


class _Reached:
    """Counts the CreateBucket requests that reached the server (a ``needs-retry`` handler:
    botocore calls it after every attempt). botocore retries by itself, and an earlier attempt
    that was sent may have made the bucket, whatever the last one was answered."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, caught_exception: BaseException | None = None, **_: Any) -> None:
        if not isinstance(caught_exception, EndpointConnectionError):  # connect failed: unsent
            self.count += 1


def _create_failure(exc: Exception, reached: int) -> type[BackendError]:
    """:class:`NotCreatedError` when ``exc`` proves that no bucket was made, else
    :class:`AcquireError`."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return NotCreatedError if reached <= 1 and status in _REFUSED else AcquireError
    return NotCreatedError if reached == 0 else AcquireError


class _Stuck(Exception):
    """The bucket could not be emptied (not a driver error: what S3 answered, in words)."""


def _fail(
    error: type[BackendError],
    record: Record,
    doing: str,
    exc: Exception,
    hint: str,
    *,
    lacks: Iterable[str] = (),
) -> NoReturn:
    """Raise reclaim's ``error`` for ``exc``, with the toolkit's message and redaction; it
    names what the server lacked (``lacks``: operations it answered as not supported)."""
    raise_backend_error(
        error,
        _KIND,
        record,
        doing,
        exc,
        where=str(record.get("endpoint_url") or "aws"),
        reason=_reason(hint, sorted(lacks)),
        secret_fields=S3Bucket.secret_fields,
        style=S3Bucket.name_style,
    )


def _client(record: Record) -> S3Client:
    """A boto3 client from a record alone (I2). A session per call: the default session is not
    safe to share between threads, and the watchdog may release from several."""
    require_extra(_HAVE_BOTO3, _KIND, "s3", "boto3")
    endpoint = _check_endpoint(record.get("endpoint_url"))
    region = _check_region(record.get("region") or "")
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        # Throttling (503 SlowDown) and dropped connections are retried with botocore's
        # bounded exponential back-off; the reaper retries the whole release on top (I5).
        retries={"max_attempts": 3, "mode": "standard"},
        # Local and S3-compatible servers are addressed by path; AWS picks for itself.
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=record.get("access_key_id") or None,
        aws_secret_access_key=record.get("secret_access_key") or None,
        aws_session_token=record.get("session_token") or None,
        config=config,
    )


def _abort_uploads(client: S3Client, bucket: str, lacks: set[str]) -> None:
    """Unfinished multipart uploads, which also keep a bucket from being deleted. All pages are
    listed first, for the same reason as in :func:`_delete_versions`. A server without
    ``ListMultipartUploads`` has none that it can list: skipped, and said (``lacks``)."""
    if "ListMultipartUploads" in lacks:
        return
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
    try:
        uploads = [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])]
    except ClientError as exc:
        if not _unsupported(exc):
            raise
        then = "no unfinished upload is aborted"
        _lacking(client, bucket, "ListMultipartUploads", exc, lacks, then=then)
        return
    for key, upload_id in uploads:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # finished or aborted meanwhile
                raise


def _delete_versions(client: S3Client, bucket: str, lacks: set[str]) -> None:
    """Every object version and delete marker: list (all pages), then delete in batches of 1000.

    Listing is finished before anything is deleted: paging on past entries that were deleted
    meanwhile is not something every S3-compatible server gets right (moto's server returns an
    empty page when the version id marker no longer exists). A huge bucket is done in rounds of
    at most ``_ROUND`` entries, each listing from the start again.

    A server without ``ListObjectVersions`` (no versioning) gets the plain listing,
    ``ListObjectsV2``: every object, deleted by key. Said in ``lacks``.
    """
    while True:
        try:
            entries, complete = _list_entries(client, bucket, plain="ListObjectVersions" in lacks)
        except ClientError as exc:
            if "ListObjectVersions" in lacks or not _unsupported(exc):
                raise
            then = "it is emptied with the plain listing (ListObjectsV2)"
            _lacking(client, bucket, "ListObjectVersions", exc, lacks, then=then)
            continue
        for start in range(0, len(entries), _DELETE_BATCH):
            batch = entries[start : start + _DELETE_BATCH]
            out = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            errors = [e for e in out.get("Errors", []) if e.get("Code") != "NoSuchVersion"]
            if errors:
                first = errors[0]
                raise _Stuck(
                    f"could not empty it: {len(errors)} of {len(batch)} versions were not"
                    f" deleted, the first {first.get('Key')!r}: {first.get('Code')}"
                    f" {first.get('Message', '')}"
                )
        if complete:
            return


def _list_entries(client: S3Client, bucket: str, *, plain: bool) -> tuple[list[Any], bool]:
    """The bucket's versions and delete markers (or, ``plain``, its objects) as
    ``delete_objects`` takes them, at most ``_ROUND``; and whether that is all of them."""
    entries: list[Any] = []
    if plain:
        for listed in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            entries += [{"Key": o["Key"]} for o in listed.get("Contents", [])]
            if len(entries) >= _ROUND:
                return entries, False
        return entries, True
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        entries += [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        if len(entries) >= _ROUND:
            return entries, False
    return entries, True


#: What an S3 server answers for an operation it does not have: s3rver answers
#: ``ListObjectVersions`` with 405 ``MethodNotAllowed`` and ``ListMultipartUploads`` with 501
#: ``NotImplemented``.
_UNSUPPORTED_CODES: Final = frozenset({"NotImplemented", "MethodNotAllowed"})
_UNSUPPORTED_STATUS: Final = frozenset({405, 501})


def _status(exc: ClientError) -> object:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _unsupported(exc: ClientError) -> bool:
    """Whether the server answered that it does not have the operation (not a refusal)."""
    return _code(exc) in _UNSUPPORTED_CODES or _status(exc) in _UNSUPPORTED_STATUS


#: (endpoint, operation) pairs already logged as lacking, so a server is named once a process.
_LOGGED: set[tuple[str, str]] = set()


def _lacking(
    client: S3Client, bucket: str, operation: str, exc: ClientError, lacks: set[str], *, then: str
) -> None:
    """Note that the server lacks ``operation``, and log it (once per server and process)."""
    lacks.add(operation)
    endpoint = str(client.meta.endpoint_url)
    if (endpoint, operation) in _LOGGED:
        return
    _LOGGED.add((endpoint, operation))
    _log.warning(
        "%s %r at %s: the server does not support %s (HTTP %s %s): %s",
        _KIND,
        bucket,
        endpoint,
        operation,
        _status(exc),
        _code(exc),
        then,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(hint: str, lacks: list[str] | None = None) -> Callable[[BaseException], str]:
    """The reason a failure gives: what S3 answered (operation, HTTP status, error code), and
    what to check: ``hint`` for a refusal (401, 403, and answers of S3's that are not a server
    failure), that the server lacks the operation for 405 and 501 (never the credentials), that
    it failed for a 5xx, whether the endpoint is up when no answer came; and what the server
    was found to lack before (``lacks``)."""
    lacked = (
        f" (this server lacks {' and '.join(lacks)}, which reclaim did without)" if lacks else ""
    )

    def reason(exc: BaseException) -> str:
        if isinstance(exc, _Stuck):
            return f"{exc}{lacked}; {hint}" if hint else f"{exc}{lacked}"
        if isinstance(exc, ClientError):
            status = _status(exc) or "?"
            error = exc.response.get("Error", {})
            operation = getattr(exc, "operation_name", "?")
            if _unsupported(exc):
                tip = f"the server does not support {operation}"
            elif isinstance(status, int) and status >= 500:
                tip = "the server failed; a later release or sweep tries again"
            else:
                tip = hint
            return (
                f"{operation} answered HTTP {status} {error.get('Code', '?')}"
                f" ({error.get('Message', 'no message')}){lacked}; {tip}"
            )
        return f"{type(exc).__name__}: {exc}{lacked}; {_UNREACHABLE_HINT}"

    return reason


# --- validation: nothing unchecked reaches a URL (I7) ----------------------------------------


def _check_prefix(prefix: object) -> str:
    """A user's prefix for bucket names, as :attr:`S3Bucket.name_style` allows one."""
    if not isinstance(prefix, str) or not re.fullmatch(_USER_PREFIX, prefix):
        raise ValueError(
            f"S3Bucket prefix {prefix!r} must be lower case letters, digits and hyphens,"
            " start with a letter or digit, end with '-', and be at most 31 characters"
        )
    return prefix


def _check_endpoint(url: Any) -> str | None:
    if url is None or url == "":
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(
            f"S3 endpoint {url!r} must be an http:// or https:// URL with a host and no"
            " credentials, query or fragment (e.g. http://127.0.0.1:9000)"
        )
    return str(url).rstrip("/")


def _check_region(region: Any) -> str:
    if region == "":
        return "us-east-1"
    if not isinstance(region, str) or not _REGION_RE.fullmatch(region):
        raise ValueError(
            f"{region!r} is not a region name: lower case letters, digits and hyphens"
            " (like 'eu-west-1')"
        )
    return region


def _profile_region() -> str | None:
    """The region of the AWS profile in use (``~/.aws/config``), when one is set there."""
    return boto3.session.Session().region_name


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None

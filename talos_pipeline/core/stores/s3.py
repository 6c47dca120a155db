"""The S3 store: any S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Ceph) through boto3.

`TALOS_STORE=s3://bucket[/prefix]`; credentials, region and endpoint come from the standard
`AWS_*` variables (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3` for anything but AWS, e.g.
`https://<account>.r2.cloudflarestorage.com`, and `AWS_DEFAULT_REGION=auto` for R2) or an AWS
profile. Tuning knobs, rarely needed: `TALOS_S3_PART_SIZE` (MiB per multipart part, default 8,
at least 5), `TALOS_S3_CONCURRENCY` (parts in flight per upload, default 4) and
`TALOS_S3_UPLOAD` (`stream`, the default, or `spool`; see `s3_uploads.py`).

How each operation maps onto the S3 API:

* small objects (`put_bytes`): one PutObject with `Content-Type` and `x-amz-checksum-sha256`
  (the server rejects bytes that do not match). Skipped when the object already holds the same
  bytes: the stored SHA-256 checksum (HeadObject with checksum mode), else the MD5 ETag, decides.
* disks (`upload`): the bytes arrive once, from the download that hashes them, and the key
  carries their sha256, known only when the stream ends. They are cut into parts of exactly
  `part_size` bytes (R2 wants equal parts) and sent by a few threads as a multipart upload to a
  staging key `.staging/<unix time>-<uuid>` while the download goes on; at most `concurrency`
  parts wait or travel at a time, so memory stays bounded whatever the image size. `commit(key)`
  completes the upload and copies the staging object server-side (CopyObject, or parallel
  UploadPartCopy above 5 GiB) to its final key, asking the server for a full-object SHA-256:
  when the caller passes the sha256 it computed, a mismatch is an error and the copy is
  deleted. Then the staging object goes. An image smaller than one part never touches staging:
  it is one PutObject straight to its final key. When the final key already exists with the
  same size, nothing is copied (a path never changes content). `abort()` aborts the multipart
  upload and deletes the staging object. A run killed mid-upload leaves an unfinished multipart
  upload or a staging object: both are invisible to readers and `talos-pipeline prune` removes
  them after its grace period (a bucket lifecycle rule `AbortIncompleteMultipartUpload` is a good
  second net).
  `TALOS_S3_UPLOAD=spool` trades the server-side copy for a local temporary file: the download
  is written to an unlinked file in `$TMPDIR` (as large as the image), and `commit` uploads it
  in parallel parts straight to the final key. The download and the upload then no longer
  overlap, so it pays off only where a server-side copy is slow compared with the uplink (see
  `bench/s3_upload.py`, which measures both against boto3's `upload_file`).
* reads: HeadObject for `stat`, streaming GetObject (with `Range` for a slice) for `iter_range`,
  read in chunks so memory stays constant.
* compare-and-swap (`put_if`, used for the catalog): PutObject with `If-Match: <etag>`, or
  `If-None-Match: *` when the object must not exist yet; a 412 (or 409 from a concurrent
  conditional write) means another writer got there first.
* `check_ready`: one HeadBucket with a short connect timeout and few retries, so a missing
  bucket, refused credentials or an unreachable endpoint is a clear `ConfigError` naming the
  bucket and the endpoint before any work starts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..errors import ConfigError, StoreError
from ..media import content_type_for
from ..settings import S3UploadMode
from .base import CHUNK, ObjectInfo, ObjectMissing, Store, Temporary, Upload, check_key
from .s3_uploads import STAGING, S3SpoolUpload, S3StreamUpload

if TYPE_CHECKING:  # the boto3-stubs of the dev extra; at run time the client is built by boto3
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, GetObjectOutputTypeDef, PutObjectOutputTypeDef

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
DEFAULT_CONCURRENCY = 4
COPY_OBJECT_LIMIT = 5 * 1024 * MIB  # CopyObject's limit; above it the copy is multipart
COPY_PART_SIZE = 512 * MIB
UPLOAD_MARK = "#upload="

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_CREDENTIAL_CODES = {
    "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "InvalidClientTokenId", "UnrecognizedClientException",
}  # fmt: skip

# Client settings: short connect timeouts so a dead endpoint is noticed quickly; the probe used
# by `check_ready` gives up after two attempts.
_IO_CONFIG = Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 5})
_PROBE_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
_ENV_KEYS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)  # fmt: skip
_clients: dict[tuple[str, int, tuple[str | None, ...]], S3Client] = {}
_clients_lock = threading.Lock()


def _client(kind: str, pool: int = 10) -> S3Client:
    """One boto3 client per settings and process (creating one costs tens of milliseconds)."""
    env = tuple(os.environ.get(name) for name in _ENV_KEYS)
    key = (kind, pool, env)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            settings = _PROBE_CONFIG if kind == "probe" else _IO_CONFIG
            config = settings.merge(Config(max_pool_connections=pool, user_agent_extra="talos-pipeline"))
            region = os.environ.get("AWS_REGION") or None
            client = boto3.session.Session().client("s3", region_name=region, config=config)
            _clients[key] = client
        return client


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _GetOptions(TypedDict, total=False):
    Range: str


class _PutConditions(TypedDict, total=False):
    IfMatch: str
    IfNoneMatch: str


class _RangeNotSatisfiable(Exception):
    """GetObject answered 416: the range starts past the end of the object."""


class S3Store(Store):
    list_page_size = 1000

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        part_size_mib: int = DEFAULT_PART_SIZE // MIB,
        concurrency: int = DEFAULT_CONCURRENCY,
        upload_mode: S3UploadMode = S3UploadMode.STREAM,
        copy_limit: int = COPY_OBJECT_LIMIT,
        copy_part_size: int = COPY_PART_SIZE,
        part_size: int | None = None,
    ) -> None:
        """`part_size` (bytes) overrides `part_size_mib` (tests use parts below S3's minimum on moto)."""
        if not _BUCKET.match(bucket or "") or ".." in bucket:
            raise ConfigError(
                f"TALOS_STORE=s3://{bucket}: {bucket!r} is not a valid bucket name "
                "(3-63 lowercase letters, digits, '.' or '-')"
            )
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StoreError:
                raise ConfigError(
                    f"TALOS_STORE=s3://{bucket}/{prefix}: {prefix!r} is not a usable key prefix"
                ) from None
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size or part_size_mib * MIB
        self.concurrency = concurrency
        if part_size is None and self.part_size < MIN_PART_SIZE:
            raise ConfigError(f"TALOS_S3_PART_SIZE={part_size_mib}: S3 needs parts of at least 5 MiB")
        if self.concurrency < 1:
            raise ConfigError(f"TALOS_S3_CONCURRENCY={self.concurrency}: needs at least 1")
        self.upload_mode = S3UploadMode(upload_mode)
        self.copy_limit = copy_limit
        self.copy_part_size = copy_part_size
        self.s3 = _client("io", pool=max(10, 2 * self.concurrency + 4))

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3Store:
        """`s3://bucket[/prefix]`, as in `TALOS_STORE`."""
        if not url.startswith("s3://"):
            raise ConfigError(f"TALOS_STORE={url!r}: expected s3://bucket[/prefix]")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"TALOS_STORE={url!r}: no bucket name; expected s3://bucket[/prefix]")
        return cls(bucket, prefix, **kwargs)

    # -- naming -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def endpoint(self) -> str:
        return self.s3.meta.endpoint_url

    def describe(self) -> str:
        return f"{self.url} (endpoint {self.endpoint})"

    def raw_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def failure(self, action: str, key: str, exc: BaseException) -> StoreError | ConfigError:
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket":
                detail = f"the bucket {self.bucket!r} does not exist"
            elif code in _CREDENTIAL_CODES:
                detail = f"access refused ({code}): check the AWS credentials and their permissions on the bucket"
            else:
                detail = f"{code or status}: {exc.response.get('Error', {}).get('Message', '') or exc}"
        elif isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ConfigError(
                f"{self.url}: no usable AWS credentials ({exc}); "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return StoreError(f"S3 {action} of {key} in {self.url} at {self.endpoint} failed: {detail}")

    # -- readiness ----------------------------------------------------------------------------
    def check_ready(self) -> None:
        probe = _client("probe")
        where = f"TALOS_STORE={self.url} (endpoint {probe.meta.endpoint_url})"
        try:
            probe.head_bucket(Bucket=self.bucket)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ConfigError(
                f"{where}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            ) from None
        except BotoConnectionError as exc:
            raise ConfigError(
                f"{where}: cannot reach the S3 endpoint ({type(exc).__name__}: {exc}); check AWS_ENDPOINT_URL "
                "and the network"
            ) from None
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            if status == 404 or code in ("NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"{where}: the bucket {self.bucket!r} does not exist; create it or fix TALOS_STORE"
                ) from None
            if status in (401, 403) or code in _CREDENTIAL_CODES:
                raise ConfigError(
                    f"{where}: the endpoint refused the credentials for bucket {self.bucket!r} "
                    f"(HTTP {status}{' ' + code if code and code != str(status) else ''}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that they may read and write the bucket"
                ) from None
            if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                region = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                hint = f"set AWS_DEFAULT_REGION={region}" if region else "set AWS_DEFAULT_REGION to the bucket's region"
                raise ConfigError(f"{where}: the bucket {self.bucket!r} is in another region; {hint}") from None
            raise ConfigError(f"{where}: the bucket cannot be used (HTTP {status} {code})") from None
        except BotoCoreError as exc:
            raise ConfigError(f"{where}: cannot use the S3 store ({type(exc).__name__}: {exc})") from None

    # -- reads --------------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.raw_key(key))
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in _MISSING_CODES:
                return None
            raise self.failure("HeadObject", key, exc) from None
        except BotoCoreError as exc:
            raise self.failure("HeadObject", key, exc) from None
        return ObjectInfo(size=head["ContentLength"], etag=head["ETag"], modified=head["LastModified"].timestamp())

    def _get(self, key: str, **options: Unpack[_GetOptions]) -> GetObjectOutputTypeDef | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.raw_key(key), **options)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES or _status(exc) == 404:
                return None
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                raise _RangeNotSatisfiable from None
            raise self.failure("GetObject", key, exc) from None
        except BotoCoreError as exc:
            raise self.failure("GetObject", key, exc) from None

    def _missing(self, key: str) -> ObjectMissing:
        return ObjectMissing(f"{key} is not in the store at {self.url}")

    def read_bytes(self, key: str) -> bytes:
        found = self.read_with_etag(key)
        if found is None:
            raise self._missing(key)
        return found[0]

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        response = self._get(key)
        if response is None:
            return None
        try:
            with response["Body"] as body:
                return body.read(), response["ETag"]
        except BotoCoreError as exc:  # the connection broke mid-body
            raise self.failure("GetObject", key, exc) from None

    def iter_range(self, key: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
        if end is not None and end <= start:
            self.raw_key(key)
            return
        options: _GetOptions = {}
        if start > 0 or end is not None:
            options["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = self._get(key, **options)
        except _RangeNotSatisfiable:  # the range starts past the end, like reading past EOF
            return
        if response is None:
            raise self._missing(key)
        body = response["Body"]
        try:
            while chunk := body.read(chunk_size):
                yield chunk
        except BotoCoreError as exc:
            raise self.failure("GetObject", key, exc) from None
        finally:
            body.close()

    def list_info(self, prefix: str) -> dict[str, ObjectInfo]:
        """Paginated ListObjectsV2; hidden keys (a path segment starting with '.') are left out."""
        infos = {}
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                for entry in page.get("Contents", ()):
                    key = entry["Key"][len(self.prefix) :]
                    if not key or any(part.startswith(".") for part in key.split("/")):
                        continue
                    infos[key] = ObjectInfo(entry["Size"], entry["ETag"], entry["LastModified"].timestamp())
        except (ClientError, BotoCoreError) as exc:
            raise self.failure("ListObjectsV2", prefix or "/", exc) from None
        return dict(sorted(infos.items()))

    def list_keys(self, prefix: str) -> list[str]:
        return list(self.list_info(prefix))

    # -- writes -------------------------------------------------------------------------------
    def _holds(self, key: str, data: bytes, sha_b64: str) -> bool:
        """Does the object already hold exactly `data`? (checksum, else MD5 ETag, else the bytes)"""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.raw_key(key), ChecksumMode="ENABLED")
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in _MISSING_CODES:
                return False
            raise self.failure("HeadObject", key, exc) from None
        except BotoCoreError as exc:
            raise self.failure("HeadObject", key, exc) from None
        if head["ContentLength"] != len(data):
            return False
        if head.get("ChecksumSHA256") and "-" not in head["ChecksumSHA256"]:
            return head["ChecksumSHA256"] == sha_b64
        etag = head["ETag"].strip('"')
        if re.fullmatch(r"[0-9a-f]{32}", etag):
            return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
        found = self.read_with_etag(key)
        return found is not None and found[0] == data

    def _put(self, key: str, data: bytes, **conditions: Unpack[_PutConditions]) -> PutObjectOutputTypeDef:
        return self.s3.put_object(
            Bucket=self.bucket,
            Key=self.raw_key(key),
            Body=data,
            ContentType=content_type_for(key),
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
            **conditions,
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        if self._holds(key, data, _b64(hashlib.sha256(data).digest())):
            return
        try:
            self._put(key, data)
        except (ClientError, BotoCoreError) as exc:
            raise self.failure("PutObject", key, exc) from None

    def put_if(self, key: str, data: bytes, etag: str | None) -> bool:
        conditions: _PutConditions = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._put(key, data, **conditions)
        except ClientError as exc:
            if _code(exc) in _CONFLICT_CODES or _status(exc) in (409, 412) or (etag and _status(exc) == 404):
                return False
            raise self.failure("conditional PutObject", key, exc) from None
        except BotoCoreError as exc:
            raise self.failure("conditional PutObject", key, exc) from None
        return True

    def upload(self) -> Upload:
        return S3SpoolUpload(self) if self.upload_mode is S3UploadMode.SPOOL else S3StreamUpload(self)

    def delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.raw_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self.failure("DeleteObject", key, exc) from None

    def delete_many(self, keys: list[str]) -> None:
        raw = [self.raw_key(k) for k in keys]
        for start in range(0, len(raw), 1000):
            batch = raw[start : start + 1000]
            try:
                answer = self.s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise self.failure("DeleteObjects", f"{len(batch)} keys", exc) from None
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"S3 DeleteObjects in {self.url}: {len(errors)} keys not deleted, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                )

    def copy_within(self, source: str, key: str, size: int, sha256: str | None) -> None:
        """Server-side copy of the raw staging key `source` to `key` (one request up to 5 GiB).

        The copy asks for a full-object SHA-256: stored with the object (and checked by boto3 on
        every whole-object GET), and compared with `sha256` when the caller gives it.
        """
        target = self.raw_key(key)
        if size <= self.copy_limit:
            answer = self.s3.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource={"Bucket": self.bucket, "Key": source},
                MetadataDirective="REPLACE",
                ContentType=content_type_for(key),
                ChecksumAlgorithm="SHA256",
            )
            stored = answer.get("CopyObjectResult", {}).get("ChecksumSHA256")
            if sha256 and stored and "-" not in stored and base64.b64decode(stored).hex() != sha256:
                self.s3.delete_object(Bucket=self.bucket, Key=target)
                raise StoreError(
                    f"{key}: the store computed sha256 {base64.b64decode(stored).hex()} for the uploaded bytes, "
                    f"the download hashed to {sha256}; nothing was published; retry"
                )
            return
        part_size = max(self.copy_part_size, -(-size // MAX_PARTS))
        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=target, ContentType=content_type_for(key))[
            "UploadId"
        ]
        try:

            def copy_part(number: int, start: int) -> CompletedPartTypeDef:
                last = min(start + part_size, size) - 1
                answer = self.s3.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{last}",
                )
                return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-copy") as pool:
                futures = [pool.submit(copy_part, i + 1, start) for i, start in enumerate(range(0, size, part_size))]
                parts = [f.result() for f in futures]
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload_id)
            except (ClientError, BotoCoreError):
                pass
            raise

    # -- leftovers of interrupted writes ------------------------------------------------------
    def _started(self, raw_key: str, reported: float) -> float:
        """Staging names start with the unix time of the upload; trust the later of the two."""
        name = raw_key.rsplit("/", 1)[-1]
        stamp = name.split("-", 1)[0]
        return max(reported, float(stamp)) if stamp.isdigit() else reported

    def temporaries(self) -> list[Temporary]:
        """Staging objects, and unfinished multipart uploads to staging or disk keys (age: their
        newest part; moto reports a fixed `Initiated`, staging names carry their start time)."""
        staging = f"{self.prefix}{STAGING}/"
        found = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=staging):
                for entry in page.get("Contents", ()):
                    found.append(
                        Temporary(
                            entry["Key"][len(self.prefix) :],
                            self._started(entry["Key"], entry["LastModified"].timestamp()),
                            entry["Size"],
                        )
                    )
            for uploads_page in self.s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            ):
                for upload in uploads_page.get("Uploads", ()):
                    if not upload["Key"][len(self.prefix) :].startswith((f"{STAGING}/", "images/")):
                        continue  # not one of ours: we upload in parts to staging and disk keys only
                    modified = self._started(upload["Key"], upload["Initiated"].timestamp())
                    size = 0
                    parts = self.s3.list_parts(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    for part in parts.get("Parts", ()):
                        modified = max(modified, part["LastModified"].timestamp())
                        size += part["Size"]
                    name = f"{upload['Key'][len(self.prefix) :]}{UPLOAD_MARK}{upload['UploadId']}"
                    found.append(Temporary(name, modified, size))
        except (ClientError, BotoCoreError) as exc:
            raise self.failure("listing of staging uploads", STAGING, exc) from None
        return sorted(found, key=lambda t: t.name)

    def remove_temporary(self, temporary: Temporary) -> None:
        name, _, upload_id = temporary.name.partition(UPLOAD_MARK)
        if not upload_id and not name.startswith(f"{STAGING}/"):
            raise StoreError(f"{temporary.name} is not a staging upload of {self.url}")
        try:
            if upload_id:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.prefix + name, UploadId=upload_id)
            else:
                self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as exc:
            if _code(exc) not in ("NoSuchUpload", "NoSuchKey") and _status(exc) != 404:
                raise self.failure("removal", temporary.name, exc) from None
        except BotoCoreError as exc:
            raise self.failure("removal", temporary.name, exc) from None

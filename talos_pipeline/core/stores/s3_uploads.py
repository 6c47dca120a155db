"""How a disk gets into an S3 store: the two upload strategies of `S3Store.upload`.

`S3StreamUpload` (the default) sends equal parts to a staging multipart upload while the
download goes on and copies the staging object server-side on `commit`; `S3SpoolUpload`
(`TALOS_S3_UPLOAD=spool`) writes an unlinked local file and uploads it on `commit`. Both are
described in `s3.py`'s module docstring.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import StoreError
from ..media import content_type_for
from .base import Upload, check_key

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from .s3 import S3Store

STAGING = ".staging"


class S3StreamUpload(Upload):
    """A disk on its way in: equal parts to a staging multipart upload, copied to its key on commit."""

    def __init__(self, store: S3Store) -> None:
        self._store = store
        self._s3 = store.s3
        self._staging = f"{store.prefix}{STAGING}/{int(time.time())}-{uuid.uuid4().hex}"
        self._part_size = store.part_size
        self._buffer = bytearray()
        self._size = 0
        self._upload_id: str | None = None
        self._futures: list[Future[CompletedPartTypeDef]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(store.concurrency)
        self._state = "open"  # → "committed" | "aborted"
        self._staged = False  # the staging object exists (multipart upload completed)

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise StoreError(f"upload to {self._store.url} is already {self._state}")
        self._raise_failed()
        self._size += len(chunk)
        view = memoryview(chunk)
        while view:
            room = self._part_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self._part_size:
                self._send()

    def _raise_failed(self) -> None:
        for future in self._futures:
            if future.done() and (error := future.exception()) is not None:
                raise self._store.failure("UploadPart", self._staging, error)

    def _send(self) -> None:
        data, self._buffer = self._buffer, bytearray()
        if self._upload_id is None or self._pool is None:
            try:
                self._upload_id = self._s3.create_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._staging,
                    ContentType="application/octet-stream",
                    ChecksumAlgorithm="SHA256",
                )["UploadId"]
            except (ClientError, BotoCoreError) as exc:
                raise self._store.failure("CreateMultipartUpload", self._staging, exc) from None
            self._pool = ThreadPoolExecutor(max_workers=self._store.concurrency, thread_name_prefix="s3-part")
        self._slots.acquire()  # at most `concurrency` parts in memory besides the one filling
        try:
            future = self._pool.submit(self._upload_part, self._upload_id, len(self._futures) + 1, data)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _upload_part(self, upload_id: str, number: int, data: bytearray) -> CompletedPartTypeDef:
        answer = self._s3.upload_part(
            Bucket=self._store.bucket,
            Key=self._staging,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,  # type: ignore[arg-type]  # botocore sends a bytearray as it is; bytes() would copy the part
            ChecksumAlgorithm="SHA256",
        )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
        if answer.get("ChecksumSHA256"):
            part["ChecksumSHA256"] = answer["ChecksumSHA256"]
        return part

    def commit(self, key: str, *, sha256: str | None = None) -> None:
        if self._state != "open":
            raise StoreError(f"upload to {self._store.url} is already {self._state}")
        check_key(key)
        try:
            if self._upload_id is None:  # smaller than one part: one PutObject, no staging
                data, self._buffer = bytes(self._buffer), bytearray()
                if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                    raise StoreError(f"{key}: the bytes written do not hash to {sha256}")
                self._store.put_bytes(key, data)
                self._state = "committed"
                return
            if self._buffer:
                self._send()
            wait(self._futures)
            self._raise_failed()
            parts = [f.result() for f in self._futures]
            existing = self._store.stat(key)
            if existing is not None and existing.size == self._size:
                self.abort()  # the same content is already there: a path never changes content
                return
            try:
                self._s3.complete_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._staging,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
                self._staged = True
                self._store.copy_within(self._staging, key, self._size, sha256)
            except (ClientError, BotoCoreError) as exc:
                raise self._store.failure("publication (complete + copy)", key, exc) from None
            self._state = "committed"
            self._cleanup()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._state == "aborted":
            return
        committed = self._state == "committed"
        self._state = "aborted"
        self._buffer = bytearray()
        if committed:
            return
        for future in self._futures:
            future.cancel()
        wait(self._futures)
        self._cleanup()

    def _cleanup(self) -> None:
        """Remove the staging multipart upload or object; best effort (prune collects the rest)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        try:
            if self._upload_id is not None and not self._staged:
                self._s3.abort_multipart_upload(Bucket=self._store.bucket, Key=self._staging, UploadId=self._upload_id)
            if self._staged:
                self._s3.delete_object(Bucket=self._store.bucket, Key=self._staging)
        except (ClientError, BotoCoreError):
            pass
        self._upload_id = None
        self._staged = False


class S3SpoolUpload(Upload):
    """`TALOS_S3_UPLOAD=spool`: an unlinked local file, then parallel parts straight to the key."""

    def __init__(self, store: S3Store) -> None:
        self._store = store
        self._s3 = store.s3
        # gone with the process; the upload owns it until commit or abort closes it
        self._file = tempfile.TemporaryFile(prefix="talos-upload-")  # noqa: SIM115
        self._size = 0
        self._state = "open"
        self._upload_id: str | None = None
        self._target: str | None = None

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise StoreError(f"upload to {self._store.url} is already {self._state}")
        self._file.write(chunk)
        self._size += len(chunk)

    def commit(self, key: str, *, sha256: str | None = None) -> None:
        if self._state != "open":
            raise StoreError(f"upload to {self._store.url} is already {self._state}")
        check_key(key)
        try:
            self._file.flush()
            existing = self._store.stat(key)
            if existing is not None and existing.size == self._size:
                self.abort()
                return
            if self._size <= self._store.part_size:
                data = os.pread(self._file.fileno(), self._size, 0)
                if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                    raise StoreError(f"{key}: the bytes written do not hash to {sha256}")
                self._store.put_bytes(key, data)
            else:
                self._multipart(key)
            self._state = "committed"
            self._file.close()
        except BaseException:
            self.abort()
            raise

    def _multipart(self, key: str) -> None:
        store, fd, part_size = self._store, self._file.fileno(), self._store.part_size
        self._target = target = store.raw_key(key)
        try:
            self._upload_id = self._s3.create_multipart_upload(
                Bucket=store.bucket, Key=target, ContentType=content_type_for(key), ChecksumAlgorithm="SHA256"
            )["UploadId"]
            upload_id = self._upload_id

            def upload_part(number: int, offset: int) -> CompletedPartTypeDef:
                answer = self._s3.upload_part(
                    Bucket=store.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=os.pread(fd, part_size, offset),
                    ChecksumAlgorithm="SHA256",
                )
                part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
                if answer.get("ChecksumSHA256"):
                    part["ChecksumSHA256"] = answer["ChecksumSHA256"]
                return part

            pool = ThreadPoolExecutor(max_workers=store.concurrency, thread_name_prefix="s3-part")
            try:
                futures = [
                    pool.submit(upload_part, i + 1, offset) for i, offset in enumerate(range(0, self._size, part_size))
                ]
                parts = [f.result() for f in futures]
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            self._s3.complete_multipart_upload(
                Bucket=store.bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            self._upload_id = None
        except (ClientError, BotoCoreError) as exc:
            raise store.failure("multipart upload", key, exc) from None

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._file.close()
        if self._upload_id is not None and self._target is not None:
            try:
                self._s3.abort_multipart_upload(Bucket=self._store.bucket, Key=self._target, UploadId=self._upload_id)
            except (ClientError, BotoCoreError):
                pass
            self._upload_id = None

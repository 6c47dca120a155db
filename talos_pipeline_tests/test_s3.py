"""S3Store over real HTTP: moto's server on 127.0.0.1 (or TALOS_TEST_S3_URL, see s3_fixtures.py).

Streaming reads with ranges, multipart uploads of several parts through staging, aborts that
leave nothing behind, idempotent small writes with content types and checksums, conditional
writes, and configuration mistakes reported before any work.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import uuid
from contextlib import contextmanager

import pytest

from talos_pipeline.cli import main
from talos_pipeline.core.errors import ConfigError, StoreError
from talos_pipeline.core.stores import ObjectMissing, open_store
from talos_pipeline.core.stores.s3 import MIB, S3Store

from .s3_fixtures import free_port

PART = 5 * MIB  # the smallest part S3 accepts


def _bytes(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible test bytes, fast."""
    block = hashlib.sha512(str(seed).encode()).digest() * 2048  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def store(s3_store_url) -> S3Store:
    store = open_store(s3_store_url)
    store.check_ready()
    return store


def _small_parts(store: S3Store, **kwargs) -> S3Store:
    return S3Store(store.bucket, store.prefix, part_size=PART, concurrency=2, **kwargs)


@contextmanager
def count_calls(store: S3Store, *operations: str):
    """Count the S3 requests this client makes, by operation name."""
    counts = dict.fromkeys(operations, 0)

    def hook(event_name, **_):
        counts[event_name.rsplit(".", 1)[-1]] += 1

    for operation in operations:
        store.s3.meta.events.register(f"before-call.s3.{operation}", hook)
    try:
        yield counts
    finally:
        for operation in operations:
            store.s3.meta.events.unregister(f"before-call.s3.{operation}", hook)


def _head(store: S3Store, key: str) -> dict:
    return store.s3.head_object(Bucket=store.bucket, Key=store.prefix + key, ChecksumMode="ENABLED")


def _multipart_uploads(store: S3Store) -> list:
    return store.s3.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])


def _all_objects(store: S3Store) -> list[str]:
    answer = store.s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return [o["Key"][len(store.prefix) :] for o in answer.get("Contents", [])]


def _upload(store: S3Store, data: bytes, chunk: int = MIB):
    upload = store.upload()
    for start in range(0, len(data), chunk):
        upload.write(data[start : start + chunk])
    return upload


# -- locations and configuration -----------------------------------------------------------
def test_urls_name_bucket_and_prefix(s3_env):
    store = S3Store.from_url("s3://my-bucket/some/prefix/")
    assert (store.bucket, store.prefix, store.url) == ("my-bucket", "some/prefix/", "s3://my-bucket/some/prefix")
    assert store.describe().startswith("s3://my-bucket/some/prefix (endpoint ")
    assert S3Store.from_url("s3://my-bucket").prefix == ""


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("s3://", "no bucket name"),
        ("s3://Bad_Bucket", "not a valid bucket name"),
        ("s3://ok-bucket/../x", "not a usable key prefix"),
    ],
)
def test_bad_urls_are_config_errors(s3_env, url, fragment):
    with pytest.raises(ConfigError, match=fragment):
        open_store(url)


def test_bad_tuning_is_a_config_error(s3_env, monkeypatch):
    monkeypatch.setenv("TALOS_S3_PART_SIZE", "1")
    with pytest.raises(ConfigError, match="at least 5 MiB"):
        open_store("s3://ok-bucket")
    monkeypatch.setenv("TALOS_S3_PART_SIZE", "8")
    monkeypatch.setenv("TALOS_S3_UPLOAD", "carrier-pigeon")
    with pytest.raises(ConfigError, match="TALOS_S3_UPLOAD"):
        open_store("s3://ok-bucket")


def test_missing_bucket_fails_early_naming_bucket_and_endpoint(s3_env):
    bucket = f"talos-missing-{uuid.uuid4().hex[:16]}"
    store = S3Store.from_url(f"s3://{bucket}")
    with pytest.raises(ConfigError) as caught:
        store.check_ready()
    assert bucket in str(caught.value) and "does not exist" in str(caught.value)
    assert store.endpoint in str(caught.value)


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = S3Store.from_url("s3://some-bucket")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach the S3 endpoint"):
        store.check_ready()
    assert time.monotonic() - started < 10


def test_refused_credentials_fail_early(s3_server, s3_env, monkeypatch, request):
    if s3_server.external_url:  # a real service: wrong keys for the real endpoint
        bucket = s3_server.external_url[len("s3://") :].split("/")[0]
    else:  # moto with authentication on (it knows no keys at all)
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("moto_with_auth"))
        bucket = "some-bucket"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    with pytest.raises(ConfigError, match="refused the credentials") as caught:
        S3Store.from_url(f"s3://{bucket}").check_ready()
    assert bucket in str(caught.value)


# -- small objects ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,content_type",
    [
        ("streams/v1/images.json", "application/json"),
        ("images/v1.12.0/amd64/nocloud/incus-ab.tar.xz", "application/x-xz"),
        ("images/v1.12.0/amd64/nocloud/disk-ab.qcow2.sigstore.json", "application/vnd.dev.sigstore.bundle.v0.3+json"),
        ("state/v1.12.0/amd64/release.bin", "application/octet-stream"),
    ],
)
def test_put_bytes_sets_content_type_and_sha256_checksum(store, key, content_type):
    data = b'{"hello": "world"}\n'
    store.put_bytes(key, data)
    head = _head(store, key)
    assert head["ContentType"] == content_type
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert store.read_bytes(key) == data
    info = store.stat(key)
    assert info.size == len(data) and info.etag == head["ETag"] and info.modified > 0


def test_put_bytes_is_idempotent(store):
    with count_calls(store, "PutObject") as calls:
        store.put_bytes("records/v1.12.0/amd64/nocloud.json", b"one")
        etag = store.stat("records/v1.12.0/amd64/nocloud.json").etag
        store.put_bytes("records/v1.12.0/amd64/nocloud.json", b"one")
        assert calls["PutObject"] == 1, "identical bytes are not written again"
        assert store.stat("records/v1.12.0/amd64/nocloud.json").etag == etag
        store.put_bytes("records/v1.12.0/amd64/nocloud.json", b"two")
        assert calls["PutObject"] == 2
    assert store.read_bytes("records/v1.12.0/amd64/nocloud.json") == b"two"


def test_missing_objects(store):
    assert store.stat("records/nope.json") is None
    assert store.read_with_etag("records/nope.json") is None
    with pytest.raises(ObjectMissing, match=re.escape("records/nope.json")):
        store.read_bytes("records/nope.json")
    with pytest.raises(ObjectMissing):
        list(store.iter_range("records/nope.json"))
    with pytest.raises(StoreError, match="invalid store key"):
        store.stat("../escape")


def test_conditional_writes(store):
    key = "streams/v1/index.json"
    assert store.put_if(key, b"first", None)
    assert not store.put_if(key, b"again", None), "If-None-Match: * refuses an existing object"
    data, etag = store.read_with_etag(key)
    assert data == b"first"
    assert store.put_if(key, b"second", etag)
    assert not store.put_if(key, b"stale", etag), "If-Match refuses a changed object"
    assert not store.put_if("streams/v1/other.json", b"x", etag), "If-Match on a missing object"
    assert store.read_bytes(key) == b"second"


def test_listing_is_paginated_sorted_and_hides_staging(store):
    keys = [f"records/v1.{i}.0/amd64/nocloud.json" for i in range(7)]
    for key in keys:
        store.put_bytes(key, key.encode())
    store.s3.put_object(Bucket=store.bucket, Key=store.prefix + ".staging/123-abc", Body=b"x")
    store.list_page_size = 2
    assert store.list_keys("records/") == sorted(keys)
    assert set(store.list_info("")) == set(keys)
    store.delete_many(keys[:5])
    store.delete(keys[5])
    store.delete(keys[5])  # deleting twice is fine
    assert store.list_keys("") == keys[6:]


# -- streaming reads -------------------------------------------------------------------------
def test_ranges_stream_in_bounded_chunks(store):
    data = _bytes(3 * MIB + 123)
    store.put_bytes("images/x/disk-a.qcow2", data)
    assert b"".join(store.iter_range("images/x/disk-a.qcow2")) == data
    chunks = list(store.iter_range("images/x/disk-a.qcow2", 10, 2 * MIB + 7, chunk_size=64 * 1024))
    assert b"".join(chunks) == data[10 : 2 * MIB + 7]
    assert max(len(c) for c in chunks) <= 64 * 1024
    assert b"".join(store.iter_range("images/x/disk-a.qcow2", len(data) - 5)) == data[-5:]
    assert b"".join(store.iter_range("images/x/disk-a.qcow2", 100, len(data) + 1000)) == data[100:]
    assert list(store.iter_range("images/x/disk-a.qcow2", len(data) + 10)) == []
    assert list(store.iter_range("images/x/disk-a.qcow2", 50, 50)) == []


def test_abandoned_range_reads_release_their_connection(store):
    store.put_bytes("images/x/disk-b.qcow2", _bytes(2 * MIB))
    for _ in range(30):  # more than the connection pool holds
        stream = store.iter_range("images/x/disk-b.qcow2", chunk_size=1024)
        next(stream)
        stream.close()
    assert store.read_bytes("images/x/disk-b.qcow2") == _bytes(2 * MIB)


# -- large uploads ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["stream", "spool"])
def test_multipart_upload_of_several_parts(store, mode):
    big = _small_parts(store, upload_mode=mode)
    data = _bytes(2 * PART + 3 * MIB + 17)
    sha = hashlib.sha256(data).hexdigest()
    key = f"images/v1.12.0/amd64/nocloud/disk-{sha}.qcow2"
    with count_calls(big, "UploadPart", "CopyObject", "CompleteMultipartUpload") as calls:
        _upload(big, data).commit(key, sha256=sha)
    assert calls["UploadPart"] == 3, "two full parts and the rest"
    assert calls["CopyObject"] == (1 if mode == "stream" else 0)
    assert b"".join(big.iter_range(key)) == data
    head = _head(big, key)
    assert head["ContentType"] == "application/x-qemu-disk" and head["ContentLength"] == len(data)
    if mode == "stream":  # the server computed the full-object SHA-256 on the copy
        assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha)).decode()
    assert _multipart_uploads(big) == []
    assert _all_objects(big) == [key], "no staging object left"


def test_stream_upload_keeps_parts_equal_whatever_the_chunks(store):
    big = _small_parts(store)
    data = _bytes(2 * PART + 1000)
    sizes = []

    def record(params, **_):
        sizes.append(len(params["body"]))

    big.s3.meta.events.register("before-call.s3.UploadPart", record)
    try:
        _upload(big, data, chunk=777_777).commit("images/x/disk-eq.qcow2")
    finally:
        big.s3.meta.events.unregister("before-call.s3.UploadPart", record)
    assert sorted(sizes, reverse=True) == [PART, PART, 1000]
    assert big.read_bytes("images/x/disk-eq.qcow2") == data


def test_small_upload_is_one_put_straight_to_its_key(store):
    with count_calls(store, "CreateMultipartUpload", "PutObject", "CopyObject") as calls:
        _upload(store, _bytes(3 * MIB)).commit("images/x/disk-small.qcow2")
    assert calls == {"CreateMultipartUpload": 0, "PutObject": 1, "CopyObject": 0}
    assert store.read_bytes("images/x/disk-small.qcow2") == _bytes(3 * MIB)


@pytest.mark.parametrize("mode", ["stream", "spool"])
def test_abort_leaves_no_multipart_upload_and_no_staging_object(store, mode):
    big = _small_parts(store, upload_mode=mode)
    upload = _upload(big, _bytes(2 * PART + MIB))
    if mode == "stream":
        assert big.temporaries(), "parts are on their way while the download goes on"
    upload.abort()
    upload.abort()  # twice is fine
    assert _multipart_uploads(big) == []
    assert _all_objects(big) == []
    assert big.temporaries() == []
    with pytest.raises(StoreError, match="already aborted"):
        upload.write(b"more")


def test_failure_inside_the_with_block_aborts(store):
    big = _small_parts(store)
    with pytest.raises(RuntimeError), big.upload() as upload:
        upload.write(_bytes(2 * PART))
        raise RuntimeError("download broke")
    assert _multipart_uploads(big) == [] and _all_objects(big) == []


def test_commit_refuses_bytes_that_do_not_match_their_hash(store):
    big = _small_parts(store)
    data = _bytes(PART + MIB)
    with pytest.raises(StoreError, match="sha256"):
        _upload(big, data).commit("images/x/disk-bad.qcow2", sha256="0" * 64)
    assert _all_objects(big) == [] and _multipart_uploads(big) == []


def test_existing_key_of_the_same_size_is_not_copied_again(store):
    big = _small_parts(store)
    data = _bytes(PART + MIB)
    _upload(big, data).commit("images/x/disk-same.qcow2")
    etag = big.stat("images/x/disk-same.qcow2").etag
    with count_calls(big, "CopyObject", "CompleteMultipartUpload") as calls:
        _upload(big, data).commit("images/x/disk-same.qcow2")
    assert calls == {"CopyObject": 0, "CompleteMultipartUpload": 0}
    assert big.stat("images/x/disk-same.qcow2").etag == etag
    assert _all_objects(big) == ["images/x/disk-same.qcow2"] and _multipart_uploads(big) == []


def test_copies_above_the_copy_object_limit_go_in_parts(store):
    big = _small_parts(store, copy_limit=PART, copy_part_size=PART)
    data = _bytes(PART + 2 * MIB)
    with count_calls(big, "CopyObject", "UploadPartCopy") as calls:
        _upload(big, data).commit("images/x/disk-huge.qcow2")
    assert calls == {"CopyObject": 0, "UploadPartCopy": 2}
    assert big.read_bytes("images/x/disk-huge.qcow2") == data
    assert _all_objects(big) == ["images/x/disk-huge.qcow2"] and _multipart_uploads(big) == []


def test_interrupted_uploads_are_listed_and_removable(store):
    big = _small_parts(store)
    upload = _upload(big, _bytes(PART + MIB))
    upload._pool.shutdown(wait=True)  # the parts are up: now "the process dies"
    store.s3.put_object(Bucket=store.bucket, Key=store.prefix + f".staging/{int(time.time())}-dead", Body=b"x")
    leftovers = big.temporaries()
    assert len(leftovers) == 2
    assert all(time.time() - t.modified < 120 for t in leftovers), "ages count from the upload's start"
    for temporary in leftovers:
        big.remove_temporary(temporary)
    assert big.temporaries() == [] and _multipart_uploads(big) == []


# -- the CLI refuses bad S3 settings before any work -----------------------------------------
@pytest.mark.parametrize("problem", ["missing bucket", "unreachable endpoint", "refused credentials"])
def test_publish_with_bad_s3_settings_exits_2_before_any_download(
    simulator, s3_server, s3_store_url, monkeypatch, capsys, problem, request
):
    for name in list(os.environ):
        if name.startswith(("TALOS_", "DAGSTER_HOME")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TALOS_RELEASES_URL", simulator.releases_url)
    monkeypatch.setenv("TALOS_FACTORY_URL", simulator.factory_url)
    bucket = s3_store_url[len("s3://") :].split("/")[0]
    if problem == "missing bucket":
        bucket = f"talos-missing-{uuid.uuid4().hex[:16]}"
    elif problem == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    else:
        if not s3_server.external_url:
            monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("moto_with_auth"))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    monkeypatch.setenv("TALOS_STORE", f"s3://{bucket}")
    assert main(["publish", "v1.12.0", "--arch", "amd64"]) == 2
    err = capsys.readouterr().err
    assert f"TALOS_STORE=s3://{bucket}" in err and "endpoint" in err and "Traceback" not in err
    assert simulator.total_downloads() == 0

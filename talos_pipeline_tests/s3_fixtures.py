"""S3 for the tests: moto's standalone server over real HTTP on 127.0.0.1, or a real bucket.

By default a session-wide `ThreadedMotoServer` listens on a free loopback port and every test
that asks for `s3_store_url` gets a fresh bucket (emptied and removed afterwards). boto3 talks
to it over HTTP exactly as to AWS: `AWS_ENDPOINT_URL` points at it, with the dummy credentials
`testing`/`testing`.

The same tests run against a real S3-compatible service (MinIO, R2, AWS) when these are set:

    TALOS_TEST_S3_URL=s3://existing-bucket/some/prefix
    AWS_ENDPOINT_URL=https://<account>.r2.cloudflarestorage.com   # or http://127.0.0.1:9000 (MinIO); unset for AWS
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_DEFAULT_REGION=auto   # (us-east-1 for MinIO)

Each test then gets a fresh prefix `<prefix>/t-<random>/` in that bucket, removed afterwards
(objects and unfinished multipart uploads). The bucket needs no other setup; the credentials
need list/read/write/delete on it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import boto3
import pytest
from botocore.config import Config

MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLEARED_AWS = (
    "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3TestServer:
    """Where test buckets come from; `env` is what a client (or a subprocess) needs."""

    env: dict[str, str]
    external_url: str | None = None
    _locations: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str | None:
        return self.env.get("AWS_ENDPOINT_URL")

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=self.env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=self.env.get("AWS_SESSION_TOKEN"),
            region_name=self.env.get("AWS_REGION") or self.env.get("AWS_DEFAULT_REGION"),
            config=Config(retries={"max_attempts": 2}),
        )

    def new_location(self) -> str:
        """A fresh, empty s3://bucket[/prefix] for one test."""
        if self.external_url:
            base = self.external_url.rstrip("/")
            return f"{base}/t-{uuid.uuid4().hex[:12]}"
        bucket = f"talos-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return f"s3://{bucket}"

    def cleanup(self, location: str) -> None:
        bucket, _, prefix = location[len("s3://") :].partition("/")
        prefix = f"{prefix}/" if prefix else ""
        client = self.client()
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", ()):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        if not self.external_url:
            client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def s3_server():
    external = os.environ.get("TALOS_TEST_S3_URL")
    if external:
        if not external.startswith("s3://"):
            raise pytest.UsageError(f"TALOS_TEST_S3_URL={external!r}: expected s3://bucket[/prefix]")
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        yield S3TestServer(env=env, external_url=external)
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3TestServer(env=dict(MOTO_ENV, AWS_ENDPOINT_URL=f"http://{host}:{port}"))
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The AWS_* variables of the test S3 service, set in os.environ for this test (and its subprocesses)."""
    if not s3_server.external_url:
        for name in CLEARED_AWS:
            monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return dict(s3_server.env)


@pytest.fixture
def s3_store_url(s3_server, s3_env) -> str:
    """A fresh `s3://bucket[/prefix]` for this test (a new moto bucket, or a new prefix of TALOS_TEST_S3_URL)."""
    location = s3_server.new_location()
    yield location
    s3_server.cleanup(location)


@pytest.fixture(scope="session")
def moto_with_auth():
    """A second moto server, in a subprocess, that checks credentials (it knows none): every
    request is refused with 403, which is what wrong credentials look like to the client."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server (auth mode) did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

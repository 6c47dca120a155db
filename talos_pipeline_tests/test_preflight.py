"""Fail fast: `talos-pipeline publish` (a subprocess, as operators run it) checks what the end of
the run needs before it downloads anything: a bad signing key, a missing OIDC token, a store that
refuses writes, an extension a version lacks. Each fails with one message naming the value; the
factory sees no image request and nothing is published.

The simulator's cold builds take 30 s here, so a run that reached the factory's images would
show as a timeout rather than pass by luck.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from talos_pipeline.core.settings import Settings
from talos_pipeline.launch import Launcher
from talos_pipeline.simulator import UpstreamSimulator

from .s3_fixtures import free_port
from .test_schematics import GPU, MISSING, image_requests

STORE_KINDS = ["dir"]
CLI = [sys.executable, "-m", "talos_pipeline.cli"]
COLD_BUILD = 30.0
READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"], "Resource": "*"}],
}


@pytest.fixture
def simulator(qcow2_cache):
    """The conftest simulator, with cold builds longer than any of these runs may take."""
    with UpstreamSimulator(disk_size=1024 * 1024, cache_dir=qcow2_cache, first_byte_delay=COLD_BUILD) as sim:
        yield sim


def publish(*args: str, **env: str) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, seconds) of `talos-pipeline publish ARGS` with `env` added."""
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "publish", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=COLD_BUILD - 5
    )
    seconds = time.monotonic() - started
    print(f"publish {' '.join(args)} with {sorted(env)}: exit {done.returncode} in {seconds:.1f}s")
    return done.returncode, done.stdout + done.stderr, seconds


def assert_failed_before_any_download(simulator, store: Path | None, output: str, fragment: str) -> None:
    assert output.count(fragment) == 1, f"the message should appear exactly once:\n{output}"
    assert "Traceback" not in output, output
    assert image_requests(simulator) == [], "the factory was asked for an image"
    assert simulator.total_downloads() == 0
    if store is not None:
        assert not (store / "records").exists() and not (store / "streams").exists()


def test_a_bad_signing_key(pipeline_env, simulator, tmp_path):
    key = tmp_path / "signing.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    code, output, _ = publish("v1.12.0", "--arch", "amd64", TALOS_SIGNING="key", TALOS_SIGNING_KEY=str(key))
    assert code == 1, output
    assert_failed_before_any_download(
        simulator, pipeline_env.directory, output, f"cannot load the signing key from {key}"
    )


def test_a_missing_oidc_token(pipeline_env, simulator, fake_sigstore):
    """Keyless signing outside GitHub Actions (no ambient credentials): the trust root loads, the token is missing."""
    code, output, _ = publish(
        "v1.12.0",
        "--arch",
        "amd64",
        TALOS_SIGNING="sigstore",
        TALOS_SIGSTORE_TRUST_CONFIG=str(fake_sigstore.trust_config_path),
    )
    assert code == 1, output
    assert_failed_before_any_download(simulator, pipeline_env.directory, output, "no ambient OIDC identity token")


@pytest.fixture
def read_only_bucket(tmp_path):
    """A bucket on a moto server that enforces IAM, and credentials that may read it but not write:
    `HEAD` of the bucket (what `check_ready` does) succeeds, a write does not."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4"),  # the setup below, then IAM is enforced
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        admin = {"endpoint_url": url, "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client("s3", region_name="us-east-1", **admin).create_bucket(Bucket="talos-read-only")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        iam = boto3.client("iam", region_name="us-east-1", **admin)
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(READ_ONLY_POLICY))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield {
            "TALOS_STORE": "s3://talos-read-only",
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_a_store_that_refuses_writes(pipeline_env, simulator, read_only_bucket):
    code, output, _ = publish("v1.12.0", "--arch", "amd64", **read_only_bucket)
    assert code == 2, output
    assert_failed_before_any_download(simulator, None, output, "TALOS_STORE=s3://talos-read-only")
    assert "a test write failed" in output and "AccessDenied" in output
    client = boto3.client(
        "s3",
        endpoint_url=read_only_bucket["AWS_ENDPOINT_URL"],
        aws_access_key_id=read_only_bucket["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=read_only_bucket["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    assert client.list_objects_v2(Bucket="talos-read-only").get("KeyCount") == 0


def test_an_extension_the_factory_lacks_for_that_version(pipeline_env, simulator, tmp_path):
    schematic = tmp_path / "gpu.yaml"
    schematic.write_text(GPU)
    code, output, _ = publish("v1.11.6", "--arch", "amd64", TALOS_VARIANTS=f"nocloud,gpu=nocloud:@{schematic}")
    assert code == 2, output
    assert_failed_before_any_download(simulator, pipeline_env.directory, output, f'"{MISSING}"')
    assert "Talos v1.11.6" in output


def test_a_run_launched_without_the_cli_checks_signing_before_the_disk(pipeline_env, simulator, tmp_path, monkeypatch):
    """Sensor and UI runs have no CLI in front: `talos_release` opens the signer itself."""
    key = tmp_path / "signing.pem"
    key.write_text("not a key\n")
    monkeypatch.setenv("TALOS_SIGNING", "key")
    monkeypatch.setenv("TALOS_SIGNING_KEY", str(key))
    error = Launcher(Settings.from_env()).publish_partition("v1.12.0", "amd64", ["nocloud"])
    assert error is not None and f"cannot load the signing key from {key}" in error
    assert image_requests(simulator) == [] and not pipeline_env.keys("records/")

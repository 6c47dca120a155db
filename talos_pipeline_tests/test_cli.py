"""`talos-pipeline` as users run it: a subprocess per command, exit codes that mean one thing.

0 success; 2 bad input or configuration, before anything is done; 1 a failure of upstream, the
store, signing, verification or a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from talos_pipeline.cli import COMMANDS

STORE_KINDS = ["dir"]
CLI = [sys.executable, "-m", "talos_pipeline.cli"]


def talos_pipeline(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def test_version_and_help():
    shown = talos_pipeline("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"talos-pipeline {version('talos-pipeline')}"
    listed = talos_pipeline("--help")
    assert listed.returncode == 0
    for command in COMMANDS:
        assert f"    {command}" in listed.stdout
        helped = talos_pipeline(command, "--help")
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: talos-pipeline {command}"), helped.stderr


def test_serve_has_the_options_of_python_m_serve_and_loads_no_dagster():
    ours = talos_pipeline("serve", "--help").stdout
    theirs = subprocess.run([sys.executable, "-m", "serve", "--help"], capture_output=True, text=True).stdout
    options = ("--host", "--port", "--tls-cert", "--tls-key", "--workers", "--log-level")
    for option in options:
        assert option in ours and option in theirs
    assert ours.split("options:")[1] == theirs.split("options:")[1], "same options, same help texts"
    probe = (
        "import sys\nfrom talos_pipeline.cli import build_parser\nbuild_parser(['serve'])\n"
        "print(sorted(m for m in ('dagster', 'sigstore', 'pandas') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", "serve workers would carry Dagster's memory for nothing"


@pytest.mark.parametrize(
    "args,env,fragment",
    [
        (["bogus"], {}, "invalid choice: 'bogus'"),
        (["publish", "--arch"], {}, "expected one argument"),
        (["publish"], {}, "name at least one Talos version"),
        (["publish", "v1.12"], {}, "'v1.12' is not a Talos release tag"),
        (["publish", "v1.12.0", "--arch", "riscv64"], {}, "unknown architecture 'riscv64'"),
        (["publish", "v1.12.0", "--variant", "gcp"], {}, "unknown variant 'gcp'"),
        (["publish", "v1.99.0"], {}, "does not offer Talos v1.99.0"),
        (["publish", "v1.12.0"], {"TALOS_SIGNING": "maybe"}, "TALOS_SIGNING='maybe' is not valid"),
        (["publish", "v1.12.0"], {"TALOS_SIGNING": "key"}, "TALOS_SIGNING=key needs TALOS_SIGNING_KEY"),
        (["publish", "v1.12.0"], {"TALOS_STORE": "ftp://x"}, "unsupported scheme"),
        (["verify", "--certificate-oidc-issuer", "https://x"], {}, "give both --certificate-identity-regexp"),
        (["prune", "--keep", "0"], {}, "--keep 0: keep at least 1 version"),
        (["serve", "--port", "70000"], {}, "--port 70000 is not a TCP port"),
        (["demo", "--disk-size", "lots"], {}, "invalid size 'lots'"),
    ],
)
def test_bad_input_or_configuration_exits_2(pipeline_env, args, env, fragment):
    result = talos_pipeline(*args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not pipeline_env.keys("records/")


def test_an_existing_key_is_not_overwritten(tmp_path):
    assert talos_pipeline("keygen", "--output", str(tmp_path / "k")).returncode == 0
    again = talos_pipeline("keygen", "--output", str(tmp_path / "k"))
    assert again.returncode == 2 and "pass --force" in again.stderr
    assert talos_pipeline("keygen", "--output", str(tmp_path / "k"), "--force").returncode == 0


def test_failures_of_upstream_store_signing_and_verification_exit_1(pipeline_env, simulator, tmp_path):
    down = talos_pipeline("publish", "v1.12.0", env={"TALOS_FACTORY_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1 and "127.0.0.1:9" in down.stderr and "Traceback" not in down.stderr

    unpublished = talos_pipeline("verify")
    assert unpublished.returncode == 1 and "nothing is published there yet" in unpublished.stderr

    bad_key = tmp_path / "bad.key"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    unsigned = talos_pipeline(
        "publish", "v1.12.0", "--arch", "amd64", "--variant", "nocloud",
        env={"TALOS_SIGNING": "key", "TALOS_SIGNING_KEY": str(bad_key)},
    )  # fmt: skip
    assert unsigned.returncode == 1 and "cannot load the signing key" in unsigned.stderr  # before any partition
    assert not pipeline_env.keys("records/")

    published = talos_pipeline("publish", "v1.12.0", "--arch", "amd64", "--variant", "nocloud")
    assert published.returncode == 0, published.stderr
    assert "catalog: 1 products" in published.stdout
    simulator.set_fault("/image/", "500")
    failed_run = talos_pipeline("publish", "v1.12.1", "--arch", "amd64", "--variant", "nocloud")
    assert failed_run.returncode == 1 and "FAILED v1.12.1 amd64" in failed_run.stdout

    rebuilt = talos_pipeline("catalog")
    assert rebuilt.returncode == 0 and f"catalog: 1 products in {pipeline_env.location}" in rebuilt.stdout

    disk = next(Path(pipeline_env).glob("images/v1.12.0/amd64/nocloud/disk-*.qcow2"))
    disk.write_bytes(disk.read_bytes()[:-1] + b"\x01")
    tampered = talos_pipeline("verify")
    assert tampered.returncode == 1 and disk.name in tampered.stdout


def test_verify_notes_an_index_a_killed_rebuild_left_behind_and_fails_one_that_hides_every_product(pipeline_env):
    index = Path(pipeline_env) / "streams/v1/index.json"
    assert talos_pipeline("publish", "v1.12.0", "--arch", "amd64", "--variant", "nocloud").returncode == 0
    before = index.read_bytes()
    assert talos_pipeline("publish", "v1.12.0", "--arch", "arm64", "--variant", "nocloud").returncode == 0
    index.write_bytes(before)  # killed after images.json was written, before index.json

    lagging = talos_pipeline("verify")
    assert lagging.returncode == 0, lagging.stdout + lagging.stderr
    assert "note: streams/v1/index.json" in lagging.stdout and "does not name 1 product(s)" in lagging.stdout
    assert "arm64" in lagging.stdout and "`talos-pipeline catalog`" in lagging.stdout

    body = json.loads(before)
    body["index"]["images"]["products"] = []
    index.write_text(json.dumps(body))
    hidden = talos_pipeline("verify")
    assert hidden.returncode == 1 and "problem: streams/v1/index.json names no products" in hidden.stdout

    assert talos_pipeline("catalog").returncode == 0
    repaired = talos_pipeline("verify")
    assert repaired.returncode == 0 and "note:" not in repaired.stdout, repaired.stdout

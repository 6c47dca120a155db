"""The fault matrix: each upstream fault the simulator injects × publishing and serving (proxy mode).

Transient faults recover with correct output; persistent ones fail the affected partition only,
with a message naming the image and the URL; whatever happens, the published catalog is the
previous valid one or the new valid one (checked with `verify_store`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import requests

from serve import create_app, start_in_thread
from talos_pipeline.cli import main
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.launch import publish

pytestmark = pytest.mark.slow
STORE_KINDS = ["dir"]

# fault → (count for the transient case, whether even the persistent case must succeed)
FAULTS = {
    "500": (2, False),
    "503": (2, False),
    "truncate": (1, False),
    "reset": (1, False),
    "overlong": (1, True),
    "stall": (1, True),
    "slow_first_byte": (1, True),
    "redirect_chain": (1, True),
}


@pytest.fixture
def baseline(pipeline_env, simulator, monkeypatch):
    monkeypatch.setenv("TALOS_ARCHES", "amd64")
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    simulator.stall_seconds = simulator.slow_first_byte_seconds = 0.5
    assert publish(["v1.11.6"]).ok
    return pipeline_env


def _catalog(store) -> set[str]:
    return set(json.loads((store / "streams/v1/images.json").read_text())["products"])


def _assert_valid(store) -> None:
    report = verify_store(DirectoryStore(store), VerifyPolicy())
    assert report.ok, report.summary()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_transient_faults_recover_with_correct_output(baseline, simulator, fault):
    count, _ = FAULTS[fault]
    simulator.set_fault("/image/", fault, count=count)
    outcome = publish(["v1.12.0"])
    assert outcome.ok, outcome.failed
    assert _catalog(baseline) == {"talos:v1.11.6:amd64:nocloud", "talos:v1.12.0:amd64:nocloud"}
    _assert_valid(baseline)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_persistent_faults_fail_only_the_affected_partition(baseline, simulator, fault, capsys):
    _, always_fine = FAULTS[fault]
    before = (baseline / "streams/v1/images.json").read_bytes()
    simulator.set_fault("/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/v1.12.0/", fault)
    code = main(["publish", "v1.12.0", "v1.12.1"])
    out = capsys.readouterr().out
    if always_fine:
        assert code == 0, out
        assert _catalog(baseline) >= {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
    else:
        assert code == 1
        assert "FAILED v1.12.0 amd64" in out and "Talos v1.12.0 amd64 (nocloud)" in out and "/image/" in out
        assert "published Talos v1.12.1 amd64" in out, "the other partition is not affected"
        assert _catalog(baseline) == {"talos:v1.11.6:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
        assert (baseline / "streams/v1/images.json").read_bytes() != before
    _assert_valid(baseline)


@pytest.mark.parametrize("fault", ["403", "429"])
def test_github_rate_limits_fail_with_the_reset_time(baseline, simulator, fault, capsys):
    simulator.set_fault("/repos/", fault)
    assert main(["publish", "v1.12.0"]) == 1, "an upstream failure, not bad input"
    err = capsys.readouterr().err
    assert "rate limit" in err and "resets at" in err and "GITHUB_TOKEN" in err
    assert _catalog(baseline) == {"talos:v1.11.6:amd64:nocloud"}


DEAD_AFTER = 1.0


def _publish_fails_and_publishes_nothing(store, setting: str) -> str:
    """`talos-pipeline publish v1.12.0` with `setting`=DEAD_AFTER, as operators run it: it must fail
    that image, leave the catalog as it was and store nothing of it. Returns the output."""
    before = (store / "streams/v1/images.json").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "talos_pipeline.cli", "publish", "v1.12.0"],
        env={**os.environ, setting: str(DEAD_AFTER)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Talos v1.12.0 amd64 (nocloud)" in output and "Traceback" not in output
    assert (store / "streams/v1/images.json").read_bytes() == before
    assert list((store / "images").glob("v1.11.6/**/*.qcow2")), "the store layout changed: fix these globs"
    assert not list((store / "images").glob("v1.12.0/**/*.qcow2")), "a disk of the failed image was stored"
    assert not (store / "records/v1.12.0").exists()
    _assert_valid(store)
    return output


def test_publish_gives_up_on_a_dead_upstream(baseline, simulator):
    """A download that stops mid-body for longer than TALOS_UPSTREAM_READ_TIMEOUT fails that image
    with "looks dead" (every retry too); nothing of it is published."""
    simulator.stall_seconds = 30 * DEAD_AFTER
    simulator.set_fault("/image/", "stall")
    output = _publish_fails_and_publishes_nothing(baseline, "TALOS_UPSTREAM_READ_TIMEOUT")
    assert "broke off after" in output
    assert f"no data for {DEAD_AFTER:g} s: the connection looks dead (TALOS_UPSTREAM_READ_TIMEOUT)" in output


def test_publish_gives_up_on_a_factory_that_never_starts_sending(baseline, simulator):
    """A disk whose first byte takes longer than TALOS_UPSTREAM_FIRST_BYTE_TIMEOUT (a cold build
    that never ends) fails that image; nothing of it is published."""
    simulator.slow_first_byte_seconds = 30 * DEAD_AFTER
    simulator.set_fault("/image/", "slow_first_byte")
    output = _publish_fails_and_publishes_nothing(baseline, "TALOS_UPSTREAM_FIRST_BYTE_TIMEOUT")
    assert f"read timeout={DEAD_AFTER}" in output, "the setting did not reach the factory client"


# fault → (count: None = every request, how serve must answer: "recovers" = a retrying client ends with
# the right bytes, "cut" = never a complete body, "fine" = the right bytes at once)
PROXY_FAULTS = [
    ("500", None, "cut"),
    ("503", None, "cut"),
    ("truncate", None, "cut"),
    ("reset", None, "cut"),
    ("stall", None, "cut"),  # stalls longer than the proxy's upstream timeout: a dead upstream
    ("500", 1, "recovers"),
    ("503", 3, "recovers"),  # a burst: several clients' attempts in a row get a 502
    ("slow_first_byte", 1, "recovers"),
    ("redirect_chain", 1, "recovers"),
    ("overlong", None, "fine"),  # bytes beyond Content-Length are not part of the body
]
UPSTREAM_TIMEOUT = 1.0


@pytest.mark.parametrize("fault,count,expect", PROXY_FAULTS)
def test_serve_proxy_mode_under_upstream_faults(pipeline_env, simulator, monkeypatch, fault, count, expect):
    monkeypatch.setenv("TALOS_DISK_MODE", "proxy")
    monkeypatch.setenv("TALOS_ARCHES", "amd64")
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    simulator.slow_first_byte_seconds = 0.5
    simulator.stall_seconds = 4 * UPSTREAM_TIMEOUT
    assert publish(["v1.12.0"]).ok
    images = json.loads((pipeline_env / "streams/v1/images.json").read_text())
    (version,) = images["products"]["talos:v1.12.0:amd64:nocloud"]["versions"].values()
    disk = next(i for i in version["items"].values() if i["ftype"] == "disk-kvm.img")
    app = create_app(
        DirectoryStore(pipeline_env),
        disk_mode="proxy",
        factory_url=simulator.factory_url,
        upstream_timeout=UPSTREAM_TIMEOUT,
    )
    url, stop = start_in_thread(app)
    session = requests.Session()
    session.trust_env = False

    def fetch() -> tuple[int | None, bytes]:
        try:
            response = session.get(f"{url}/{disk['path']}", timeout=30)
            return response.status_code, response.content
        except requests.RequestException:
            return None, b""

    try:
        simulator.set_fault("/image/", fault, count=count)
        answers = [fetch()]
        while expect == "recovers" and answers[-1][0] == 502 and len(answers) < 5:
            answers.append(fetch())  # a 5xx before any byte is a 502 the client retries
    finally:
        stop()
    status, body = answers[-1]
    complete = status == 200 and hashlib.sha256(body).hexdigest() == disk["sha256"]
    if expect == "cut":
        assert not (status == 200 and len(body) == disk["size"]), "a broken upstream body must never look complete"
        assert app.state.metrics["proxy_upstream_errors"] >= 1
    else:
        assert complete, f"{fault}: {[a[0] for a in answers]}"
    if expect == "fine":
        assert len(answers) == 1

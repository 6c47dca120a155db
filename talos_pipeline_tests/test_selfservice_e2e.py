"""Self-service end to end: `talos-pipeline demo` as a user runs it, the real Incus client and daemon,
and the page in a headless Chromium.

A request posted with the `curl` line the demo prints goes through the self-service sensor (run by
the demo as the daemon would) and becomes images `incus image list` shows and aliases `incus image
info` resolves. The page is loaded in Chromium: its table is images.json, every command it shows is
run as shown with the real client (this machine has no `vhost_vsock`, so `incus launch` must get
exactly as far as the VM driver's refusal, not to an argument, profile or device error), and its
form requests a variant. With TALOS_SELF_SERVICE_SCREENSHOTS=<dir> the screenshots of the page and
of a request's status page are written there (docs/ holds the committed ones).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from talos_pipeline.core.signing.verification import verify_bundle
from talos_pipeline.core.simplestreams import read_images

from .chromium import chromium, wait_until
from .incus_fixtures import IncusClient, needs_incus, start_incusd, stop_incusd

pytestmark = [needs_incus, pytest.mark.slow, pytest.mark.incus]
CLI = [sys.executable, "-m", "talos_pipeline.cli"]
VM_DRIVER_REFUSAL = "vhost_vsock kernel module not loaded"


@dataclass
class Demo:
    proc: subprocess.Popen
    url: str
    cert: Path
    token: str
    curl: str
    data: Path
    out: Path
    err: Path

    def get(self, path: str, **kwargs) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(self.url + path, verify=str(self.cert), timeout=30, **kwargs)

    def catalog(self) -> dict:
        return self.get("/streams/v1/images.json", headers={"Accept-Encoding": "identity"}).json()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    root = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_HOME", "REQUESTS_CA_BUNDLE"))}
    env["INCUS_CONF"] = str(root / "incus-conf")
    port = _free_port()
    out, err = root / "demo.out", root / "demo.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [*CLI, "demo", "--data-dir", str(root / "data"), "--disk-size", "1MiB", "--port", str(port)],
            env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        printed = wait_until("the demo's curl line", lambda: "  curl -fsS" in out.read_text() and out.read_text(), 300)
        curl = next(line.strip() for line in printed.splitlines() if line.startswith("  curl -fsS"))
        token = re.search(r"Bearer ([0-9a-f]+)'", curl).group(1)
        running = Demo(proc, f"https://127.0.0.1:{port}", root / "data/tls/server.crt", token, curl, root / "data",
                       out, err)  # fmt: skip
        wait_until("the demo's server", lambda: _answers(running), 60)
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _answers(demo: Demo) -> bool:
    try:
        return demo.get("/readyz").status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def incusd(tmp_path_factory, demo):
    """incusd with a storage pool and a root disk in the default profile (`incus admin init
    --minimal` gives the same; without them no instance can be created at all)."""
    state = tmp_path_factory.mktemp("incus")
    proc = start_incusd(state, demo.cert)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "INCUS_DIR": str(state), "HOME": str(state)}
    for command in (["storage", "create", "default", "dir"],
                    ["profile", "device", "add", "default", "root", "disk", "path=/", "pool=default"]):  # fmt: skip
        subprocess.run(["incus", *command], env=env, check=True, capture_output=True, timeout=60)
    yield state
    stop_incusd(proc)


def _client(tmp_path: Path, incusd: Path, demo: Demo, remote: str | None) -> IncusClient:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "INCUS_DIR": str(incusd),
        "INCUS_CONF": str(tmp_path / "conf"),
        "INCUS_CACHE": str(tmp_path / "cache"),
        "CURL_CA_BUNDLE": str(demo.cert),  # the demo's self-signed certificate, for the page's curl lines
    }
    client = IncusClient(env=env, conf=tmp_path / "conf")
    (client.conf / "servercerts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo.cert, client.conf / "servercerts" / "talos.crt")
    if remote:
        client.add_remote(remote, demo.url, demo.cert)
    return client


def _wait_for_status(demo: Demo, request_id: str, seconds: float = 180) -> dict:
    def done() -> dict | None:
        status = demo.get(f"/requests/{request_id}").json()
        return status if status["status"] in ("published", "failed") else None

    return wait_until(f"request {request_id} to be published", done, seconds, interval=0.5)


def _request_storage(demo: Demo) -> dict:
    """The demo's own curl line, as printed; the request's final status."""
    posted = subprocess.run(["bash", "-c", demo.curl], capture_output=True, text=True, timeout=60)
    assert posted.returncode == 0, posted.stderr
    status = _wait_for_status(demo, json.loads(posted.stdout)["id"])
    assert status["status"] == "published", status
    return status


def test_a_request_posted_to_the_demo_becomes_images_incus_lists(tmp_path, demo, incusd):
    started = time.monotonic()
    status = _request_storage(demo)
    client = _client(tmp_path, incusd, demo, "talos")  # a fresh client cache: it keeps an index 5 minutes
    newest = status["versions"][0]
    info = client.run("image", "info", f"talos:talos/{newest}/storage").stdout
    elapsed = time.monotonic() - started
    products = demo.catalog()["products"]
    product = products[f"talos:{newest}:amd64:storage"]
    fingerprint = next(iter(product["versions"].values()))["items"]["incus.tar.xz"]["combined_disk-kvm-img_sha256"]
    assert f"Fingerprint: {fingerprint}" in info and "variant: storage" in info
    listed = [image for image in client.json("image", "list", "talos:") if image["properties"]["variant"] == "storage"]
    assert {(i["properties"]["release"], i["properties"]["architecture"]) for i in listed} == {
        (version, arch) for version in status["versions"] for arch in ("amd64", "arm64")
    }
    assert f"talos/{newest}/storage" in status["aliases"] and "talos/latest/storage" in status["aliases"]
    for alias in ("talos/latest/storage", f"talos/{newest[:5]}/storage"):
        assert f"Fingerprint: {fingerprint}" in client.run("image", "info", f"talos:{alias}").stdout
    print(f"\nself-service: POST /requests to `incus image info talos:talos/{newest}/storage`: {elapsed:.1f} s")
    (demo.data / "request-seconds.txt").write_text(f"{elapsed:.1f}\n")
    identity = len(demo.get("/streams/v1/images.json", headers={"Accept-Encoding": "identity"}).content)
    sent = wait_until("Incus's catalog requests in the access log", lambda: _incus_catalog_bytes(demo), 10)
    assert all(size < identity / 3 for size in sent), "the Incus client asked for gzip and got it"


def _incus_catalog_bytes(demo: Demo) -> list[int]:
    """Body bytes of every images.json answer to the Incus client, from the demo's access log."""
    lines = demo.err.read_text().splitlines()
    return [
        int(re.search(r" (\d+)B ", line).group(1))
        for line in lines
        if "GET /streams/v1/images.json 200" in line and '"Incus ' in line
    ]


def _page_rows(page) -> list[dict]:
    return page.evaluate(
        "Array.from(document.querySelectorAll('#images tbody tr[data-product]')).map(tr => ({product: "
        "tr.dataset.product, cells: Array.from(tr.cells).map(td => td.innerText.trim()), commands: "
        "Array.from(tr.nextElementSibling.querySelectorAll('pre code')).map(c => c.textContent)}))"
    )


def _expected_rows(catalog: dict) -> dict[str, list[str]]:
    rows = {}
    newest = {}
    for image in read_images(json.dumps(catalog).encode()).images:
        newest[image.product] = image
    for image in newest.values():
        signed = "yes (key)" if image.disk.signature and image.metadata.signature else "no"
        rows[image.product] = [
            image.version, image.arch, image.variant, "?", f"{image.disk.size / 2**20:.1f} MiB",
            image.fingerprint[:12], signed, f"{image.serial[:4]}-{image.serial[4:6]}-{image.serial[6:8]}",
        ]  # fmt: skip
    return rows


def _sh(client: IncusClient, command: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env={**client.env, **(env or {})}, capture_output=True, text=True, timeout=300
    )


def test_the_page_in_chromium_matches_the_catalog_and_its_commands_work(tmp_path, demo, incusd):
    screenshots = Path(os.environ.get("TALOS_SELF_SERVICE_SCREENSHOTS") or tmp_path)
    _request_storage(demo)  # published by the test before, or now
    with chromium(tmp_path / "profile", "--ignore-certificate-errors") as page:
        page.size(1400, 900)
        catalog = demo.catalog()
        page.navigate(demo.url + "/", ready=lambda: page.evaluate("document.querySelector('#verify') !== null"))
        rows = _page_rows(page)
        expected = _expected_rows(catalog)
        assert {row["product"] for row in rows} == set(expected), "the table lists exactly the catalog's images"
        for row in rows:
            wanted = expected[row["product"]]
            shown = row["cells"]
            assert shown[:3] + shown[4:] == wanted[:3] + wanted[4:], (row, wanted)
            if row["product"].endswith((":nocloud", ":metal")):
                assert shown[3] == "none", row
        storage = [row for row in rows if row["product"].endswith(":storage")]
        assert storage and all(row["cells"][3] == "siderolabs/iscsi-tools, siderolabs/util-linux-tools"
                               for row in storage)  # fmt: skip
        assert page.evaluate("document.scripts.length") == 0
        top = page.evaluate("Array.from(document.querySelectorAll('#start pre code')).map(c => c.textContent)")
        verify = page.evaluate("Array.from(document.querySelectorAll('#verify pre code')).map(c => c.textContent)")
        curl = page.evaluate("document.querySelector('#request pre code').textContent")
        page.size(1280, 900)
        page.evaluate("document.querySelector('#images details').open = true")
        page.screenshot(screenshots / "self-service-page.png", full_page=True)

        _run_page_commands(tmp_path, demo, incusd, rows, top, verify, curl)

        page.evaluate(
            "(() => { const f = document.querySelector('form[action=\"/requests\"]');"
            f"f.elements['token'].value = {json.dumps(demo.token)}; f.elements['name'].value = 'zfs';"
            "f.querySelector('input[name=extension][value=\"siderolabs/zfs\"]').checked = true;"
            "f.querySelector('input[name=kernel_args]').value = 'console=ttyS0';"
            "f.querySelector('button[type=submit]').click(); })()"
        )
        wait_until("the status page", lambda: "Request zfs" in page.text(), 30)
        request_id = page.evaluate("location.pathname").rsplit("/", 1)[1]
        assert "console=ttyS0" in page.text()
        status = _wait_for_status(demo, request_id)
        assert status["status"] == "published", status
        wait_until("the status page to refresh", lambda: "status\tpublished" in page.text(), 30)
        page.size(1280, 600)
        page.screenshot(screenshots / "self-service-request.png", full_page=True)
        assert "talos/latest/zfs" in page.text()
        _from_catalog, import_amd64, _import_arm64, launch = page.evaluate(
            "Array.from(document.querySelectorAll('pre code')).map(c => c.textContent)"
        )
        client = _client(tmp_path / "status", incusd, demo, "talos")
        assert _sh(client, import_amd64, tmp_path / "work").returncode == 0, import_amd64
        result = _sh(client, launch, tmp_path / "work")
        assert result.returncode != 0 and VM_DRIVER_REFUSAL in result.stderr, (launch, result.stderr)


def _run_page_commands(tmp_path: Path, demo: Demo, incusd: Path, rows: list[dict], top, verify, curl) -> None:
    """Every command the page shows, as shown, with the real client (its cache starts cold)."""
    client = _client(tmp_path / "page", incusd, demo, None)
    work = tmp_path / "work"
    work.mkdir()
    (work / "controlplane.yaml").write_text("version: v1alpha1\nmachine:\n  type: controlplane\n")
    shutil.copyfile(demo.data / "keys/talos-signing.pub", work / "signing-key.pub")
    for command in top:
        result = _sh(client, command, work)
        if command.startswith("incus launch"):
            assert result.returncode != 0 and VM_DRIVER_REFUSAL in result.stderr, (command, result.stderr)
        else:
            assert result.returncode == 0, (command, result.stderr)
    launched = 0
    for row in rows:
        launch, image_import, *checks = row["commands"]
        result = _sh(client, launch, work)
        assert result.returncode != 0 and VM_DRIVER_REFUSAL in result.stderr, (launch, result.stdout, result.stderr)
        launched += 1
        imported = _sh(client, image_import, work)
        assert imported.returncode == 0, (image_import, imported.stderr)
        alias = shlex.split(image_import)[-1]
        client.run("image", "delete", f"local:{alias}")
        fetch, cosign = checks
        assert _sh(client, fetch, work).returncode == 0, fetch
        disk, bundle = (work / Path(url).name for url in shlex.split(fetch)[2::2])
        assert cosign.startswith("cosign verify-blob --bundle ") and "--key signing-key.pub" in cosign
        # cosign cannot be installed here (docs/sigstore.md): the same check with the project's verifier
        verify_bundle(disk.read_bytes(), bundle.read_bytes(), key_pem=(work / "signing-key.pub").read_bytes())
        disk.unlink()
        bundle.unlink()
    assert launched == len(rows)
    (verify_store,) = verify
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # talos-pipeline from this environment
    result = _sh(client, verify_store, work, {"TALOS_STORE": str(demo.data / "store"), "PATH": path})
    assert result.returncode == 0, result.stdout + result.stderr
    posted = _sh(client, curl, work, {"TOKEN": demo.token})
    assert posted.returncode == 0 and json.loads(posted.stdout)["name"] == "storage", posted.stderr


def test_every_command_the_demo_prints_works_as_written(demo, incusd):
    """The lines under "Try it with Incus", copied from the demo's output and run through bash with
    the demo's INCUS_CONF: certificate pinning, remote, listings, launch (as far as this machine
    goes: the VM-driver error, not an argument, alias or profile error) and direct URL import."""
    printed = demo.out.read_text()
    commands = [
        line.strip()
        for line in printed.split("Try it with Incus", 1)[1].splitlines()
        if line.startswith(("  mkdir ", "  incus "))
    ]
    assert [c.split()[:3] for c in commands if c.startswith("incus")] == [
        ["incus", "remote", "add"],
        ["incus", "image", "list"],
        ["incus", "image", "alias"],
        ["incus", "launch", "talos-demo:talos/latest"],
        ["incus", "image", "import"],
    ], commands
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(demo.data),
        "INCUS_DIR": str(incusd),
        "INCUS_CONF": str(demo.data.parent / "incus-conf"),  # what the demo was started with
    }
    for command in commands:
        result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        if command.startswith("incus launch "):
            assert result.returncode != 0 and "vhost_vsock" in output, f"{command}\n{output}"
        else:
            assert result.returncode == 0, f"{command}\n{output}"

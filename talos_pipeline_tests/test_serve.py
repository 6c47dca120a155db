"""`serve/` over real HTTP(S): uvicorn on 127.0.0.1, a store published from the upstream simulator.

Clients are `requests`, `http.client` and raw sockets (for request targets that `requests` would
normalise). TLS is on for the main server, with a certificate made by `serve.tls`.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import socket
import ssl
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from serve import create_app, generate_self_signed, start_in_thread
from serve.snapshot import parse_catalog
from serve.tls import server_ssl_context
from talos_pipeline.core.errors import StoreError
from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY
from talos_pipeline.core.metadata import read_metadata_yaml
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.core.variants import Variant
from talos_pipeline.simulator import UpstreamSimulator

from .serve_fixtures import VARIANT_ORDER, build_store, publish_images, rebuild_catalog

MIB = 1024 * 1024
NOCLOUD = Variant("nocloud", "nocloud")


# --------------------------------------------------------------------------- fixtures
@dataclass
class Running:
    base: str
    app: object
    session: requests.Session
    cert: str | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.base.split("://")[1].rsplit(":", 1)
        return host, int(port)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kwargs)

    def head(self, path: str, **kwargs) -> requests.Response:
        return self.session.head(self.base + path, timeout=30, **kwargs)

    @property
    def metrics(self) -> dict:
        return self.app.state.metrics


@pytest.fixture(scope="module")
def sim():
    with UpstreamSimulator(disk_size=1 * MIB) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    generate_self_signed(cert, key, hosts=("127.0.0.1", "localhost"))
    return str(cert), str(key)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, sim):
    return build_store(tmp_path_factory.mktemp("mirror") / "store", sim)


def _start(store, tls=None, **app_kwargs) -> tuple[Running, callable]:
    app = create_app(store, **app_kwargs)
    cert, key = tls if tls else (None, None)
    base, stop = start_in_thread(app, "127.0.0.1", 0, cert, key)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override `verify`; no proxies for loopback
    session.verify = cert if cert else True
    session.headers["Accept-Encoding"] = "identity"  # gzip is tested in test_serve_gzip.py

    def stop_all() -> None:
        session.close()  # idle keep-alive TLS connections would hold up the graceful shutdown
        stop()

    return Running(base, app, session, cert), stop_all


@pytest.fixture(scope="module")
def server(mirror, tls):
    running, stop = _start(mirror.store, tls, refresh_seconds=0.2)
    yield running
    stop()


@pytest.fixture
def copied_store(mirror, tmp_path) -> DirectoryStore:
    """A private copy of the mirror store, for tests that change it."""
    shutil.copytree(mirror.root, tmp_path / "store")
    return DirectoryStore(tmp_path / "store")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw(running: Running, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client-side normalisation); read until the server closes."""
    host, port = running.host_port
    sock = socket.create_connection((host, port), timeout=timeout)
    if running.base.startswith("https"):
        context = ssl.create_default_context(cafile=running.cert)
        sock = context.wrap_socket(sock, server_hostname=host)
    with sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _get_raw(
    running: Running, target: str | bytes, extra: bytes = b"", host: bytes = b"127.0.0.1"
) -> tuple[int, dict, bytes]:
    target = target.encode("latin-1") if isinstance(target, str) else target
    request = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"Connection: close\r\n\r\n"
    return _raw(running, request)


# --------------------------------------------------------------------------- the catalog
def test_index_and_images_served_from_memory_with_etag(server, mirror):
    for key in (INDEX_KEY, IMAGES_KEY):
        response = server.get("/" + key)
        assert response.status_code == 200
        assert response.content == mirror.store.read_bytes(key)
        assert response.headers["ETag"] == f'"{_sha(response.content)}"'
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Cache-Control"] == "public, max-age=60"

        cached = server.get("/" + key, headers={"If-None-Match": response.headers["ETag"]})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["ETag"] == response.headers["ETag"]
        weak_list = server.get("/" + key, headers={"If-None-Match": f'"other", W/{response.headers["ETag"]}'})
        assert weak_list.status_code == 304
        assert server.get("/" + key, headers={"If-None-Match": '"stale"'}).status_code == 200

        head = server.head("/" + key)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["Content-Length"]) == len(response.content)

    products = server.get("/streams/v1/images.json").json()["products"]
    assert len(products) == 8  # 2 versions x 2 arches x 2 variants


def test_new_catalog_is_picked_up_without_restart(copied_store, sim, tls):
    running, stop = _start(copied_store, tls, refresh_seconds=0.2, retain_seconds=3600)
    try:
        before = running.get("/streams/v1/images.json")
        old_etag = before.headers["ETag"]
        assert running.get("/talos/v1.12.1/amd64").status_code == 404

        publish_images(copied_store, sim, versions=("v1.12.1",), arches=("amd64",), variants=(NOCLOUD,))
        deadline = time.monotonic() + 5
        while (after := running.get("/streams/v1/images.json")).headers["ETag"] == old_etag:
            assert time.monotonic() < deadline, "the new catalog was not picked up"
            time.sleep(0.05)
        assert after.content == copied_store.read_bytes(IMAGES_KEY)
        assert "talos:v1.12.1:amd64:nocloud" in after.json()["products"]
        assert running.get("/streams/v1/images.json", headers={"If-None-Match": old_etag}).status_code == 200
        direct = running.head("/talos/v1.12.1/amd64")
        assert direct.status_code == 200
        assert running.get("/talos/latest/amd64").headers["Incus-Image-URL"] == direct.headers["Incus-Image-URL"]
        assert running.get("/healthz").json()["catalog_etag"] == after.headers["ETag"]

        # An image leaves the catalog: its files stay downloadable (clients cache the index for an hour),
        # but direct import no longer resolves it.
        gone = json.loads(copied_store.read_bytes("records/v1.11.6/arm64/metal.json"))
        copied_store.delete("records/v1.11.6/arm64/metal.json")
        rebuild_catalog(copied_store, VARIANT_ORDER)
        deadline = time.monotonic() + 5
        while running.get("/talos/v1.11.6/metal/arm64").status_code != 404:
            assert time.monotonic() < deadline, "the shrunk catalog was not picked up"
            time.sleep(0.05)
        kept = running.get("/" + gone["disk"]["path"])
        assert kept.status_code == 200 and _sha(kept.content) == gone["disk"]["sha256"]
    finally:
        stop()


def test_retired_files_are_dropped_after_the_retention_window(copied_store, tls):
    running, stop = _start(copied_store, tls, refresh_seconds=0.1, retain_seconds=0)
    try:
        gone = json.loads(copied_store.read_bytes("records/v1.11.6/arm64/metal.json"))
        assert running.head("/" + gone["disk"]["path"]).status_code == 200
        copied_store.delete("records/v1.11.6/arm64/metal.json")
        rebuild_catalog(copied_store, VARIANT_ORDER)
        deadline = time.monotonic() + 5
        while running.head("/" + gone["disk"]["path"]).status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert copied_store.exists(gone["disk"]["path"])  # still in the store, no longer served
    finally:
        stop()


def test_healthz_and_starting_on_an_empty_store(tmp_path, sim, server, tls):
    health = server.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["products"] == 8
    assert body["catalog_etag"] == server.get("/streams/v1/images.json").headers["ETag"]

    empty = DirectoryStore(tmp_path / "empty")
    empty.check_ready()
    running, stop = _start(empty, tls, refresh_seconds=0.1)
    try:
        # Liveness: the process answers. Readiness: not before a catalog is served.
        health = running.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {**health.json(), "status": "unavailable", "error": "no catalog has been published yet"}
        ready = running.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert running.get("/streams/v1/index.json").status_code == 503
        publish_images(empty, sim, versions=("v1.12.0",), arches=("amd64",), variants=(NOCLOUD,))
        deadline = time.monotonic() + 5
        while running.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert running.get("/healthz").json()["products"] == 1
        assert running.get("/healthz").json()["status"] == "ok"
    finally:
        stop()


# --------------------------------------------------------------------------- files
def test_files_get_head_and_ranges(server, mirror):
    record = mirror.record("v1.12.0", "amd64")
    for item in (record.metadata, record.disk):
        data = mirror.store.read_bytes(item.path)
        size = len(data)
        full = server.get("/" + item.path)
        assert full.status_code == 200 and full.content == data and _sha(data) == item.sha256
        assert full.headers["ETag"] == f'"{item.sha256}"'
        assert full.headers["Accept-Ranges"] == "bytes"
        assert full.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        expected_type = "application/x-xz" if item is record.metadata else "application/x-qemu-disk"
        assert full.headers["Content-Type"] == expected_type

        head = server.head("/" + item.path)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["Content-Length"]) == size and head.headers["ETag"] == full.headers["ETag"]

        cases = {
            "bytes=0-99": (0, 100),
            "bytes=100-": (100, size),
            "bytes=-10": (size - 10, size),
            "bytes=0-0": (0, 1),
            f"bytes={size - 1}-{size + 1000}": (size - 1, size),
            f"bytes=-{size + 5}": (0, size),
        }
        for header, (start, end) in cases.items():
            part = server.get("/" + item.path, headers={"Range": header})
            assert part.status_code == 206, header
            assert part.content == data[start:end], header
            assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}", header
            assert int(part.headers["Content-Length"]) == end - start
        for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
            refused = server.get("/" + item.path, headers={"Range": header})
            assert refused.status_code == 416, header
            assert refused.headers["Content-Range"] == f"bytes */{size}"
        for header in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=abc"):
            whole = server.get("/" + item.path, headers={"Range": header})
            assert whole.status_code == 200 and whole.content == data, header

        assert server.get("/" + item.path, headers={"If-None-Match": f'"{item.sha256}"'}).status_code == 304
        stale = server.get("/" + item.path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == data
        fresh = server.get("/" + item.path, headers={"Range": "bytes=0-9", "If-Range": f'"{item.sha256}"'})
        assert fresh.status_code == 206 and fresh.content == data[:10]


def test_paths_outside_the_catalog_are_404(server, mirror):
    named = {r.metadata.path for r in mirror.records.values()} | {r.disk.path for r in mirror.records.values()}
    store_only = [key for key in mirror.store.list_keys("") if key not in named and not key.startswith("streams/")]
    assert "records/v1.12.0/amd64/nocloud.json" in store_only
    assert "state/v1.12.0/amd64/nocloud.disk.json" in store_only
    for key in store_only:
        response = server.get("/" + key)
        assert response.status_code == 404, key
        assert mirror.store.read_bytes(key) not in response.content
    # A content-addressed name that is not in the catalog, and something only on the filesystem.
    stray = "images/v1.12.0/amd64/nocloud/disk-" + "0" * 64 + ".qcow2"
    mirror.store.put_bytes(stray, b"not published")
    try:
        assert server.get("/" + stray).status_code == 404
    finally:
        mirror.store.delete(stray)
    assert server.get("/images/v1.12.0/amd64/nocloud/").status_code == 404
    assert server.get("/" + str(mirror.root).lstrip("/") + "/streams/v1/index.json").status_code == 404
    missing = server.get("/images/nothing.qcow2")
    assert missing.status_code == 404 and "not in the catalog" in missing.text


def test_path_traversal_is_refused(server, mirror):
    record_key = "records/v1.12.0/amd64/nocloud.json"
    secret = mirror.store.read_bytes(record_key)
    disk = mirror.record("v1.12.0", "amd64").disk.path
    targets = [
        "/../../../../etc/passwd",
        "/images/../" + record_key,
        "/streams/v1/../../" + record_key,
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images%2f..%2f" + record_key.replace("/", "%2f"),
        "/" + disk.replace("/", "%2F", 1),
        "/" + disk.replace("/", "%5c"),
        "//etc/passwd",
        "//" + disk,
        "/images//v1.12.0/amd64/nocloud/x",
        "/images\\..\\" + record_key.replace("/", "\\"),
        "/" + disk + "%00",
        "/%00",
        "/./" + disk,
        "/%252e%252e/" + record_key,
        "/etc/passwd",
        "http://evil.example/etc/passwd",
        "/..",
    ]
    for target in targets:
        status, _headers, body = _get_raw(server, target)
        assert 400 <= status < 500, (target, status)
        assert b"root:" not in body and secret not in body, target
    # A raw NUL in the request line is refused by the HTTP parser itself.
    status, _headers, body = _get_raw(server, b"/images\x00/../" + record_key.encode())
    assert status == 400 or status == 0
    assert secret not in body
    # The same client gets the real file when it asks properly.
    status, _headers, body = _get_raw(server, "/" + disk)
    assert status == 200 and _sha(body) == mirror.record("v1.12.0", "amd64").disk.sha256


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_methods_other_than_get_and_head_are_405(server, mirror, method):
    disk = mirror.record("v1.12.0", "amd64").disk.path
    for path in ("/streams/v1/index.json", "/" + disk, "/talos/v1.12.0/amd64", "/nowhere", "/healthz"):
        host, port = server.host_port
        connection = http.client.HTTPSConnection(
            host, port, context=ssl.create_default_context(cafile=server.cert), timeout=10
        )
        try:
            connection.request(method, path, body=b"x" if method in ("POST", "PUT", "PATCH") else None)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 405, (method, path)
        assert response.getheader("Allow") == "GET, HEAD"
        assert b"GET and HEAD" in body


def test_oversized_and_malformed_requests_are_4xx(server):
    status, _headers, _body = _get_raw(server, "/healthz", extra=b"X-Big: " + b"a" * 20000 + b"\r\n")
    assert status in (400, 431) or status == 0  # h11 answers 400 and closes
    assert _raw(server, b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 400
    assert _raw(server, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")[0] == 400
    status, _headers, _body = _get_raw(server, "/healthz", extra=b"X-Ok: 1\r\n")
    assert status == 200


def test_request_log_line(server, mirror, caplog):
    caplog.set_level(logging.INFO, logger="serve")
    disk = mirror.record("v1.12.0", "amd64").disk
    server.get("/" + disk.path, headers={"Range": "bytes=0-99", "User-Agent": "test-agent/1.0"})
    deadline = time.monotonic() + 5
    while not any(disk.path in r.getMessage() for r in caplog.records if r.name == "serve.access"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    line = next(r.getMessage() for r in caplog.records if r.name == "serve.access" and disk.path in r.getMessage())
    assert line.startswith("127.0.0.1:")
    assert f"GET /{disk.path} 206 100B " in line and "ms" in line and '"test-agent/1.0"' in line


# --------------------------------------------------------------------------- direct import + unified
def test_direct_import_headers_for_both_url_forms(server, mirror):
    nocloud = mirror.record("v1.12.0", "amd64", "nocloud")
    metal = mirror.record("v1.12.0", "amd64", "metal")
    arm = mirror.record("v1.11.6", "arm64", "metal")
    cases = {
        "/talos/v1.12.0/amd64": nocloud,  # default variant = owner of the talos/v1.12.0 alias
        "/talos/v1.12.0/nocloud/amd64": nocloud,
        "/talos/v1.12.0/metal/amd64": metal,
        "/talos/v1.11.6/metal/arm64": arm,
        "/talos/latest/amd64": nocloud,
        "/talos/v1.12/metal/amd64": metal,
    }
    for path, record in cases.items():
        for method in ("GET", "HEAD"):
            response = server.session.request(method, server.base + path, timeout=10)
            assert response.status_code == 200, path
            assert response.headers["Incus-Image-Hash"] == record.unified_sha256, path
            url = response.headers["Incus-Image-URL"]
            assert url == (
                f"{server.base}/unified/{record.version}/{record.arch}/{record.variant}/{record.unified_sha256}.tar"
            )
            if method == "GET":
                assert record.unified_sha256 in response.text and "incus image import" in response.text


def test_unified_tarball_matches_the_advertised_hash(server, mirror):
    record = mirror.record("v1.12.0", "arm64", "metal")
    url = server.get("/talos/v1.12.0/metal/arm64").headers["Incus-Image-URL"]
    response = server.get(url[len(server.base) :])
    assert response.status_code == 200
    body = response.content
    assert _sha(body) == record.unified_sha256 and len(body) == record.unified_size
    assert int(response.headers["Content-Length"]) == record.unified_size
    assert response.headers["Content-Type"] == "application/x-tar"
    assert response.headers["ETag"] == f'"{record.unified_sha256}"'
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
        assert tar.getnames() == ["metadata.yaml", "rootfs.img"]
        yaml = tar.extractfile("metadata.yaml").read()
        rootfs = tar.extractfile("rootfs.img").read()
    assert rootfs == mirror.store.read_bytes(record.disk.path)
    assert yaml == read_metadata_yaml(mirror.store.read_bytes(record.metadata.path))[0]
    assert b"architecture: aarch64" in yaml and b"variant: metal" in yaml

    head = server.head(url[len(server.base) :])
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == record.unified_size
    for header, (start, end) in {"bytes=500-2000": (500, 2001), "bytes=-1024": (len(body) - 1024, len(body))}.items():
        part = server.get(url[len(server.base) :], headers={"Range": header})
        assert part.status_code == 206 and part.content == body[start:end]
    # Only the catalog's current sha256 is served.
    wrong = url.rsplit("/", 1)[0] + "/" + "a" * 64 + ".tar"
    assert server.get(wrong[len(server.base) :]).status_code == 404
    other_variant = url.replace("/metal/", "/nocloud/")
    assert server.get(other_variant[len(server.base) :]).status_code == 404


def test_direct_import_404_bodies_say_what_exists(server):
    response = server.get("/talos/v9.9.9/amd64")
    assert response.status_code == 404
    assert "v9.9.9" in response.text and "v1.12.0, v1.11.6" in response.text
    response = server.get("/talos/v1.12.0/riscv64")
    assert response.status_code == 404 and "amd64, arm64" in response.text
    response = server.get("/talos/v1.12.0/qga/amd64")
    assert response.status_code == 404 and "metal, nocloud" in response.text
    response = server.get("/talos/v1.12.0")
    assert response.status_code == 404 and "/talos/<version>/<arch>" in response.text
    assert server.get("/talos/a/b/c/d").status_code == 404


def test_host_header_is_validated_and_public_url_wins(server, mirror, tls):
    for bad in (b"evil.example:80/x", b"evil.example@good", b"a b", b"evil.example:80?x", b"-"):
        status, headers, body = _get_raw(server, "/talos/v1.12.0/amd64", host=bad)
        assert status == 400, bad
        assert "incus-image-url" not in headers and b"evil" not in body
    status, headers, _body = _get_raw(server, "/talos/v1.12.0/amd64", host=b"images.example.com:8443")
    assert status == 200 and headers["incus-image-url"].startswith("https://images.example.com:8443/unified/")
    status, headers, _body = _get_raw(server, "/talos/v1.12.0/amd64", host=b"[::1]:8443")
    assert status == 200 and headers["incus-image-url"].startswith("https://[::1]:8443/unified/")

    running, stop = _start(mirror.store, tls, public_url="https://images.example.com/talos/")
    try:
        # An invalid Host is 400 everywhere (RFC 9112 §3.2); a valid other one never shapes the URL.
        assert _get_raw(running, "/talos/v1.12.0/amd64", host=b"evil.example:80/x")[0] == 400
        status, headers, _body = _get_raw(running, "/talos/v1.12.0/amd64", host=b"evil.example:80")
        record = mirror.record("v1.12.0", "amd64")
        assert status == 200
        assert headers["incus-image-url"] == (
            f"https://images.example.com/talos/unified/v1.12.0/amd64/nocloud/{record.unified_sha256}.tar"
        )
    finally:
        stop()


# --------------------------------------------------------------------------- integrity of the store
def test_corrupt_or_missing_store_objects_fail_loudly(copied_store, tls, caplog):
    caplog.set_level(logging.INFO, logger="serve")
    running, stop = _start(copied_store, tls, verify_reads=True)
    try:
        record = json.loads(copied_store.read_bytes("records/v1.12.0/amd64/nocloud.json"))
        path = copied_store.path_for(record["disk"]["path"])
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes
        path.write_bytes(bytes(data))
        with pytest.raises(requests.exceptions.RequestException):
            _ = running.get("/" + record["disk"]["path"]).content
        assert running.metrics["store_corrupt"] == 1
        assert any(r.levelno == logging.ERROR and "store corrupt" in r.getMessage() for r in caplog.records)
        # A range cannot be verified, but is still served byte-exact.
        part = running.get("/" + record["disk"]["path"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == bytes(data[:100])

        path.write_bytes(bytes(data[:-1]))  # another size
        assert running.get("/" + record["disk"]["path"]).status_code == 500
        path.unlink()
        assert running.get("/" + record["disk"]["path"]).status_code == 404
        assert running.metrics["store_missing"] == 1
    finally:
        stop()


class FlakyStore(DirectoryStore):
    """A store that can be switched off, like an S3 endpoint going away."""

    broken = False

    def _check(self) -> None:
        if self.broken:
            raise StoreError("simulated outage: the bucket does not answer")

    def stat(self, key):
        self._check()
        return super().stat(key)

    def read_bytes(self, key):
        self._check()
        return super().read_bytes(key)


def test_store_outage_is_503_and_the_catalog_keeps_being_served(mirror, tls, caplog):
    store = FlakyStore(mirror.root)
    running, stop = _start(store, tls, refresh_seconds=0.1)
    try:
        record = mirror.record("v1.12.0", "amd64")
        assert running.get("/" + record.disk.path).status_code == 200
        store.broken = True
        time.sleep(0.15)
        response = running.get("/" + record.disk.path)
        assert response.status_code == 503 and "not available" in response.text
        assert running.get("/streams/v1/images.json").status_code == 200  # last good catalog, from memory
        # Still ready (a load balancer must not pull the replica): degraded, said in the body.
        for path in ("/healthz", "/readyz"):
            health = running.get(path)
            assert health.status_code == 200, path
            assert health.json()["status"] == "degraded" and health.json()["degraded"] is True
            assert health.json()["error"] == "the catalog cannot be read from the store"
            assert str(mirror.root) not in health.text and "bucket" not in health.text
        metrics = running.get("/metrics").text
        assert "talos_serve_catalog_degraded 1.0" in metrics and "talos_serve_ready 1.0" in metrics
        assert any("simulated outage" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
        store.broken = False
        time.sleep(0.15)
        assert running.get("/healthz").json()["status"] == "ok"
        assert "talos_serve_catalog_degraded 0.0" in running.get("/metrics").text
    finally:
        stop()


# --------------------------------------------------------------------------- proxy mode
def _proxy_setup(tmp_path, tls, sim):
    published = build_store(
        tmp_path / "proxy", sim, mode="proxy", versions=("v1.12.0",), arches=("amd64",), variants=(NOCLOUD,)
    )
    running, stop = _start(published.store, tls, factory_url=sim.factory_url)
    return published, running, stop


def test_proxy_mode_streams_from_the_factory(tmp_path, tls, sim):
    published, running, stop = _proxy_setup(tmp_path, tls, sim)
    try:
        record = published.record("v1.12.0", "amd64")
        assert not published.store.exists(record.disk.path)  # nothing mirrored
        item = running.get("/streams/v1/images.json").json()["products"]["talos:v1.12.0:amd64:nocloud"]
        disk_item = next(iter(item["versions"].values()))["items"]["disk.qcow2"]
        assert disk_item["talos_upstream_path"] == record.upstream_path

        before = sim.downloads("v1.12.0", "amd64")
        head = running.head("/" + record.disk.path)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == record.disk.size
        assert sim.downloads("v1.12.0", "amd64") == before  # HEAD answers from the catalog

        response = running.get("/" + record.disk.path, headers={"Host": "evil.example"})
        assert response.status_code == 200 and _sha(response.content) == record.disk.sha256
        assert response.content == sim.image_path("v1.12.0", "amd64").read_bytes()
        assert sim.downloads("v1.12.0", "amd64") == before + 1
        ranged = running.get("/" + record.disk.path, headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 200 and _sha(ranged.content) == record.disk.sha256

        url = running.get("/talos/v1.12.0/amd64").headers["Incus-Image-URL"]
        unified = running.get(url[len(running.base) :])
        assert unified.status_code == 200 and _sha(unified.content) == record.unified_sha256
        assert running.metrics["proxy_drift"] == 0
    finally:
        stop()


def test_proxy_drift_cuts_the_response_off(tmp_path, tls, caplog):
    caplog.set_level(logging.INFO, logger="serve")
    with UpstreamSimulator(disk_size=1 * MIB) as own_sim:
        published, running, stop = _proxy_setup(tmp_path, tls, own_sim)
        try:
            record = published.record("v1.12.0", "amd64")
            own_sim.drift("v1.12.0", "amd64", "nocloud")
            assert own_sim.image_sha256("v1.12.0", "amd64") != record.disk.sha256

            # requests: the body ends before Content-Length
            with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
                _ = running.get("/" + record.disk.path).content
            assert running.metrics["proxy_drift"] == 1
            drift_logs = [r for r in caplog.records if r.levelno == logging.ERROR and "proxy drift" in r.getMessage()]
            assert drift_logs
            message = drift_logs[0].getMessage()
            assert "version=v1.12.0" in message and "arch=amd64" in message and "variant=nocloud" in message

            # raw client: fewer bytes than announced, and never the last ones
            host, port = running.host_port
            connection = http.client.HTTPSConnection(
                host, port, context=ssl.create_default_context(cafile=running.cert), timeout=10
            )
            connection.request("GET", "/" + record.disk.path)
            response = connection.getresponse()
            assert response.status == 200 and int(response.getheader("Content-Length")) == record.disk.size
            with pytest.raises(http.client.IncompleteRead) as excinfo:
                response.read()
            assert len(excinfo.value.partial) < record.disk.size
            connection.close()
            assert running.metrics["proxy_drift"] == 2

            url = running.get("/talos/v1.12.0/amd64").headers["Incus-Image-URL"]
            with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
                _ = running.get(url[len(running.base) :]).content
            assert running.metrics["proxy_drift"] == 3
            assert running.get("/healthz").json()["metrics"]["proxy_drift"] == 3
        finally:
            stop()


def test_disk_mode_proxy_serves_mirrored_images_from_the_factory(mirror, tls, sim):
    running, stop = _start(mirror.store, tls, disk_mode="proxy", factory_url=sim.factory_url)
    try:
        record = mirror.record("v1.11.6", "arm64", "metal")
        before = sim.downloads("v1.11.6", "arm64", "metal")
        response = running.get("/" + record.disk.path)
        assert response.status_code == 200 and _sha(response.content) == record.disk.sha256
        assert sim.downloads("v1.11.6", "arm64", "metal") == before + 1
    finally:
        stop()


def test_the_catalog_cannot_turn_the_server_into_an_open_proxy(server, mirror):
    images = json.loads(mirror.store.read_bytes(IMAGES_KEY))
    product = images["products"]["talos:v1.12.0:amd64:nocloud"]
    items = next(iter(product["versions"].values()))["items"]
    for bad in ("http://evil.example/image.qcow2", "../../etc/passwd", "image/x/v1.12.0/nocloud-amd64.qcow2"):
        items["disk.qcow2"]["talos_upstream_path"] = bad
        snapshot = parse_catalog(mirror.store.read_bytes(INDEX_KEY), json.dumps(images).encode())
        assert "talos:v1.12.0:amd64:nocloud" not in {i.product for i in snapshot.by_triple.values()}
        assert items["disk.qcow2"]["path"] not in snapshot.files
        assert any("talos_upstream_path" in p for p in snapshot.problems)
    items["disk.qcow2"]["path"] = "../records/v1.12.0/amd64/nocloud.json"
    items["disk.qcow2"].pop("talos_upstream_path")
    snapshot = parse_catalog(mirror.store.read_bytes(INDEX_KEY), json.dumps(images).encode())
    assert items["disk.qcow2"]["path"] not in snapshot.files


# --------------------------------------------------------------------------- TLS
def test_tls13_is_accepted_and_tls12_refused(server):
    host, port = server.host_port
    modern = ssl.create_default_context(cafile=server.cert)
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        modern.wrap_socket(raw, server_hostname=host) as tls_sock,
    ):
        assert tls_sock.version() == "TLSv1.3"

    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    legacy.check_hostname = False
    legacy.verify_mode = ssl.CERT_NONE
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        legacy.wrap_socket(raw, server_hostname=host),
    ):
        pass
    # requests verifies the generated certificate by its IP SAN
    assert server.get("/healthz").status_code == 200


def test_generated_certificate_and_server_context(tls):
    cert_path, key_path = tls
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 364 <= lifetime.days <= 366
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    context = server_ssl_context(cert_path, key_path)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


# --------------------------------------------------------------------------- memory
def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_stays_flat_while_streaming_a_64_mib_disk(tmp_path, tls):
    with UpstreamSimulator(disk_size=64 * MIB) as big_sim:
        published = build_store(
            tmp_path / "big", big_sim, versions=("v1.12.0",), arches=("amd64",), variants=(NOCLOUD,)
        )
    record = published.record("v1.12.0", "amd64")
    assert record.disk.size >= 64 * MIB
    running, stop = _start(published.store, tls)
    try:
        baseline = _rss()
        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _rss())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for path in ("/" + record.disk.path, f"/unified/v1.12.0/amd64/nocloud/{record.unified_sha256}.tar"):
            digest, size = hashlib.sha256(), 0
            with running.session.get(running.base + path, stream=True, timeout=60) as response:
                assert response.status_code == 200
                for chunk in response.iter_content(256 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
            expected = record.disk.sha256 if "disk-" in path else record.unified_sha256
            assert digest.hexdigest() == expected
        done.set()
        sampler.join()
        print(f"RSS growth {(peak[0] - baseline) / MIB:.1f} MiB")
        assert peak[0] - baseline < 24 * MIB, f"RSS grew by {(peak[0] - baseline) / MIB:.1f} MiB"
    finally:
        stop()

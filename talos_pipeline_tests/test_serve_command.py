"""`serve/` on the open internet, through the command a user runs (`python -m serve` as a process,
one smoke test through `talos-pipeline serve`): hostile and slow clients, stalled upstreams, TLS
operations, HTTP semantics, metrics and the access log. Each test is the regression test of a
finding of issue 13; the numbers are the issue's."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from serve.tls import certificate_fingerprint, generate_self_signed
from talos_pipeline.core.variants import Variant
from talos_pipeline.simulator import UpstreamSimulator

from .serve_fixtures import (
    ServeProcess,
    build_store,
    raise_fd_limit,
    rss_bytes,
    start_serve,
)

MIB = 1024 * 1024
NOCLOUD = Variant("nocloud", "nocloud")
ONE = {"versions": ("v1.12.0",), "arches": ("amd64",), "variants": (NOCLOUD,)}


@pytest.fixture(scope="module")
def sim():
    with UpstreamSimulator(disk_size=1 * MIB) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def store(tmp_path_factory, sim):
    return build_store(tmp_path_factory.mktemp("store") / "store", sim, **ONE)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    with UpstreamSimulator(disk_size=64 * MIB) as big:
        return build_store(tmp_path_factory.mktemp("big") / "store", big, **ONE)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    generate_self_signed(cert, key, hosts=("127.0.0.1",))
    return str(cert), str(key)


@pytest.fixture
def serve(tmp_path):
    started: list[ServeProcess] = []

    def start(store_root, **kwargs) -> ServeProcess:
        running = start_serve(store_root, tmp_path, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _connect(running: ServeProcess, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", running.port))
    if running.cert:
        context = ssl.create_default_context(cafile=running.cert)
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on an open connection; the response read up to its Content-Length."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _raw(running: ServeProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(running) as sock:
        return _exchange(sock, request)


def _closed(sock: socket.socket) -> bool:
    """The server has closed (or reset) this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


# --------------------------------------------------------------------------- connection hygiene
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_idle_connections_do_not_lock_clients_out(store, tls, serve, scheme):
    """1,100 idle TCP connections (from 11 addresses): a new client's index.json is answered 200
    within 2 s, and at least 90 % of the idle ones are closed within 25 s (default timeouts)."""
    raise_fd_limit()
    running = serve(store.root, tls=tls if scheme == "https" else None)
    idle = []
    for n in range(1100):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((f"127.0.0.{2 + n % 11}", 0))
        sock.connect(("127.0.0.1", running.port))
        idle.append(sock)
    opened = time.monotonic()
    try:
        started = time.monotonic()
        with running.session() as session:
            response = session.get(running.base + "/streams/v1/index.json", timeout=10)
        assert response.status_code == 200 and response.json()["index"]
        assert time.monotonic() - started < 2.0
        while time.monotonic() - opened < 25:
            closed = sum(_closed(sock) for sock in idle)
            if closed >= 0.9 * len(idle):
                break
            time.sleep(0.5)
        assert closed >= 0.9 * len(idle), f"only {closed} of {len(idle)} idle connections were closed within 25 s"
    finally:
        for sock in idle:
            sock.close()
    if scheme == "http":
        assert running.metric("talos_serve_rejections_total", reason="shed") > 0
        assert running.metric("talos_serve_rejections_total", reason="head_timeout") > 0
        assert "shed 127.0.0." in running.log() and "no request within 10 s" in running.log()


def test_per_client_cap_and_global_limit_shed_idle_connections(store, serve):
    running = serve(store.root, env={"TALOS_SERVE_MAX_CONNECTIONS_PER_CLIENT": "4", "TALOS_SERVE_MAX_CONNECTIONS": "8"})
    mine = [_connect(running) for _ in range(4)]
    assert _raw(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200  # sheds my oldest idle one
    time.sleep(0.2)
    assert _closed(mine[0])
    others = [_connect(running, f"127.0.0.{n}") for n in range(20, 27)]
    assert _raw(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200  # sheds the oldest overall
    time.sleep(0.2)
    assert sum(_closed(s) for s in mine[1:] + others) >= 3
    assert running.metric("talos_serve_rejections_total", reason="shed") >= 3
    log = running.log()
    assert "shed 127.0.0.1:" in log and "client_cap" in log and "server_full" in log
    for sock in mine + others:
        sock.close()


def test_busy_server_refuses_with_a_logged_503(big_store, serve):
    running = serve(big_store.root, env={"TALOS_SERVE_MAX_CONNECTIONS": "2"})
    disk = big_store.record("v1.12.0", "amd64").disk
    readers = []
    for source in ("127.0.0.2", "127.0.0.3"):
        sock = _connect(running, source)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /{disk.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.recv(1024)
        readers.append(sock)
    status, headers, _body = _raw(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and headers["retry-after"] == "5"
    for sock in readers:
        sock.close()
    assert running.metric("talos_serve_rejections_total", reason="server_full") >= 1
    running.wait_for_log("REJECTED (server_full)")


def test_request_head_timeout_and_parser_errors_are_logged(store, serve):
    running = serve(store.root, env={"TALOS_SERVE_HEAD_TIMEOUT": "1"})
    with _connect(running) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        status, _headers, _body = _exchange(sock, b"")
    assert status == 408
    status, _headers, _body = _raw(running, b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    status, _headers, _body = _raw(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status == 431
    running.wait_for_log(" 408 ", "REJECTED (head_timeout)", " 400 ", "REJECTED (parse_error)")
    running.wait_for_log(" 431 ", "REJECTED (head_too_large)")
    assert running.metric("talos_serve_rejections_total", reason="parse_error") == 1


# --------------------------------------------------------------------------- memory and backpressure
@pytest.mark.slow
def test_slow_readers_keep_memory_bounded(big_store, serve):
    """200 clients reading a 64 MiB disk at a trickle for 12 s grow the server's RSS by <= 64 MiB."""
    raise_fd_limit()
    running = serve(big_store.root)
    disk = big_store.record("v1.12.0", "amd64").disk
    baseline = rss_bytes(running.proc.pid)
    readers = []
    for n in range(200):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((f"127.0.0.{2 + n % 50}", 0))
        sock.connect(("127.0.0.1", running.port))
        sock.sendall(f"GET /{disk.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        readers.append(sock)
    peak = baseline
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        for sock in readers:
            sock.recv(1024)  # about 8 KB/s each
        peak = max(peak, rss_bytes(running.proc.pid))
        time.sleep(0.1)
    for sock in readers:
        sock.close()
    growth = peak - baseline
    print(f"RSS {baseline / MIB:.0f} MiB -> peak {peak / MIB:.0f} MiB with 200 slow readers")
    assert growth <= 64 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"


# --------------------------------------------------------------------------- proxy mode
@pytest.fixture
def proxy_store(tmp_path):
    simulator = UpstreamSimulator(disk_size=4 * MIB)
    with simulator:
        published = build_store(tmp_path / "proxy", simulator, mode="proxy", **ONE)
        yield published, simulator


@pytest.mark.slow
def test_stalled_upstream_cannot_starve_the_catalog(proxy_store, serve):
    published, simulator = proxy_store
    simulator.stall_seconds = 60
    simulator.set_fault("/image/", "stall")
    running = serve(
        published.root,
        env={"TALOS_FACTORY_URL": simulator.factory_url, "TALOS_SERVE_UPSTREAM_TIMEOUT": "8"},
    )
    record = published.record("v1.12.0", "amd64")
    outcomes: list[str] = []

    def download() -> None:
        try:
            with running.session() as session:
                response = session.get(f"{running.base}/{record.disk.path}", timeout=60)
                outcomes.append(f"complete {len(response.content)}")
        except requests.RequestException as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=download, daemon=True) for _ in range(60)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # every download has started and stalls mid-body
    with running.session() as session:
        for path in ("/streams/v1/index.json", "/streams/v1/images.json", "/" + record.metadata.path) * 3:
            started = time.monotonic()
            response = session.get(running.base + path, timeout=5)
            assert response.status_code == 200, path
            assert time.monotonic() - started < 1.0, f"{path} took {time.monotonic() - started:.1f} s"
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 60 and not any(o == f"complete {record.disk.size}" for o in outcomes), outcomes[:5]
    assert running.metric("talos_serve_problems_total", kind="proxy_upstream_errors") >= 50
    assert "failed after" in running.log()


def test_cold_build_sends_headers_at_once(proxy_store, serve):
    published, simulator = proxy_store
    simulator.slow_first_byte_seconds = 6
    simulator.set_fault("/image/", "slow_first_byte", count=1)
    running = serve(published.root, env={"TALOS_FACTORY_URL": simulator.factory_url})
    record = published.record("v1.12.0", "amd64")
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    started = time.monotonic()
    connection.request("GET", "/" + record.disk.path)
    response = connection.getresponse()
    headers_after = time.monotonic() - started
    body = response.read()
    connection.close()
    assert response.status == 200 and int(response.getheader("Content-Length")) == record.disk.size
    assert headers_after < 4, f"headers after {headers_after:.1f} s (the factory answered after 6 s)"
    assert hashlib.sha256(body).hexdigest() == record.disk.sha256


# --------------------------------------------------------------------------- integrity through the command
def test_verify_reads_cuts_off_a_corrupted_disk_with_the_default_worker_count(store, serve, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(store.root, root)
    record = store.record("v1.12.0", "amd64")
    path = root / record.disk.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    running = serve(root, env={"TALOS_VERIFY_READS": "true"})
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    connection.request("GET", "/" + record.disk.path)
    response = connection.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()
    assert running.metric("talos_serve_problems_total", kind="store_corrupt") == 1
    assert "store corrupt" in running.log()


def test_symlinks_out_of_the_store_and_os_errors_are_500_no_store(store, serve, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(store.root, root)
    record = store.record("v1.12.0", "amd64")
    secret = tmp_path / "secret.xz"
    secret.write_bytes(b"outside the store" + b"\0" * (record.metadata.size - 17))
    meta = root / record.metadata.path
    meta.unlink()
    meta.symlink_to(secret)
    (root / "a-file").write_bytes(b"a file where a directory should be")
    disk = root / record.disk.path
    disk.unlink()
    disk.symlink_to(root / "a-file" / "disk.qcow2")  # inside the root, but ENOTDIR when opened
    running = serve(root)
    for path, kind in ((record.metadata.path, "store_outside_root"), (record.disk.path, "os_errors")):
        response = running.get("/" + path)
        assert response.status_code == 500 and response.headers["Cache-Control"] == "no-store", path
        assert b"outside the store" not in response.content
        assert running.metric("talos_serve_problems_total", kind=kind) == 1
    log = running.log()
    assert "Traceback" not in log
    assert "never follows symlinks out of the store" in log and "cannot be opened" in log


# --------------------------------------------------------------------------- HTTP semantics
def test_host_header_rules_and_preconditions(store, serve):
    running = serve(store.root)
    assert _raw(running, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 400
    assert _raw(running, b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0] == 400
    assert _raw(running, b"GET /streams/v1/index.json HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0] == 400
    assert _raw(running, b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 200
    record = store.record("v1.12.0", "amd64")
    for path, etag in (
        ("/" + record.disk.path, f'"{record.disk.sha256}"'),
        ("/streams/v1/images.json", running.get("/streams/v1/images.json").headers["ETag"]),
    ):
        plain = running.get(path)
        modified = plain.headers["Last-Modified"]
        assert running.get(path, headers={"If-Match": '"other"'}).status_code == 412
        assert running.get(path, headers={"If-Match": etag}).status_code == 200
        assert running.get(path, headers={"If-Match": "*"}).status_code == 200
        assert running.get(path, headers={"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 412
        assert running.get(path, headers={"If-Unmodified-Since": modified}).status_code == 200
        assert running.get(path, headers={"If-Modified-Since": modified}).status_code == 304
        assert running.get(path, headers={"If-None-Match": etag, "If-Match": '"other"'}).status_code == 412


# --------------------------------------------------------------------------- TLS operations
def test_tls_file_problems_exit_with_one_line_naming_the_file(store, tmp_path, tls):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    generate_self_signed(other_cert, other_key)
    cases = {
        (str(tmp_path / "missing.crt"), tls[1]): f"--tls-cert {tmp_path / 'missing.crt'}: no such file",
        (tls[0], str(garbage)): f"--tls-key {garbage}: no PEM private key in it",
        (str(garbage), tls[1]): f"--tls-cert {garbage}: no PEM certificate in it",
        (tls[0], str(other_key)): f"--tls-key {other_key}: does not belong to the certificate in {tls[0]}",
    }
    for (cert, key), message in cases.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALOS_")}
        result = subprocess_run(["--tls-cert", cert, "--tls-key", key], {**env, "TALOS_STORE": str(store.root)})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert lines == [f"serve: error: {message}"], result.stderr
        assert "serving" not in result.stderr and "Traceback" not in result.stderr


def subprocess_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve", "--port", "0", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _served_fingerprint(running: ServeProcess, cafile: str) -> str:
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection(("127.0.0.1", running.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def _wait_for_certificate(running: ServeProcess, cert: Path, timeout: float) -> None:
    """Until new connections get `cert` (a handshake that does not verify against it is the old one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _served_fingerprint(running, str(cert)) == certificate_fingerprint(cert):
                return
        except ssl.SSLError:
            pass
        assert time.monotonic() < deadline, running.log()
        time.sleep(0.1)


def test_certificates_are_renewed_without_dropping_connections(store, serve, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    generate_self_signed(cert, key, hosts=("127.0.0.1",))
    first = certificate_fingerprint(cert)
    shutil.copy(cert, tmp_path / "first.crt")
    running = serve(store.root, tls=(str(cert), str(key)), env={"TALOS_SERVE_TLS_CHECK_SECONDS": "0.5"})
    kept = _connect(running)  # a keep-alive connection made with the first certificate
    assert _exchange(kept, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200

    # Renewed in place, then SIGHUP (systemd's ExecReload): new connections get the new certificate.
    generate_self_signed(tmp_path / "second.crt", tmp_path / "second.key", hosts=("127.0.0.1",))
    shutil.copy(tmp_path / "second.key", key)
    shutil.copy(tmp_path / "second.crt", cert)
    running.proc.send_signal(signal.SIGHUP)
    _wait_for_certificate(running, tmp_path / "second.crt", timeout=5)
    assert _exchange(kept, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200  # still open
    assert first != certificate_fingerprint(cert)

    # A broken renewal is refused (logged), the server keeps the last good certificate...
    (tmp_path / "garbage").write_text("garbage\n")
    shutil.copy(tmp_path / "garbage", key)
    time.sleep(1.5)
    assert _served_fingerprint(running, str(tmp_path / "second.crt")) == certificate_fingerprint(cert)
    assert "still serving the previous certificate" in running.log()
    # ...and a good one is picked up from the files alone (cert-manager / ACME renewals).
    generate_self_signed(tmp_path / "third.crt", tmp_path / "third.key", hosts=("127.0.0.1",))
    shutil.copy(tmp_path / "third.key", key)
    shutil.copy(tmp_path / "third.crt", cert)
    _wait_for_certificate(running, tmp_path / "third.crt", timeout=10)
    assert _exchange(kept, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    kept.close()


# --------------------------------------------------------------------------- observability
def test_access_log_json_with_delivered_bytes(big_store, serve):
    running = serve(big_store.root, env={"TALOS_SERVE_ACCESS_LOG": "json"})
    disk = big_store.record("v1.12.0", "amd64").disk
    with _connect(running) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /{disk.path} HTTP/1.1\r\nHost: x\r\nUser-Agent: slow/1\r\n\r\n".encode())
        received = 0
        while received < 1 * MIB:
            received += len(sock.recv(65536))
    assert _raw(running, b"BAD\r\n\r\n")[0] == 400
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
        download = [e for e in entries if e["agent"] == "slow/1"]
        if download:
            break
        assert time.monotonic() < deadline, running.log()
        time.sleep(0.1)
    (entry,) = download
    assert entry["status"] == 200 and entry["outcome"].startswith("INCOMPLETE")
    assert received <= entry["bytes"] < 8 * MIB < disk.size, entry  # what left, not the 64 MiB asked for
    assert any(e["status"] == 400 and e["outcome"].startswith("REJECTED") for e in entries)


def test_metrics_add_up_across_workers(store, serve):
    running = serve(store.root, args=("--workers", "2"))
    for _ in range(40):
        assert running.get("/streams/v1/index.json").status_code == 200
    time.sleep(0.6)  # each worker adds its counts to the shared metrics four times a second
    totals = {running.metric("talos_serve_requests_total", route="index", status="200") for _ in range(10)}
    assert totals == {40.0}, totals  # every scrape, whichever worker answers it, counts both workers
    text = running.get("/metrics").text
    for name in (
        "talos_serve_delivered_bytes_total",
        "talos_serve_response_seconds_bucket",
        "talos_serve_connections",
        "talos_serve_catalog_products",
        "talos_serve_catalog_age_seconds",
        "talos_serve_ready",
    ):
        assert name in text, name
    assert running.metric("talos_serve_catalog_products") == 1


def test_talos_pipeline_serve_runs_the_same_command(store, serve, tls):
    script = str(Path(sys.executable).parent / "talos-pipeline")
    assert Path(script).exists(), "the console script of this environment"
    running = serve(store.root, tls=tls, command=(script, "serve"), env={"TALOS_VERIFY_READS": "true"})
    response = running.get("/streams/v1/index.json")
    assert response.status_code == 200 and running.get("/readyz").json()["ready"] is True
    assert running.metric("talos_serve_requests_total", route="index", status="200") == 1


def test_plain_http_downloads_and_pipelined_requests(big_store, serve):
    """Over plain HTTP files go out with sendfile(2): whole, ranged and pipelined, byte for byte."""
    running = serve(big_store.root)
    disk = big_store.record("v1.12.0", "amd64").disk
    with running.session() as session:
        response = session.get(f"{running.base}/{disk.path}", timeout=60)
        assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == disk.sha256
        part = session.get(f"{running.base}/{disk.path}", headers={"Range": "bytes=1000-2000"}, timeout=10)
        assert part.status_code == 206 and part.content == response.content[1000:2001]
    request = b"GET /streams/v1/index.json HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(running) as sock:
        sock.sendall(request * 2 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert running.metric("talos_serve_delivered_bytes_total", route="file") >= disk.size + 1001

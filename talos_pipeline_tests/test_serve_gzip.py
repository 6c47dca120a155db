"""Catalog documents and the page, gzip-compressed for clients that accept it.

Each document is compressed once per catalog change and kept next to its identity bytes, with
its own strong ETag, `Content-Encoding: gzip` and `Vary: Accept-Encoding`; conditional requests
compare against the representation the client gets. Checked on the raw bytes the server sends,
both where the server answers below the framework and where the framework does (a request with
`If-Modified-Since` takes that path).
"""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

import pytest

from serve import create_app, start_in_thread
from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.simulator import UpstreamSimulator

from .serve_fixtures import build_store, publish_images


@pytest.fixture(scope="module")
def sim():
    with UpstreamSimulator(disk_size=512 * 1024) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def running(tmp_path_factory, sim):
    root = build_store(tmp_path_factory.mktemp("gzip") / "store", sim).root
    app = create_app(DirectoryStore(root), refresh_seconds=0.1)
    base, stop = start_in_thread(app)
    yield base, app, root
    stop()


def raw_get(base: str, path: str, *headers: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = base.split("://")[1].split(":")
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


@pytest.mark.parametrize("key", [INDEX_KEY, IMAGES_KEY])
@pytest.mark.parametrize("framework", [False, True], ids=["fast-path", "framework"])
def test_catalog_documents_are_gzipped_for_clients_that_accept_it(running, key, framework):
    base, _app, root = running
    extra = ("If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT",) if framework else ()
    identity_bytes = (root / key).read_bytes()
    status, plain, body = raw_get(base, "/" + key, *extra)
    assert status == 200 and body == identity_bytes and "content-encoding" not in plain
    assert plain["vary"] == "Accept-Encoding"
    status, zipped, body = raw_get(base, "/" + key, "Accept-Encoding: gzip, deflate, br", *extra)
    assert status == 200 and zipped["content-encoding"] == "gzip" and zipped["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == identity_bytes and int(zipped["content-length"]) == len(body)
    assert zipped["etag"] != plain["etag"] and zipped["etag"].startswith('"')
    assert zipped["cache-control"] == plain["cache-control"] == "public, max-age=60"

    assert raw_get(base, "/" + key, "Accept-Encoding: gzip", f"If-None-Match: {zipped['etag']}", *extra)[0] == 304
    not_modified = raw_get(base, "/" + key, "Accept-Encoding: gzip", f"If-None-Match: {zipped['etag']}")
    assert not_modified[1]["etag"] == zipped["etag"] and not_modified[1]["content-encoding"] == "gzip"
    other = raw_get(base, "/" + key, "Accept-Encoding: gzip", f"If-None-Match: {plain['etag']}", *extra)
    assert other[0] == 200 and other[1]["content-encoding"] == "gzip", "the identity ETag is not the gzip one"
    assert raw_get(base, "/" + key, f"If-None-Match: {zipped['etag']}", *extra)[0] == 200
    for refused in ("gzip;q=0", "identity", "br, deflate", "*;q=0"):
        assert "content-encoding" not in raw_get(base, "/" + key, f"Accept-Encoding: {refused}", *extra)[1]
    assert raw_get(base, "/" + key, "Accept-Encoding: *", *extra)[1]["content-encoding"] == "gzip"
    head = raw_get(base, "/" + key, "Accept-Encoding: gzip", *extra, method="HEAD")
    assert head[2] == b"" and head[1]["content-length"] == zipped["content-length"]


def test_the_page_is_gzipped_and_cached_like_the_catalog(running):
    base, _app, _root = running
    status, plain, body = raw_get(base, "/")
    assert status == 200 and plain["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in plain["content-security-policy"] and "<script" not in body.decode()
    status, zipped, compressed = raw_get(base, "/", "Accept-Encoding: gzip")
    assert zipped["content-encoding"] == "gzip" and gzip.decompress(compressed) == body
    assert raw_get(base, "/", "Accept-Encoding: gzip", f"If-None-Match: {zipped['etag']}")[0] == 304
    assert raw_get(base, "/", f"If-None-Match: {plain['etag']}")[0] == 304
    assert len(compressed) < len(body) / 3


def test_compressed_once_per_catalog_change(tmp_path, sim):
    """Requests share the documents made when the catalog was loaded; a new catalog makes new ones
    (and a new page) once."""
    root = build_store(tmp_path / "store", sim, versions=("v1.12.0",), arches=("amd64",)).root
    app = create_app(DirectoryStore(root), refresh_seconds=0.05)
    base, stop = start_in_thread(app)
    try:
        old_page = raw_get(base, "/", "Accept-Encoding: gzip")[1]["etag"]
        before = app.state.catalog.snapshot.images
        old = raw_get(base, "/" + IMAGES_KEY, "Accept-Encoding: gzip")[1]["etag"]
        for _ in range(3):
            raw_get(base, "/" + IMAGES_KEY, "Accept-Encoding: gzip")
            time.sleep(0.06)  # past the revalidation interval: the store's catalog is unchanged
        assert app.state.catalog.snapshot.images is before, "the same compressed bytes for every request"
        loads = app.state.catalog.loads
        publish_images(DirectoryStore(root), sim, versions=("v1.12.1",), arches=("amd64",))
        deadline = time.monotonic() + 10
        while (answer := raw_get(base, "/" + IMAGES_KEY, "Accept-Encoding: gzip"))[1]["etag"] == old:
            assert time.monotonic() < deadline, "the new catalog was not picked up"
            time.sleep(0.05)
        assert gzip.decompress(answer[2]) == Path(root / IMAGES_KEY).read_bytes()
        assert app.state.catalog.loads == loads + 1
        after = app.state.catalog.snapshot.images
        raw_get(base, "/" + IMAGES_KEY, "Accept-Encoding: gzip")
        assert app.state.catalog.snapshot.images is after
        page = raw_get(base, "/", "Accept-Encoding: gzip")
        assert page[1]["etag"] != old_page and b"v1.12.1" in gzip.decompress(page[2])
    finally:
        stop()

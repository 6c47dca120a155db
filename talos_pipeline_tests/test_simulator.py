"""The upstream simulator, over real HTTP on loopback, and its qcow2 writer, checked by qemu-img."""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from talos_pipeline.simulator import (
    DEFAULT_RELEASES,
    VANILLA_SCHEMATIC,
    ImageKey,
    SimulatedRelease,
    UpstreamSimulator,
    load_releases,
    write_qcow2,
)
from talos_pipeline.simulator.command import add_arguments, main, parse_size, run
from talos_pipeline.simulator.qcow2 import Payload, expected_guest_bytes, plan_qcow2
from talos_pipeline.simulator.releases import factory_versions
from talos_pipeline_tests.fake_sigstore.fixtures import missing_tool

QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = pytest.mark.usefixtures("qemu_img")
DISK = 256 * 1024  # small images keep the file fast
QGA_SCHEMATIC = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"
VISIBLE_NEWEST_FIRST = ["v1.12.1", "v1.12.0", "v1.11.6", "v1.12.0-beta.1", "v1.11.5", "v1.11.0-rc.0"]
FACTORY_VERSIONS = ["v1.11.5", "v1.11.6", "v1.12.0-beta.1", "v1.12.0", "v1.12.1"]


# ---------------------------------------------------------------------------- helpers
class Answer:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self):
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_PLAIN = urllib.request.build_opener(_NoRedirect)
_FOLLOW = urllib.request.build_opener()


def fetch(
    url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None, follow: bool = False
) -> Answer:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with (_FOLLOW if follow else _PLAIN).open(request, timeout=30) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.headers, exc.read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_path(
    version: str = "v1.12.0", arch: str = "amd64", platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC
) -> str:
    return f"/image/{schematic}/{version}/{platform}-{arch}.qcow2"


def raw_get(sim: UpstreamSimulator, path: str):
    """GET with http.client; returns (Content-Length, bytes received, exception or None)."""
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        length = int(response.headers["Content-Length"])
        try:
            return length, len(response.read()), None
        except http.client.IncompleteRead as exc:
            return length, len(exc.partial), exc
        except OSError as exc:
            return length, -1, exc
    finally:
        conn.close()


@pytest.fixture
def qemu_img() -> str:
    """The qcow2 validity oracle."""
    if QEMU_IMG is None:
        missing_tool("qemu-img is not installed (apt-get install qemu-utils); it is the qcow2 validity oracle")
    return QEMU_IMG


@pytest.fixture(scope="module")
def shared_sim():
    """A read-only simulator shared by tests that do not change its state."""
    with UpstreamSimulator(disk_size=DISK) as sim:
        yield sim


@pytest.fixture
def sim():
    with UpstreamSimulator(disk_size=DISK) as sim:
        yield sim


# ---------------------------------------------------------------------------- qcow2 writer
def _write(path, **kwargs) -> int:
    with open(path, "wb") as f:
        return write_qcow2(f, **kwargs)


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=60)


@needs_qemu_img
@pytest.mark.parametrize(
    "data_size, cluster_bits, virtual_size",
    [
        (0, 16, None),
        (1000, 16, None),
        (DISK, 16, None),
        (3_000_000, 9, 1 << 30),  # 512-byte clusters: many L2 tables and refcount blocks
        (1_500_000, 12, 5 * 1024 * 1024),
        (100_000, 21, None),
    ],
)
def test_qcow2_passes_qemu_img_check_and_info(tmp_path, data_size, cluster_bits, virtual_size):
    path = tmp_path / "disk.qcow2"
    size = _write(path, data_size=data_size, seed=b"seed", virtual_size=virtual_size, cluster_bits=cluster_bits)
    assert size == path.stat().st_size
    check = _qemu_img("check", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout
    info = json.loads(_qemu_img("info", "--output=json", str(path)).stdout)
    assert info["format"] == "qcow2"
    expected_virtual = virtual_size if virtual_size is not None else max(64 * 1024 * 1024, data_size)
    assert info["virtual-size"] == expected_virtual
    assert info["cluster-size"] == 1 << cluster_bits
    assert info["format-specific"]["data"]["compat"] == "1.1"  # qcow2 v3


@needs_qemu_img
def test_qcow2_guest_content_is_the_seeded_stream(tmp_path):
    path, raw = tmp_path / "disk.qcow2", tmp_path / "disk.raw"
    data_size = 700_001  # not a cluster multiple: the tail of the last cluster must read as zeros
    _write(path, data_size=data_size, seed=b"content", virtual_size=2 * 1024 * 1024, cluster_bits=12)
    converted = _qemu_img("convert", "-O", "raw", str(path), str(raw))
    assert converted.returncode == 0, converted.stderr
    guest = raw.read_bytes()
    assert len(guest) == 2 * 1024 * 1024
    assert guest[:data_size] == expected_guest_bytes(b"content", data_size)
    assert guest[data_size:] == bytes(len(guest) - data_size)


@needs_qemu_img
def test_qcow2_aes_ctr_payload_with_8k_clusters(tmp_path):
    path, raw = tmp_path / "disk.qcow2", tmp_path / "disk.raw"
    seed = hashlib.sha256(b"production").digest()
    data_size = 3 * 1024 * 1024 + 5  # several 1 MiB chunks and a partial cluster
    _write(path, data_size=data_size, seed=seed, virtual_size=8 * 1024 * 1024, cluster_bits=13, payload=Payload.AES_CTR)
    check = _qemu_img("check", str(path))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    assert json.loads(_qemu_img("info", "--output=json", str(path)).stdout)["cluster-size"] == 8192
    assert _qemu_img("convert", "-O", "raw", str(path), str(raw)).returncode == 0
    guest = raw.read_bytes()
    assert guest[:data_size] == expected_guest_bytes(seed, data_size, Payload.AES_CTR)
    assert guest[:data_size] != expected_guest_bytes(seed, data_size)  # not the default stream
    with pytest.raises(ValueError, match="32-byte seed"):
        write_qcow2(io.BytesIO(), data_size=1, seed=b"short", payload=Payload.AES_CTR)


def test_qcow2_is_deterministic_and_seed_dependent():
    def image(**kwargs) -> bytes:
        buffer = io.BytesIO()
        write_qcow2(buffer, **kwargs)
        return buffer.getvalue()

    a = image(data_size=300_000, seed=b"one")
    assert sha256(a) == sha256(image(data_size=300_000, seed=b"one"))
    assert sha256(a) != sha256(image(data_size=300_000, seed=b"two"))
    assert a[:4] == b"QFI\xfb" and int.from_bytes(a[4:8], "big") == 3
    big = image(data_size=9 * 1024 * 1024, seed=b"pipelined")  # above the threshold: writer thread
    assert sha256(big) == sha256(image(data_size=9 * 1024 * 1024, seed=b"pipelined"))
    assert len(big) == plan_qcow2(data_size=9 * 1024 * 1024).file_size


def test_qcow2_rejects_impossible_arguments():
    with pytest.raises(ValueError, match="smaller than the data"):
        write_qcow2(io.BytesIO(), data_size=10 * 1024 * 1024, seed=b"x", virtual_size=1024 * 1024)
    with pytest.raises(ValueError, match="cluster_bits"):
        write_qcow2(io.BytesIO(), data_size=1, seed=b"x", cluster_bits=8)
    with pytest.raises(ValueError, match="seed"):
        write_qcow2(io.BytesIO(), data_size=1, seed=b"")


# ---------------------------------------------------------------------------- releases data
def test_default_releases_shape():
    tags = {r.tag: r for r in DEFAULT_RELEASES}
    assert tags["v1.12.2"].draft and tags["v1.12.0-beta.1"].prerelease and tags["v1.11.0-rc.0"].prerelease
    assert factory_versions(DEFAULT_RELEASES) == FACTORY_VERSIONS


def test_load_releases(tmp_path):
    good = tmp_path / "releases.json"
    good.write_text(
        json.dumps(
            [
                {"tag": "v1.13.0", "published_at": "2026-02-01T10:00:00Z", "prerelease": False},
                {"tag": "v1.13.1-rc.0", "published_at": "2026-02-10T10:00:00Z"},
                {"tag": "v1.13.1", "published_at": "2026-02-20T10:00:00Z", "prerelease": False, "draft": True},
            ]
        )
    )
    releases = load_releases(good)
    assert [r.tag for r in releases] == ["v1.13.0", "v1.13.1-rc.0", "v1.13.1"]
    assert releases[1].prerelease is True and releases[2].draft is True

    cases = [
        ("{}", "expected a JSON list"),
        ("[1]", "entry 0: expected an object"),
        ('[{"tag": "v1.0.0"}]', r"entry 0 \(v1.0.0\): missing required field 'published_at'"),
        ('[{"tag": "v1.0.0", "published_at": "2025-01-01"}]', r"entry 0 \(v1.0.0\): timestamp '2025-01-01'"),
        ('[{"tag": "v1.0.0", "published_at": "2025-01-01T00:00:00Z", "prerelase": true}]', "unknown field"),
        ('[{"tag": "v1/0", "published_at": "2025-01-01T00:00:00Z"}]', "not usable"),
        ("not json", "not valid JSON"),
    ]
    for text, message in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_releases(bad)


# ---------------------------------------------------------------------------- GitHub API
def test_releases_list_newest_first_without_drafts(shared_sim):
    answer = fetch(shared_sim.releases_url)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    releases = answer.json()
    assert [r["tag_name"] for r in releases] == VISIBLE_NEWEST_FIRST
    first = releases[0]
    for field in ("id", "tag_name", "name", "draft", "prerelease", "created_at", "published_at", "html_url", "assets"):
        assert field in first
    assert first["html_url"] == "https://github.com/siderolabs/talos/releases/tag/v1.12.1"
    assert first["published_at"] == "2025-12-30T15:22:09Z" and first["assets"] == []
    assert first["created_at"] < first["published_at"]
    assert {r["tag_name"]: r["prerelease"] for r in releases}["v1.12.0-beta.1"] is True
    assert "Link" not in answer.headers  # everything fits on the default page


def test_releases_pagination_follows_link_headers(shared_sim):
    answer = fetch(f"{shared_sim.releases_url}?per_page=2")
    links = _links(answer.headers["Link"])
    assert set(links) == {"next", "last"}
    assert urlsplit(links["next"]).path.startswith("/repositories/")
    assert links["last"].endswith("per_page=2&page=3")
    tags = [r["tag_name"] for r in answer.json()]
    url = links["next"]
    while url:  # follow verbatim, as a client must
        page = fetch(url)
        assert page.status == 200
        tags += [r["tag_name"] for r in page.json()]
        page_links = _links(page.headers.get("Link", ""))
        assert {"prev", "first"} <= set(page_links)
        url = page_links.get("next")
    assert tags == VISIBLE_NEWEST_FIRST
    assert fetch(f"{shared_sim.releases_url}?per_page=2&page=9").json() == []
    assert len(fetch(f"{shared_sim.releases_url}?per_page=1000").json()) == len(VISIBLE_NEWEST_FIRST)


def _links(header: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        url, rel = part.split(";", 1)
        out[rel.strip().removeprefix('rel="').removesuffix('"')] = url.strip()[1:-1]
    return out


def test_releases_etag_and_304(sim):
    first = fetch(sim.releases_url)
    etag = first.headers["ETag"]
    assert etag
    again = fetch(sim.releases_url, headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert again.headers["ETag"] == etag
    sim.add_release("v1.12.3", published_at="2026-01-15T12:00:00Z")
    changed = fetch(sim.releases_url, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert changed.json()[0]["tag_name"] == "v1.12.3"
    assert "v1.12.3" in fetch(f"{sim.factory_url}/versions").json()


def test_release_by_tag_and_drafts(sim):
    base = sim.releases_url
    assert fetch(f"{base}/tags/v1.12.0").json()["tag_name"] == "v1.12.0"
    for tag in ("v1.12.2", "v9.9.9"):  # a draft is invisible, like a missing release
        answer = fetch(f"{base}/tags/{tag}")
        assert answer.status == 404 and answer.json()["message"] == "Not Found"
    assert fetch(f"{base}/latest").json()["tag_name"] == "v1.12.1"
    sim.add_release("v1.12.2", published_at="2026-01-02T08:00:00Z")  # the draft gets published
    assert fetch(f"{base}/tags/v1.12.2").status == 200
    assert fetch(base).json()[0]["tag_name"] == "v1.12.2"


def test_rate_limit_headers_and_budgets(sim):
    url = sim.releases_url
    first, second = fetch(url), fetch(url)
    assert first.headers["x-ratelimit-limit"] == "60"
    assert int(first.headers["x-ratelimit-remaining"]) - int(second.headers["x-ratelimit-remaining"]) == 1
    assert int(second.headers["x-ratelimit-used"]) == 2
    assert int(second.headers["x-ratelimit-reset"]) > time.time() + 3000
    etag = second.headers["ETag"]
    anonymous_304 = fetch(url, headers={"If-None-Match": etag})
    assert anonymous_304.status == 304 and anonymous_304.headers["x-ratelimit-used"] == "3"  # 304s cost anonymously

    auth = {"Authorization": "Bearer test-token"}
    a = fetch(url, headers=auth)
    assert a.headers["x-ratelimit-limit"] == "5000" and a.headers["x-ratelimit-remaining"] == "4999"
    free = fetch(url, headers={**auth, "If-None-Match": etag})
    assert free.status == 304 and free.headers["x-ratelimit-remaining"] == "4999"  # free with a token


def test_rate_limit_exhaustion_answers_403_until_reset(sim):
    sim.rate_limit(2, reset_in=0.5)
    assert fetch(sim.releases_url).status == 200
    last = fetch(sim.releases_url)
    assert last.status == 200 and last.headers["x-ratelimit-remaining"] == "0"
    blocked = fetch(sim.releases_url)
    assert blocked.status == 403
    assert blocked.headers["x-ratelimit-remaining"] == "0"
    reset = int(blocked.headers["x-ratelimit-reset"])
    assert "rate limit exceeded" in blocked.json()["message"]
    assert fetch(f"{sim.releases_url}/tags/v1.12.0").status == 403  # the whole API, not one URL
    assert fetch(f"{sim.factory_url}/versions").status == 200  # the factory has no rate limit
    time.sleep(max(0.0, reset - time.time()) + 0.05)
    assert fetch(sim.releases_url).status == 200


def test_rate_limit_natural_budget(sim):
    sim.rate_limit_unauthenticated = 3
    statuses = [fetch(sim.releases_url).status for _ in range(4)]
    assert statuses == [200, 200, 200, 403]
    assert fetch(sim.releases_url, headers={"Authorization": "token abc"}).status == 200


# ---------------------------------------------------------------------------- factory
def test_versions_prerelease_rule(shared_sim):
    answer = fetch(f"{shared_sim.factory_url}/versions")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.json() == FACTORY_VERSIONS  # no draft, no prerelease of the older minor


@pytest.mark.parametrize(
    "path, status, body",
    [
        (image_path("v1.99.0"), 404, "version 1.99.0 is not available\n"),
        (image_path("1.99.0"), 404, "version 1.99.0 is not available\n"),
        (image_path("v1.11.0-rc.0"), 404, "version 1.11.0-rc.0 is not available\n"),  # listed by GitHub only
        (image_path("v1.12.2"), 404, "version 1.12.2 is not available\n"),  # draft
        (image_path("latest"), 500, "internal server error\n"),
        (image_path("v1.12"), 500, "internal server error\n"),
        (image_path(schematic="0" * 64), 404, "schematic not found\n"),
        ("/schematics/" + "0" * 64, 404, "schematic not found\n"),
        ("/nothing/here", 404, "404 page not found\n"),
    ],
)
def test_factory_errors_verbatim(shared_sim, path, status, body):
    answer = fetch(shared_sim.factory_url + path)
    assert (answer.status, answer.text) == (status, body)
    assert answer.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "path, status",
    [
        (image_path(arch="s390x"), 400),
        (image_path(platform="toaster"), 400),
        (f"/image/{VANILLA_SCHEMATIC}/v1.12.0/nocloud.qcow2", 400),
        (f"/image/{VANILLA_SCHEMATIC}/v1.12.0/nocloud-amd64.iso", 400),
        (f"/image/{VANILLA_SCHEMATIC}/v1.12.0/extra/nocloud-amd64.qcow2", 400),
        (f"/image/{VANILLA_SCHEMATIC}/v1.12.0/nocloud-amd64.qcow2.sha256", 402),  # Enterprise only
    ],
)
def test_factory_bad_paths(shared_sim, path, status):
    answer = fetch(shared_sim.factory_url + path)
    assert answer.status == status
    assert answer.text.endswith("\n") and answer.headers["Content-Type"].startswith("text/plain")


@needs_qemu_img
def test_image_head_get_headers_and_bytes(shared_sim, tmp_path):
    url = shared_sim.factory_url + image_path("v1.12.0", "arm64", "metal")
    head = fetch(url, method="HEAD")
    get = fetch(url, headers={"Range": "bytes=0-99"})  # no Range support: full 200
    assert head.status == get.status == 200
    assert head.body == b""
    assert int(head.headers["Content-Length"]) == int(get.headers["Content-Length"]) == len(get.body)
    for answer in (head, get):
        assert answer.headers["Content-Type"] == "application/x-qemu-disk"
        assert answer.headers["Content-Disposition"] == 'attachment; filename="metal-arm64.qcow2"'
        assert "ETag" not in answer.headers and "Last-Modified" not in answer.headers
    assert sha256(get.body) == shared_sim.image_sha256("v1.12.0", "arm64", "metal")
    disk = tmp_path / "metal-arm64.qcow2"
    disk.write_bytes(get.body)
    assert _qemu_img("check", str(disk)).returncode == 0
    info = json.loads(_qemu_img("info", "--output=json", str(disk)).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * 1024 * 1024
    # version without the "v" is the same image; other images differ
    assert sha256(fetch(shared_sim.factory_url + image_path("1.12.0", "arm64", "metal")).body) == sha256(get.body)
    assert sha256(fetch(shared_sim.factory_url + image_path("v1.12.0", "amd64", "metal")).body) != sha256(get.body)


def test_download_counting(sim):
    url = sim.factory_url + image_path("v1.12.1", "amd64")
    fetch(url, method="HEAD")
    assert sim.downloads("v1.12.1", "amd64") == 0
    fetch(url)
    fetch(url)
    assert sim.downloads("v1.12.1", "amd64") == 2
    assert sim.downloads("1.12.1", "amd64") == 2
    assert sim.downloads("v1.12.1", "arm64") == 0 and sim.downloads("v1.12.1", "amd64", "metal") == 0


def test_drift_changes_bytes_of_the_same_url(sim):
    url = sim.factory_url + image_path("v1.12.0", "amd64")
    before = fetch(url).body
    assert fetch(url).body == before
    sim.drift("v1.12.0", "amd64")
    after = fetch(url).body
    assert after != before and len(after) == len(before)
    assert after[:4] == b"QFI\xfb"
    assert sha256(after) == sim.image_sha256("v1.12.0", "amd64")
    assert fetch(sim.factory_url + image_path("v1.12.0", "arm64")).status == 200  # others unaffected
    assert sim.downloads("v1.12.0", "amd64") == 3


def test_redirect_to_cdn():
    with UpstreamSimulator(disk_size=DISK, redirect=True) as sim:
        url = sim.factory_url + image_path("v1.12.0", "amd64")
        head = fetch(url, method="HEAD")
        assert head.status == 200 and int(head.headers["Content-Length"]) > DISK  # HEAD never redirects
        moved = fetch(url)
        assert moved.status == 302
        location = moved.headers["Location"]
        assert urlsplit(location).path.startswith("/cdn/") and location.endswith("/nocloud-amd64.qcow2")
        assert sim.downloads("v1.12.0", "amd64") == 0  # a 302 is not a download
        followed = fetch(url, follow=True)
        assert followed.status == 200 and followed.headers["Content-Type"] == "application/x-qemu-disk"
        assert int(followed.headers["Content-Length"]) == len(followed.body) == int(head.headers["Content-Length"])
        assert sha256(followed.body) == sim.image_sha256("v1.12.0", "amd64")
        assert sim.downloads("v1.12.0", "amd64") == 1
        assert fetch(sim.url + "/cdn/" + "0" * 32 + "/nocloud-amd64.qcow2").status == 404


def test_first_byte_delay_only_for_cold_images():
    with UpstreamSimulator(disk_size=DISK, first_byte_delay=0.4) as sim:
        url = sim.factory_url + image_path("v1.12.0", "amd64")
        started = time.monotonic()
        fetch(url, method="HEAD")  # the first request, HEAD included, waits for the "build"
        assert time.monotonic() - started >= 0.35
        started = time.monotonic()
        fetch(url)
        assert time.monotonic() - started < 0.3
        sim.drift("v1.12.0", "amd64")  # a rebuilt image is cold again
        started = time.monotonic()
        fetch(url)
        assert time.monotonic() - started >= 0.35


def test_concurrent_first_requests_generate_once_and_cache_dir_is_reused(tmp_path):
    cache = tmp_path / "cache"
    with UpstreamSimulator(disk_size=DISK, cache_dir=cache) as sim:
        url = sim.factory_url + image_path("v1.11.6", "amd64")
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: fetch(url).body, range(8)))
        assert len({sha256(b) for b in bodies}) == 1
        files = sorted(cache.iterdir())
        assert len(files) == 1 and files[0].suffix == ".qcow2"  # no temp files left behind
        mtime = files[0].stat().st_mtime_ns
    assert cache.exists()  # a given cache_dir is kept
    with UpstreamSimulator(disk_size=DISK, cache_dir=cache) as again:
        assert sha256(fetch(again.factory_url + image_path("v1.11.6", "amd64")).body) == sha256(bodies[0])
    assert files[0].stat().st_mtime_ns == mtime  # served from the cache, not regenerated


def test_temporary_cache_dir_is_removed_on_stop():
    sim = UpstreamSimulator(disk_size=DISK).start()
    fetch(sim.factory_url + image_path())
    cache = sim.cache_dir
    assert any(cache.iterdir())
    sim.stop()
    assert not cache.exists()


def test_post_schematics(sim):
    url = f"{sim.factory_url}/schematics"
    vanilla = fetch(url, method="POST", data=b"customization: {}\n")
    assert vanilla.status == 201 and vanilla.json() == {"id": VANILLA_SCHEMATIC}
    assert fetch(url, method="POST", data=b'{"customization": {}}').json()["id"] == VANILLA_SCHEMATIC

    assert fetch(sim.factory_url + image_path(schematic=QGA_SCHEMATIC)).status == 404  # not registered yet
    qga_yaml = b"customization:\n  systemExtensions:\n    officialExtensions:\n      - siderolabs/qemu-guest-agent\n"
    qga = fetch(url, method="POST", data=qga_yaml, headers={"Content-Type": "application/yaml"})
    assert qga.status == 201 and qga.json()["id"] == QGA_SCHEMATIC  # the id the real factory gives
    extensions = {"officialExtensions": ["siderolabs/qemu-guest-agent"]}
    qga_json = json.dumps({"customization": {"systemExtensions": extensions}})
    assert fetch(url, method="POST", data=qga_json.encode()).json()["id"] == QGA_SCHEMATIC
    stored = fetch(f"{sim.factory_url}/schematics/{QGA_SCHEMATIC}")
    assert stored.status == 200 and "siderolabs/qemu-guest-agent" in stored.text
    assert fetch(f"{sim.factory_url}/schematics/{VANILLA_SCHEMATIC}").text == "customization: {}\n"

    image = fetch(sim.factory_url + image_path(schematic=QGA_SCHEMATIC))
    assert image.status == 200
    assert image.body != fetch(sim.factory_url + image_path()).body  # the schematic is part of the seed

    for bad in (b"foo: bar\n", b"customization:\n  systemExtension: {}\n", b"- a\n", b""):
        answer = fetch(url, method="POST", data=bad)
        assert answer.status == 400, bad
        assert answer.headers["Content-Type"].startswith("text/plain") and answer.text.endswith("\n")
    assert "field foo not found" in fetch(url, method="POST", data=b"foo: bar\n").text


STORAGE = ["siderolabs/iscsi-tools", "siderolabs/util-linux-tools"]
NEWER_ONLY = "siderolabs/nvidia-open-gpu-kernel-modules-production"  # offered from v1.12.0 on


def schematic_with(*extensions: str) -> bytes:
    return json.dumps({"customization": {"systemExtensions": {"officialExtensions": list(extensions)}}}).encode()


def register(sim: UpstreamSimulator, body: bytes) -> str:
    answer = fetch(f"{sim.factory_url}/schematics", method="POST", data=body)
    assert answer.status == 201, answer.text
    return answer.json()["id"]


def test_official_extensions_per_version(shared_sim):
    def listing(version: str) -> Answer:
        return fetch(f"{shared_sim.factory_url}/version/{version}/extensions/official")

    answer = listing("v1.12.0")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")  # JSON all the same
    extensions = answer.json()
    names = [e["name"] for e in extensions]
    wanted = {"siderolabs/qemu-guest-agent", "siderolabs/zfs", "siderolabs/drbd", "siderolabs/tailscale", *STORAGE}
    assert wanted <= set(names) and any(n.startswith("siderolabs/nvidia-") for n in names)
    for extension in extensions:
        assert set(extension) == {"name", "ref", "digest", "author", "description"}
        assert extension["ref"].startswith(f"ghcr.io/{extension['name']}:")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", extension["digest"])
    zfs = {e["name"]: e for e in extensions}["siderolabs/zfs"]
    assert zfs["ref"].endswith("-v1.12.0")  # kernel modules are built per Talos release
    older = [e["name"] for e in listing("v1.11.5").json()]
    assert NEWER_ONLY in names and NEWER_ONLY not in older and set(older) < set(names)
    assert listing("1.11.5").json() == listing("v1.11.5").json()
    for version, status, body in [
        ("v1.99.0", 404, "version 1.99.0 is not available\n"),
        ("v1.11.0-rc.0", 404, "version 1.11.0-rc.0 is not available\n"),  # GitHub lists it, the factory does not
        ("latest", 500, "internal server error\n"),
    ]:
        assert (listing(version).status, listing(version).text) == (status, body)
    refused = fetch(f"{shared_sim.factory_url}/version/v1.12.0/extensions/official", method="POST", data=b"{}")
    assert refused.status == 405


def test_images_of_schematics_with_extensions(sim):
    storage = register(sim, schematic_with(*STORAGE))
    assert register(sim, schematic_with(*STORAGE)) == storage  # idempotent
    canonical = fetch(f"{sim.factory_url}/schematics/{storage}").body
    assert sha256(canonical) == storage  # the id is the sha256 of the canonical YAML
    vanilla = fetch(sim.image_url("v1.12.0", "amd64")).body
    extended = fetch(sim.image_url("v1.12.0", "amd64", schematic=storage)).body
    assert extended[:4] == b"QFI\xfb" and sha256(extended) != sha256(vanilla)

    newer_only = register(sim, schematic_with("siderolabs/qemu-guest-agent", NEWER_ONLY))
    builds = sim.build_stats().started
    for method in ("GET", "HEAD"):
        refused = fetch(sim.image_url("v1.11.5", "amd64", schematic=newer_only), method=method)
        assert refused.status == 400 and refused.headers["Content-Type"].startswith("text/plain")
    refused = fetch(sim.image_url("v1.11.5", "amd64", schematic=newer_only))
    assert refused.text == f'official extension "{NEWER_ONLY}" is not available for Talos version v1.11.5\n'
    assert sim.build_stats().started == builds and sim.total_downloads() == 2  # nothing built or sent
    assert fetch(sim.image_url("v1.12.0", "amd64", schematic=newer_only)).status == 200

    unknown = register(sim, schematic_with("siderolabs/does-not-exist"))  # schematics are not checked...
    assert fetch(sim.image_url("v1.12.1", "arm64", schematic=unknown)).status == 400  # ...images are
    renamed = register(sim, schematic_with("siderolabs/nvidia-open-gpu-kernel-modules"))  # the old name
    assert fetch(sim.image_url("v1.11.5", "amd64", schematic=renamed)).status == 200


# ---------------------------------------------------------------------------- faults
def test_fault_500_and_503(sim):
    url = f"{sim.factory_url}/versions"
    sim.set_fault("/versions", "500", count=1)
    answer = fetch(url)
    assert (answer.status, answer.text) == (500, "500 internal server error\n")
    assert fetch(url).status == 200  # count=1: only the next request
    sim.set_fault("/", "503")  # persistent, matches every path
    assert [fetch(url).status for _ in range(3)] == [503, 503, 503]
    assert fetch(sim.releases_url).status == 503
    sim.clear_faults()
    assert fetch(url).status == 200


def test_fault_truncate_sends_fewer_bytes_than_content_length(sim):
    path = image_path("v1.12.0", "amd64")
    sim.set_fault("/image/", "truncate", count=1)
    fetch(sim.factory_url + path, method="HEAD")  # HEAD has no body: the fault waits for a GET
    length, received, error = raw_get(sim, path)
    assert isinstance(error, http.client.IncompleteRead)
    assert 0 < received < length
    assert sim.downloads("v1.12.0", "amd64") == 1  # a body was started
    length2, received2, error2 = raw_get(sim, path)
    assert error2 is None and received2 == length2 == length


def test_fault_truncate_applies_to_api_bodies_too(sim):
    sim.set_fault("/repos/", "truncate", count=1)
    length, received, error = raw_get(sim, urlsplit(sim.releases_url).path)
    assert error is not None and received < length


def test_fault_reset_aborts_mid_body(sim):
    path = image_path("v1.12.0", "amd64")
    sim.set_fault(path, "reset", count=1)
    length, received, error = raw_get(sim, path)
    assert error is not None and received < length
    assert raw_get(sim, path)[2] is None


def test_fault_slow_first_byte(sim):
    sim.slow_first_byte_seconds = 0.3
    sim.set_fault("/versions", "slow_first_byte", count=1)
    started = time.monotonic()
    assert fetch(f"{sim.factory_url}/versions").status == 200
    assert time.monotonic() - started >= 0.25
    started = time.monotonic()
    fetch(f"{sim.factory_url}/versions")
    assert time.monotonic() - started < 0.25
    slow = sim.set_fault("/versions", "slow_first_byte", count=1, seconds=0.6)
    started = time.monotonic()
    assert fetch(f"{sim.factory_url}/versions").status == 200
    assert time.monotonic() - started >= 0.55 and slow.applied == 1


@pytest.mark.parametrize("fault", ["429", "403"])
def test_fault_rate_limit_answers(sim, fault):
    sim.set_fault("/repos/", fault, count=1)
    answer = fetch(sim.releases_url)
    assert answer.status == int(fault)
    assert answer.headers["x-ratelimit-remaining"] == "0"
    assert int(answer.headers["x-ratelimit-reset"]) >= int(time.time())
    assert "message" in answer.json()
    if fault == "429":
        assert answer.headers["retry-after"] == "1"
    assert fetch(sim.releases_url).status == 200


def test_set_fault_validates(sim):
    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_fault("/", "explode")
    with pytest.raises(ValueError, match="count"):
        sim.set_fault("/", "500", count=0)
    with pytest.raises(ValueError, match="seconds applies to the stall and slow_first_byte faults"):
        sim.set_fault("/", "500", seconds=1)
    with pytest.raises(ValueError, match="seconds must be a non-negative number"):
        sim.set_fault("/", "stall", seconds=-1)


def test_stall_longer_than_the_read_timeout_looks_like_a_dead_connection():
    assert UpstreamSimulator().stall_seconds == 2.0  # the default
    with UpstreamSimulator(disk_size=DISK, stall_seconds=60) as sim:
        path = image_path("v1.12.0", "amd64")
        whole = fetch(sim.factory_url + path).body
        stall = sim.set_fault("/image/", "stall", count=1)
        conn = http.client.HTTPConnection(sim.host, sim.port, timeout=0.5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()  # headers and half the body arrive, then nothing
            assert int(response.headers["Content-Length"]) == len(whole)
            with pytest.raises(TimeoutError):
                response.read()
        finally:
            conn.close()
        assert stall.applied == 1 and stall.wait(0)
        short = sim.set_fault("/image/", "stall", count=1, seconds=0.2)  # this fault's own pause
        started = time.monotonic()
        assert fetch(sim.factory_url + path).body == whole
        assert time.monotonic() - started >= 0.2 and short.applied == 1

        def handlers() -> list[threading.Thread]:
            return [t for t in threading.enumerate() if "process_request_thread" in t.name]

        assert handlers(), "the first request's handler is still in its 60 s stall"
    deadline = time.monotonic() + 10
    while handlers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not handlers(), "stop() did not end the stall"


# ---------------------------------------------------------------------------- production profile
MIB = 1024 * 1024
SCALE = 0.002  # about 390 KiB per amd64 image


def production(**kwargs) -> UpstreamSimulator:
    """The production profile, small, with instant builds unless a test asks for cold ones."""
    kwargs.setdefault("scale", SCALE)
    kwargs.setdefault("first_byte_delay", 0)
    return UpstreamSimulator(profile="production", **kwargs)


@pytest.fixture(scope="module")
def shared_production():
    with production(download_tick_seconds=0) as sim:
        yield sim


def test_production_release_history(shared_production):
    sim = shared_production
    listing = fetch(f"{sim.releases_url}?per_page=100").json()
    tags = [r["tag_name"] for r in listing]
    stable = [t for t in tags if re.fullmatch(r"v\d+\.\d+\.\d+", t)]
    minors = Counter(t.rsplit(".", 1)[0] for t in stable)
    assert set(minors) == {"v1.10", "v1.11", "v1.12", "v1.13"} and min(minors.values()) >= 5
    assert len(stable) >= 30
    published = [r["published_at"] for r in listing]
    assert published == sorted(published, reverse=True)  # newest first, minors interleaved
    drafts = [r.tag for r in sim.releases if r.draft]
    assert len(drafts) >= 2 and not set(drafts) & set(tags)  # hidden from GitHub's listing
    versions = fetch(f"{sim.factory_url}/versions").json()
    assert set(stable) <= set(versions)
    prereleases = [v for v in versions if "-" in v]
    assert prereleases and {v.split("-")[0] for v in prereleases} == {"v1.14.0"}  # newest minor only
    assert {"v1.13.0-rc.0", "v1.12.0-beta.1"} <= set(tags) - set(versions)  # older prereleases: GitHub only
    flags = {r["tag_name"]: r["prerelease"] for r in listing}
    assert flags["v1.13.0-rc.0"] is False  # a "-rc" tag GitHub does not flag: clients must look at the tag
    assert "release-1.13" in tags and "release-1.13" not in versions  # not semver
    for asset in listing[0]["assets"]:
        assert asset["digest"].startswith("sha256:") and asset["size"] > 0 and asset["download_count"] > 0
    assert {"metal-amd64.raw.zst", "sha256sum.txt"} <= {a["name"] for a in listing[0]["assets"]}
    assert "Link" in fetch(sim.releases_url).headers  # the default page of 30 does not hold them all


def test_production_listing_etag_changes_with_download_counts():
    with production(download_tick_seconds=0) as sim:
        url = f"{sim.releases_url}?per_page=100"
        first = fetch(url)
        etag = first.headers["ETag"]
        assert fetch(url, headers={"If-None-Match": etag}).status == 304
        sim.tick_downloads()
        second = fetch(url, headers={"If-None-Match": etag})
        assert second.status == 200 and second.headers["ETag"] != etag

        def without_counts(releases):
            return [{**r, "assets": [{**a, "download_count": 0} for a in r["assets"]]} for r in releases]

        assert without_counts(second.json()) == without_counts(first.json())  # the same releases
        before = [a["download_count"] for r in first.json() for a in r["assets"]]
        after = [a["download_count"] for r in second.json() for a in r["assets"]]
        assert all(b > a for a, b in zip(before, after, strict=True))
    with production(download_tick_seconds=0.2) as moving:  # counts also grow by themselves
        url = f"{moving.releases_url}?per_page=100"
        etag = fetch(url).headers["ETag"]
        deadline = time.monotonic() + 10
        while fetch(url, headers={"If-None-Match": etag}).status == 304 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fetch(url, headers={"If-None-Match": etag}).status == 200


def test_production_cold_builds_run_six_at_a_time():
    with production(first_byte_delay=1.0) as sim:
        urls = [sim.image_url(v, "amd64") for v in sim.versions()[:10]]
        started = time.monotonic()
        with ThreadPoolExecutor(len(urls)) as pool:
            heads = list(pool.map(lambda url: fetch(url, method="HEAD"), urls))  # HEAD builds too
        elapsed = time.monotonic() - started
        assert [h.status for h in heads] == [200] * len(urls)
        stats = sim.build_stats()
        assert (stats.started, stats.max_concurrent, stats.queue_waits) == (10, 6, 4)
        assert elapsed >= 1.9  # four requests waited for a slot, then for their own build
        assert (stats.running, stats.queued) == (0, 0)

        assert fetch(urls[0], method="HEAD").status == 200
        assert sim.build_stats().started == 10  # built once, cached since
        cold = sim.image_url(sim.versions()[-1], "arm64")
        with ThreadPoolExecutor(4) as pool:
            assert {a.status for a in pool.map(lambda _: fetch(cold, method="HEAD"), range(4))} == {200}
        assert sim.build_stats().started == 11  # four requests for one image share one build


def test_production_redirects_only_built_images_and_never_heads():
    with production() as sim:
        url = sim.image_url("v1.13.0", "amd64")
        built_now = fetch(url)  # cold: the factory builds it and answers directly
        assert built_now.status == 200 and sim.downloads("v1.13.0", "amd64") == 1
        head = fetch(url, method="HEAD")
        assert head.status == 200 and "Location" not in head.headers
        cached = fetch(url)
        assert cached.status == 302
        location = cached.headers["Location"]
        assert location.startswith(f"{sim.url}/cdn/") and location.endswith("/nocloud-amd64.qcow2")
        assert sim.downloads("v1.13.0", "amd64") == 1  # a 302 is not a download
        followed = fetch(url, follow=True)
        assert followed.body == built_now.body and sim.downloads("v1.13.0", "amd64") == 2
        other = sim.image_url("v1.13.0", "arm64", "metal")
        assert fetch(other, method="HEAD").status == 200  # a HEAD builds the image...
        assert fetch(other).status == 302  # ...so the first GET is already redirected


@needs_qemu_img
def test_production_images_are_qcow2_with_8k_clusters(shared_production):
    path = shared_production.image_path("v1.12.0", "amd64")
    check = _qemu_img("check", str(path))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    info = json.loads(_qemu_img("info", "--output=json", str(path)).stdout)
    assert info["format"] == "qcow2" and info["cluster-size"] == 8192
    assert info["virtual-size"] == 1246 * MIB  # about 1.2 GiB, like the factory's disks


def test_production_sizes_per_arch_follow_the_scale():
    expected = {"amd64": 191 * MIB, "arm64": 86 * MIB}
    for scale in (0.01, 0.02):
        with production(scale=scale) as sim:
            for arch, size in expected.items():
                lengths = [
                    int(fetch(sim.image_url(v, arch), method="HEAD").headers["Content-Length"])
                    for v in sim.versions()[:8]
                ]
                low, high = 0.97 * size * scale, 1.03 * size * scale + 64 * 1024  # + qcow2 metadata
                assert all(low <= n <= high for n in lengths), (arch, scale, lengths)
                assert len(set(lengths)) > 1  # versions differ by a few percent


def test_production_images_are_deterministic_across_restarts(tmp_path):
    cache = tmp_path / "cache"
    with production(cache_dir=cache, download_tick_seconds=0) as sim:
        image = fetch(sim.image_url("v1.11.5", "arm64")).body
        listing = fetch(f"{sim.releases_url}?per_page=100").text.replace(sim.url, "BASE")
    files = {f: f.stat().st_mtime_ns for f in cache.iterdir()}
    assert len(files) == 1
    with production(cache_dir=cache, download_tick_seconds=0) as again:
        assert fetch(again.image_url("v1.11.5", "arm64")).body == image
        assert fetch(f"{again.releases_url}?per_page=100").text.replace(again.url, "BASE") == listing
    assert {f: f.stat().st_mtime_ns for f in cache.iterdir()} == files  # reused, not regenerated
    with production() as fresh:  # generated again from nothing: the same bytes
        assert fetch(fresh.image_url("v1.11.5", "arm64")).body == image


def test_production_counters():
    with production() as sim:
        listing = fetch(f"{sim.releases_url}?per_page=20")
        fetch(_links(listing.headers["Link"])["next"])
        fetch(f"{sim.releases_url}/tags/v1.13.0")
        fetch(f"{sim.factory_url}/versions")  # the factory is not GitHub
        assert sim.github_requests() == 3
        assert sim.github_requests("/repos/siderolabs/talos/releases") == 1
        assert sim.github_requests_by_path()["/repos/siderolabs/talos/releases/tags/v1.13.0"] == 1
        fetch(sim.image_url("v1.13.1", "amd64"))
        assert sim.downloads_by_image() == {ImageKey(VANILLA_SCHEMATIC, "v1.13.1", "nocloud", "amd64"): 1}
        assert sim.build_stats().started == 1
        sim.reset_counters()
        assert (sim.github_requests(), sim.downloads_by_image(), sim.build_stats().started) == (0, {}, 0)
        assert fetch(sim.image_url("v1.13.1", "amd64")).status == 302  # built images stay built


def test_production_extensions_make_images_larger():
    with production(scale=0.01) as sim:
        nvidia = register(sim, schematic_with("siderolabs/nvidia-open-gpu-kernel-modules-lts"))

        def length(schematic: str) -> int:
            return int(
                fetch(sim.image_url("v1.13.0", "amd64", schematic=schematic), method="HEAD").headers["Content-Length"]
            )

        assert length(nvidia) - length(VANILLA_SCHEMATIC) > 0.3 * MIB  # tens of MiB at full size


def test_profile_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown simulator profile 'huge'"):
        UpstreamSimulator(profile="huge")
    with pytest.raises(ValueError, match="use scale"):
        UpstreamSimulator(profile="production", disk_size=DISK)
    with pytest.raises(ValueError, match="scale applies to the production profile"):
        UpstreamSimulator(scale=0.5)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        UpstreamSimulator(profile="production", scale=0)
    with pytest.raises(ValueError, match="build_slots"):
        UpstreamSimulator(build_slots=0)
    with pytest.raises(ValueError, match="redirect must be"):
        UpstreamSimulator(redirect="sometimes")


def test_simulate_upstream_production_profile_through_the_cli():
    command = [sys.executable, "-m", "talos_pipeline.cli", "simulate-upstream", "--port", "0"]
    command += ["--profile", "production", "--scale", "0.01", "--first-byte-delay", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        output = []
        while not output or not output[-1].startswith("Serving"):
            output.append(lines.get(timeout=60))
        factory = next(line for line in output if line.startswith("Image Factory:")).split(": ", 1)[1].strip()
        versions = fetch(f"{factory}/versions").json()
        assert len(versions) >= 30 and versions[-1].startswith("v1.14.0-")
        head = fetch(f"{factory}/image/{VANILLA_SCHEMATIC}/v1.13.0/nocloud-arm64.qcow2", method="HEAD")
        assert 0.97 * 0.86 * MIB <= int(head.headers["Content-Length"]) <= 1.03 * 0.86 * MIB + 64 * 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


# ---------------------------------------------------------------------------- construction and CLI
def test_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        UpstreamSimulator(host="0.0.0.0")
    with pytest.raises(RuntimeError, match="not running"):
        _ = UpstreamSimulator().url


def test_custom_releases_and_ipv6_loopback():
    releases = [SimulatedRelease("v1.13.0-alpha.0", "2026-01-05T10:00:00Z", prerelease=True),
                SimulatedRelease("v1.12.9", "2026-01-04T10:00:00Z", prerelease=False)]  # fmt: skip
    try:
        sim = UpstreamSimulator(releases, host="::1", disk_size=DISK).start()
    except OSError as exc:
        missing_tool(f"no IPv6 loopback on this machine ({exc}): the simulator's [::1] listener is untested")
    with sim:
        assert sim.url.startswith("http://[::1]:")
        assert fetch(f"{sim.factory_url}/versions").json() == ["v1.12.9", "v1.13.0-alpha.0"]


def test_parse_size():
    assert parse_size("2MiB") == 2 * 1024 * 1024
    assert parse_size("512MiB") == 512 * 1024 * 1024
    assert parse_size("1G") == 1024**3 and parse_size("500MB") == 500_000_000 and parse_size("4096") == 4096
    for bad in ("", "12XB", "-1", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_cli_rejects_non_loopback_host(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--host", "0.0.0.0"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_run_serves_until_stopped(tmp_path, capsys):
    releases = tmp_path / "releases.json"
    releases.write_text(json.dumps([{"tag": "v1.12.5", "published_at": "2026-01-10T10:00:00Z"}]))
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--port", "0", "--releases", str(releases), "--disk-size", "64KiB", "--redirect"])
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", run(args, stop=stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "Serving" not in (out := capsys.readouterr().out) and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [line for line in out.splitlines() if line.startswith("GitHub releases API")]
        releases_url = lines[0].split(": ", 1)[1]
        assert [r["tag_name"] for r in fetch(releases_url.strip()).json()] == ["v1.12.5"]
    finally:
        stop.set()
        thread.join(10)
    assert result["rc"] == 0


def test_cli_bad_releases_file(tmp_path, capsys):
    bad = tmp_path / "releases.json"
    bad.write_text("[{}]")
    assert main(["--port", "0", "--releases", str(bad)]) == 2
    assert "entry 0" in capsys.readouterr().err


def test_more_body_faults_and_redirect_chains(qcow2_cache):
    import requests

    with UpstreamSimulator(disk_size=256 * 1024, cache_dir=qcow2_cache) as sim:
        url = sim.image_url("v1.12.0", "amd64")
        whole = requests.get(url, timeout=10).content
        sim.set_fault("/image/", "overlong", count=1)
        assert requests.get(url, timeout=10).content == whole, "the client reads Content-Length bytes only"
        sim.stall_seconds = 0.5
        sim.set_fault("/image/", "stall", count=1)
        start = time.monotonic()
        assert requests.get(url, timeout=10).content == whole
        assert time.monotonic() - start >= 0.5
        sim.set_fault("/image/", "redirect_chain", count=1)
        response = requests.get(url, timeout=10)
        assert [r.status_code for r in response.history] == [302] * sim.redirect_hops
        assert response.content == whole

"""Self-service requests through `serve/`: what is accepted, what is refused and what that costs.

The server runs in-process on a real store published from the upstream simulator, whose factory
is the only one it may ask; every refused request must leave the store byte for byte as it was
and must not have registered anything with the factory (the simulator's request log says what the
factory saw). The page and the request routes with self-service off, and `talos-pipeline serve`
with the settings on, are checked here too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from serve import create_app, start_in_thread
from serve.selfservice import SelfServiceOptions
from talos_pipeline.core.prune import RetentionPolicy, prune_store
from talos_pipeline.core.selfservice import (
    RequestRejected,
    RequestSpec,
    SelfServiceRequest,
    Status,
    create_request,
    parse_form_request,
    parse_json_request,
    read_request,
    target_versions,
)
from talos_pipeline.core.selfservice.book import VARIANTS_KEY
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.simulator import UpstreamSimulator

from .serve_fixtures import build_store, start_serve

TOKEN = "demo-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"
STORAGE = ["siderolabs/iscsi-tools", "siderolabs/util-linux-tools"]
ONLY_NEWER = "siderolabs/nvidia-container-toolkit-production"  # offered from v1.12.0 on (simulator)


def body(name: str = "storage", extensions: list[str] | None = None, **extra) -> dict:
    customization = {"systemExtensions": {"officialExtensions": STORAGE if extensions is None else extensions}}
    return {"name": name, "platform": "nocloud", "schematic": {"customization": customization}, **extra}


# --------------------------------------------------------------------------- the rules, without a server
@pytest.mark.parametrize(
    "name,status",
    [("Storage", 400), ("1storage", 400), ("-x", 400), ("a" * 33, 400), ("a_b", 400), ("", 400), ("amd64", 409),
     ("latest", 409), ("nocloud", 409)],
)  # fmt: skip
def test_names_follow_the_variant_rules(name, status):
    with pytest.raises(RequestRejected) as refused:
        parse_json_request(json.dumps(body(name)).encode())
    assert refused.value.status == status and repr(name) in str(refused.value)


def test_only_extensions_and_kernel_args_may_be_asked_for():
    spec = parse_json_request(json.dumps(body(extensions=[*reversed(STORAGE), STORAGE[0]])).encode())
    assert spec == RequestSpec("storage", "nocloud", tuple(STORAGE))
    assert spec.schematic() == {"customization": {"systemExtensions": {"officialExtensions": STORAGE}}}
    for extra, field in (
        ({"schematic": {"overlay": {}}}, "overlay"),
        ({"schematic": {"customization": {"secureboot": {}}}}, "secureboot"),
        ({"token": "x"}, "token"),
    ):
        document = {**body(), **extra} if "schematic" not in extra else {**body(), "schematic": extra["schematic"]}
        with pytest.raises(RequestRejected, match=field):
            parse_json_request(json.dumps(document).encode())
    with pytest.raises(RequestRejected, match="platform 'aws'"):
        parse_json_request(json.dumps({**body(), "platform": "aws"}).encode())
    with pytest.raises(RequestRejected, match="no extension and no kernel argument"):
        parse_json_request(json.dumps(body(extensions=[])).encode())
    with pytest.raises(RequestRejected, match="not an official extension name"):
        parse_json_request(json.dumps(body(extensions=["../../etc"])).encode())
    with pytest.raises(RequestRejected, match="kernel argument"):
        parse_json_request(
            json.dumps({**body(), "schematic": {"customization": {"extraKernelArgs": ["a b"]}}}).encode()
        )
    too_many = json.dumps({**body(), "schematic": {"customization": {"extraKernelArgs": ["x=1"] * 17}}})
    with pytest.raises(RequestRejected, match="at most 16"):
        parse_json_request(too_many.encode())


def test_the_form_gives_the_same_spec_as_json():
    form = (
        "token=abc&name=storage&platform=nocloud&extension=siderolabs%2Futil-linux-tools"
        "&extensions=siderolabs%2Fiscsi-tools&kernel_args=console%3DttyS0+net.ifnames%3D0"
    )
    spec, token = parse_form_request(form.encode())
    assert token == "abc"
    assert spec == RequestSpec("storage", "nocloud", tuple(STORAGE), ("console=ttyS0", "net.ifnames=0"))


def test_target_versions_are_the_newest_stable_ones():
    versions = ["v1.11.6", "v1.12.0", "v1.12.1", "v1.13.0-beta.1", "v1.10.9"]
    assert target_versions(versions, 2) == ["v1.12.1", "v1.12.0"]
    assert target_versions([], 2) == []


# --------------------------------------------------------------------------- through the server
@pytest.fixture(scope="module")
def sim():
    with UpstreamSimulator(disk_size=512 * 1024) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def published(tmp_path_factory, sim) -> Path:
    """v1.11.6 and v1.12.0 (amd64, arm64; nocloud, metal): the two newest stable versions."""
    return build_store(tmp_path_factory.mktemp("published") / "store", sim).root


class Server:
    def __init__(self, root: Path, sim: UpstreamSimulator, options: SelfServiceOptions | None) -> None:
        self.root = root
        self.store = DirectoryStore(root)
        self.app = create_app(self.store, factory_url=sim.factory_url, self_service=options, refresh_seconds=0.1)
        self.base, self._stop = start_in_thread(self.app)
        self.session = requests.Session()
        self.session.trust_env = False

    def post(self, document: dict | bytes, token: str | None = TOKEN, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(document, dict):
            return self.session.post(self.base + "/requests", json=document, headers=headers, timeout=30, **kwargs)
        headers.setdefault("Content-Type", "application/json")
        return self.session.post(self.base + "/requests", data=document, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kwargs)

    def close(self) -> None:
        self.session.close()
        self._stop()


def options(**changes) -> SelfServiceOptions:
    values = {"tokens": (TOKEN, OTHER_TOKEN), "versions": 2, "pending_limit": 2,
              "configured": frozenset({"nocloud", "metal"})}  # fmt: skip
    return SelfServiceOptions(**{**values, **changes})


@pytest.fixture
def server(tmp_path, published, sim):
    root = tmp_path / "store"
    shutil.copytree(published, root)
    running = Server(root, sim, options())
    yield running
    running.close()


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def factory_requests(sim: UpstreamSimulator) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _status in sim.requests if not path.startswith("/repos/")]


def test_a_request_is_accepted_queued_and_readable_by_any_replica(server, sim, published):
    sim.reset_counters()
    answer = server.post(body())
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "queued" and accepted["status_url"] == f"/requests/{accepted['id']}"
    assert answer.headers["Location"] == accepted["status_url"]
    stored = read_request(server.store, accepted["id"])
    assert stored is not None and stored.spec.extensions == tuple(STORAGE) and stored.status is Status.QUEUED
    assert TOKEN not in (server.root / f"requests/{accepted['id']}.json").read_text()
    assert ("POST", "/schematics") not in factory_requests(sim), "serve/ registers nothing itself"
    assert {path for _m, path in factory_requests(sim)} <= {
        "/version/v1.12.0/extensions/official",
        "/version/v1.11.6/extensions/official",
    }
    other = Server(server.root, sim, options())  # a second replica on the same store
    try:
        status = other.get(accepted["status_url"])
        assert status.status_code == 200 and status.headers["Cache-Control"] == "no-store"
        assert status.json() | {"updated_at": None} == {
            "id": accepted["id"], "name": "storage", "platform": "nocloud", "status": "queued",
            "extensions": STORAGE, "kernel_args": [], "schematic_id": None, "versions": [], "arches": [],
            "aliases": [], "reason": None, "created_at": stored.created_at, "updated_at": None,
            "status_url": accepted["status_url"],
        }  # fmt: skip
        again = other.post(body(name="storage-again"), token=OTHER_TOKEN)
        assert again.status_code == 200 and again.json()["id"] == accepted["id"], "the same image: reused"
    finally:
        other.close()
    assert sorted(p.name for p in (server.root / "requests").iterdir()) == [f"{accepted['id']}.json"]


def _bad_requests() -> list[tuple[str, dict, int, str, bool]]:
    """(case, how to post, status, text in the error, whether the extension lists may be read)."""
    return [
        ("no token", {"document": body(), "token": None}, 401, "no token", False),
        ("wrong token", {"document": body(), "token": "not-a-token-0123456789"}, 401, "not one this server", False),
        ("bad name", {"document": body(name="Bad_Name")}, 400, "'Bad_Name'", False),
        ("configured name", {"document": body(name="metal")}, 409, "'metal'", False),
        ("malformed", {"document": b"{not json"}, 400, "not JSON", False),
        ("oversized body", {"document": json.dumps(body(extensions=["a/b"] * 4000)).encode()}, 413, "16384", False),
        ("unknown extension", {"document": body(extensions=["siderolabs/no-such-thing"])}, 422,
         "'siderolabs/no-such-thing' is not an official extension", True),
        ("extension missing for a version", {"document": body(extensions=[ONLY_NEWER])}, 422,
         f"'{ONLY_NEWER}' is not offered for Talos v1.11.6", True),
        ("wrong content type", {"document": b"name=x", "headers": {"Content-Type": "text/plain"}}, 415,
         "application/json", False),
    ]  # fmt: skip


@pytest.mark.parametrize("case,post,status,text,lists", _bad_requests(), ids=[c[0] for c in _bad_requests()])
def test_bad_requests_are_refused_clearly_and_change_nothing(server, sim, case, post, status, text, lists):
    before = tree(server.root)
    sim.reset_counters()
    answer = server.post(**post)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert text in answer.json()["error"], answer.json()
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert tree(server.root) == before, "a refused request left something in the store"
    seen = factory_requests(sim)
    assert ("POST", "/schematics") not in seen
    if lists:
        assert all(path.startswith("/version/") and path.endswith("/extensions/official") for _m, path in seen)
    else:
        assert seen == [], f"{case}: the factory was asked {seen}"


def test_too_many_pending_requests_per_token(server, sim):
    for name, extensions in (("storage", STORAGE), ("zfs", ["siderolabs/zfs"])):
        assert server.post(body(name=name, extensions=extensions)).status_code == 202
    before = tree(server.root)
    sim.reset_counters()
    third = server.post(body(name="drbd", extensions=["siderolabs/drbd"]))
    assert third.status_code == 429 and "2 requests queued or building" in third.json()["error"]
    assert tree(server.root) == before and factory_requests(sim) == []
    assert server.post(body(name="drbd", extensions=["siderolabs/drbd"]), token=OTHER_TOKEN).status_code == 202
    taken = server.post(body(name="zfs", extensions=["siderolabs/tailscale"]), token=OTHER_TOKEN)
    assert taken.status_code == 409 and "taken by request" in taken.json()["error"]


def test_a_body_over_the_connection_limit_is_refused_before_it_is_read(server):
    """64 KiB: answered 413 at once; the rest of the body is read and dropped, so the client still
    gets the answer (closing on unread bytes would reset the connection)."""
    big = b"{" + b" " * (200 * 1024) + b"}"
    answer = server.post(big)
    assert answer.status_code == 413 and "request body over 65536 bytes" in answer.text
    assert not (server.root / "requests").exists()


def test_expect_100_continue_and_chunked_bodies(server):
    host, port = server.base.split("://")[1].split(":")
    payload = json.dumps(body()).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(payload)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 202 "), answer
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:])) + b"0\r\n\r\n"
        sock.sendall(
            b"POST /requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n" + chunks
        )
        again = sock.recv(4096)
        assert again.startswith(b"HTTP/1.1 200 "), again  # the same image again, on the same connection


def test_the_form_posts_and_redirects_to_a_status_page(server):
    form = {"token": TOKEN, "name": "zfs", "platform": "metal", "extension": ["siderolabs/zfs"]}
    answer = server.session.post(server.base + "/requests", data=form, allow_redirects=False, timeout=30)
    assert answer.status_code == 303, answer.text
    page = server.get(answer.headers["Location"], headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Request zfs" in page.text and "queued" in page.text and '<meta http-equiv="refresh"' in page.text
    refused = server.session.post(server.base + "/requests", data={**form, "token": "wrong-token-0123456789"},
                                  allow_redirects=False, timeout=30)  # fmt: skip
    assert refused.status_code == 401 and "Request refused (401)" in refused.text
    assert refused.headers["Content-Type"].startswith("text/html")


def test_requests_are_never_files_and_prune_leaves_them(server):
    accepted = server.post(body()).json()
    server.store.put_bytes(VARIANTS_KEY, b'{"schema": 1, "variants": {}}\n')
    for path in (f"/requests/{accepted['id']}.json", "/requests/variants.json", "/requests/", "/requests/x"):
        assert server.get(path).status_code == 404, path
    before = {k: v for k, v in tree(server.root).items() if k.startswith("requests/")}
    report = prune_store(server.store, RetentionPolicy(keep=1, grace_seconds=0), ["nocloud", "metal"])
    assert report.dropped, "prune did drop products, and deleted their files"
    assert {k: v for k, v in tree(server.root).items() if k.startswith("requests/")} == before


def test_self_service_off_has_no_routes_and_no_form(tmp_path, published, sim):
    running = Server(published, sim, None)
    try:
        refused = running.post(body())
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
        assert running.get("/requests/0123456789abcdef").status_code == 404
        page = running.get("/")
        assert page.status_code == 200 and "<form" not in page.text and "Request a variant" not in page.text
    finally:
        running.close()
    assert not (published / "requests").exists()


def test_hostile_store_contents_are_escaped_on_the_page(server):
    accepted = server.post(body()).json()
    key = server.root / f"requests/{accepted['id']}.json"
    stored = json.loads(key.read_text())
    stored.update(status="failed", reason="<script>alert(1)</script>", created_at='"><img src=x onerror=alert(2)>')
    key.write_text(json.dumps(stored))
    products = json.loads((server.root / "streams/v1/images.json").read_text())["products"]
    schematic = next(iter(products.values()))["talos_schematic"]
    facts = server.root / f"state/schematics/{schematic}.json"
    facts.parent.mkdir(parents=True, exist_ok=True)
    facts.write_text(json.dumps({"extensions": ["<b>bold</b>"]}))  # the vanilla id is known, never read
    page = server.get("/").text
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    status = server.get(f"/requests/{accepted['id']}", headers={"Accept": "text/html"}).text
    assert "<script" not in status and "&lt;script&gt;alert(1)&lt;/script&gt;" in status


def test_serve_command_with_self_service_on(tmp_path, published, sim):
    """`talos-pipeline serve` as users start it, the settings from the environment."""
    root = tmp_path / "store"
    shutil.copytree(published, root)
    env = {
        "TALOS_SELF_SERVICE": "on",
        "TALOS_SELF_SERVICE_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "TALOS_SELF_SERVICE_PENDING": "1",
        "TALOS_FACTORY_URL": sim.factory_url,
    }
    running = start_serve(root, tmp_path, env=env, command=(sys.executable, "-m", "talos_pipeline.cli", "serve"))
    try:
        with running.session() as session:
            page = session.get(running.base + "/", timeout=10)
            assert '<form method="post" action="/requests">' in page.text
            first = session.post(running.base + "/requests", json=body(), timeout=30,
                                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            assert first.status_code == 202, first.text
            second = session.post(running.base + "/requests", json=body(name="zfs", extensions=["siderolabs/zfs"]),
                                  timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            assert second.status_code == 429, "TALOS_SELF_SERVICE_PENDING=1 from the environment"
            assert session.get(running.base + first.json()["status_url"], timeout=10).json()["status"] == "queued"
    finally:
        running.stop()


def test_serve_command_refuses_self_service_without_tokens(tmp_path, published):
    result = subprocess.run(
        [sys.executable, "-m", "talos_pipeline.cli", "serve", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "TALOS_STORE": str(published), "TALOS_SELF_SERVICE": "on"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "TALOS_SELF_SERVICE=on needs TALOS_SELF_SERVICE_TOKENS" in result.stderr


def test_a_stored_request_round_trips(tmp_path):
    store = DirectoryStore(tmp_path)
    request = SelfServiceRequest.new(RequestSpec("storage", "metal", tuple(STORAGE), ("console=ttyS0",)), "f" * 16)
    create_request(store, request)
    assert read_request(store, request.id) == request
    assert read_request(store, "../../etc/passwd") is None

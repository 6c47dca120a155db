"""serve/ under load while the store churns: 100 clients list the catalog and download disks
while new versions are published into the same store. Zero wrong bytes, zero 5xx."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time

import pytest
import requests

from serve import create_app, start_in_thread
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.launch import publish

pytestmark = pytest.mark.slow
STORE_KINDS = ["dir"]
CLIENTS = 100
AFTER_PUBLISHES = 2.0


def test_clients_never_get_wrong_bytes_while_publishes_happen(pipeline_env, simulator, monkeypatch):
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    assert publish(["v1.11.5"]).ok
    app = create_app(DirectoryStore(pipeline_env), refresh_seconds=0.5)
    url, stop = start_in_thread(app)
    deadline = [float("inf")]
    problems: list[str] = []
    counts = {"requests": 0, "downloads": 0, "catalogs": set()}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        session.trust_env = False
        while time.monotonic() < deadline[0]:
            try:
                listing = session.get(f"{url}/streams/v1/images.json", timeout=30)
                if listing.status_code != 200:
                    problems.append(f"images.json: HTTP {listing.status_code}")
                    continue
                products = listing.json()["products"]
                (version,) = rng.choice(list(products.values()))["versions"].values()
                disk = next(i for i in version["items"].values() if i["ftype"] == "disk-kvm.img")
                body = session.get(f"{url}/{disk['path']}", timeout=30)
                if body.status_code != 200 or hashlib.sha256(body.content).hexdigest() != disk["sha256"]:
                    problems.append(f"{disk['path']}: HTTP {body.status_code}, {len(body.content)} bytes")
                with lock:
                    counts["requests"] += 2
                    counts["downloads"] += 1
                    counts["catalogs"].add(listing.headers["etag"])
            except requests.RequestException as exc:
                problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for version in ("v1.11.6", "v1.12.0", "v1.12.1"):
            assert publish([version]).ok
    finally:
        deadline[0] = time.monotonic() + AFTER_PUBLISHES
        for thread in threads:
            thread.join(timeout=60)
        stop()
    assert not problems, f"{len(problems)} problems, e.g. {problems[:5]}"
    assert counts["downloads"] > CLIENTS, counts
    assert len(counts["catalogs"]) >= 2, "the clients saw the catalog change under them"
    assert json.loads((pipeline_env / "streams/v1/index.json").read_text())["index"]["images"]["products"]

"""`talos-pipeline verify` at scale: disks are re-hashed only when they (or what the catalog
claims about them) changed since the last successful verification; `--full` re-hashes all.

The ledger is the local file of the user running `verify` (`$XDG_CACHE_HOME/talos-pipeline/
verify-ledger.json`), keyed by store location, object key, ETag and size, and written only
after a verification without problems. Both store kinds: ETags come from the directory store's
inode/size/mtime and from S3 (moto over HTTP).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from talos_pipeline.launch import publish

from .verify_fixtures import disk_of, edit_catalog, output, talos_pipeline

PRODUCT = "talos:v1.12.0:amd64:nocloud"


def _verify(cache: Path, *args: str) -> tuple[int, str]:
    result = talos_pipeline("verify", *args, env={"XDG_CACHE_HOME": str(cache)})
    return result.returncode, output(result)


def _counts(out: str) -> tuple[int, int]:
    found = re.search(r"disks re-hashed: (\d+), unchanged since the last successful verification: (\d+)", out)
    assert found, out
    return int(found[1]), int(found[2])


@pytest.fixture
def published(pipeline_env, monkeypatch, tmp_path) -> SimpleNamespace:
    """v1.12.0 amd64 nocloud, unsigned; where `verify` keeps its ledger by default."""
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    assert publish(["v1.12.0"], ["amd64"]).ok
    store = pipeline_env.open()
    cache = tmp_path / "cache"
    return SimpleNamespace(
        store=store, cache=cache, ledger=cache / "talos-pipeline" / "verify-ledger.json", disk=disk_of(store, PRODUCT)
    )


def test_only_what_changed_is_hashed_again(published):
    store, cache, ledger, disk = published.store, published.cache, published.ledger, published.disk
    code, out = _verify(cache)
    assert code == 0 and _counts(out) == (1, 0), out
    entries = json.loads(ledger.read_text())["stores"][store.describe()]
    assert set(entries) == {disk.path} and entries[disk.path]["sha256"] == disk.item["sha256"]

    code, out = _verify(cache)
    assert code == 0 and _counts(out) == (0, 1), out
    assert f"{disk.path}: unchanged since the last successful verification" in out
    code, out = _verify(cache, "--full")
    assert code == 0 and _counts(out) == (1, 0), out

    assert publish(["v1.11.6"], ["amd64"]).ok  # one new version: only its disk is read
    code, out = _verify(cache)
    assert code == 0 and _counts(out) == (1, 1), out


def test_a_changed_object_or_claim_is_hashed_again_and_a_failure_records_nothing(published):
    store, cache, ledger, disk = published.store, published.cache, published.ledger, published.disk
    assert _verify(cache)[0] == 0
    recorded = ledger.read_bytes()

    original = store.read_bytes(disk.path)
    store.put_bytes(disk.path, bytes(len(original)))  # same size, other bytes: a new ETag
    code, out = _verify(cache)
    assert code == 1 and _counts(out) == (1, 0), out
    assert f"{disk.path}: sha256 " in out and "differs from the catalog's" in out
    assert ledger.read_bytes() == recorded, "a verification with problems records nothing"

    store.put_bytes(disk.path, original)
    assert _verify(cache)[0] == 0
    other = "0" * 64  # the object is as recorded, but the catalog now claims another sha256

    def claim(items: dict) -> None:
        items["disk.qcow2"]["sha256"] = other

    edit_catalog(store, PRODUCT, claim)
    code, out = _verify(cache)
    assert code == 1 and _counts(out) == (1, 0), out
    assert f"differs from the catalog's {other}" in out


def test_the_ledger_path_can_be_chosen(published, tmp_path):
    chosen = tmp_path / "elsewhere" / "ledger.json"
    code, out = _verify(published.cache, "--ledger", str(chosen))
    assert code == 0 and f"ledger: 1 disks recorded in {chosen}" in out, out
    assert not published.cache.exists()
    assert _counts(output(talos_pipeline("verify", "--ledger", str(chosen)))) == (0, 1)

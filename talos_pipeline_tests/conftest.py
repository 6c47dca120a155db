"""Shared fixtures: the upstream simulator and an environment pointing the pipeline at it.

`pipeline_env` runs each test that uses it twice: against a directory store and against an S3
store (moto over HTTP, or the bucket of `TALOS_TEST_S3_URL`; see `s3_fixtures.py`). Tests reach
the store through the `PipelineStore` it returns (`read`, `keys`, `open()`…), so the same
assertions hold for both. A module can narrow the kinds with a module-level `STORE_KINDS` list;
modules in `DIRECTORY_ONLY` still treat the store as a directory (`pipeline_env / key`, which a
`PipelineStore` of the dir kind supports) and run on the directory store only until ported.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from talos_pipeline.core.stores import Store, open_store
from talos_pipeline.simulator import UpstreamSimulator

from .s3_fixtures import moto_with_auth, s3_env, s3_server, s3_store_url  # noqa: F401 (fixtures)

STORE_KINDS = ["dir", "s3"]
DIRECTORY_ONLY = {"talos_pipeline_tests.test_signing_pipeline"}

pytest_plugins = ["talos_pipeline_tests.fake_sigstore.fixtures"]

SMALL_DISK = 1024 * 1024


@pytest.fixture(autouse=True, scope="session")
def private_cache_home(tmp_path_factory):
    """`verify` keeps its ledger under $XDG_CACHE_HOME: the suite (and its subprocesses) writes
    into a directory of its own, never into the cache of whoever runs it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def qcow2_cache(tmp_path_factory) -> str:
    """Generated images are deterministic; sharing them keeps the suite fast."""
    return str(tmp_path_factory.mktemp("qcow2-cache"))


@pytest.fixture
def simulator(qcow2_cache):
    with UpstreamSimulator(disk_size=SMALL_DISK, cache_dir=qcow2_cache) as sim:
        yield sim


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--timed",
        choices=("all", "skip", "only"),
        default="all",
        help="tests marked `timed` compare wall-clock times, so they must not share the machine with another "
        "worker: run them with the rest (all), leave them out (skip), or run only them (only); scripts/test "
        "runs the rest on two workers, then these alone",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = config.getoption("--timed")
    if mode == "all":
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        timed = item.get_closest_marker("timed") is not None
        (kept if timed == (mode == "only") else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_generate_tests(metafunc):
    """`store_kind` (hence `pipeline_env`): dir and s3, or what the module allows."""
    if "store_kind" in metafunc.fixturenames:
        kinds = ["dir"] if metafunc.module.__name__ in DIRECTORY_ONLY else STORE_KINDS
        metafunc.parametrize("store_kind", getattr(metafunc.module, "STORE_KINDS", kinds))


@dataclass
class PipelineStore:
    """The store a test publishes into (`TALOS_STORE`), read the same way whatever its kind.

    Of the dir kind it also behaves as the directory's `Path` (`/`, `os.fspath`, `rglob`…) for
    tests written before S3.
    """

    kind: str  # "dir" or "s3"
    location: str  # the TALOS_STORE value
    directory: Path | None = None  # dir kind only

    def __getattr__(self, name: str):
        if name.startswith("__") or self.__dict__.get("directory") is None:
            raise AttributeError(f"{name!r}: the {self.kind} store has no local path; use read/keys/open()")
        return getattr(self.directory, name)

    def __truediv__(self, key: str) -> Path:
        return self._path() / key

    def __fspath__(self) -> str:
        return str(self._path())

    def _path(self) -> Path:
        if self.directory is None:
            raise TypeError(f"{self.location} is not a directory; use read/keys/open()")
        return self.directory

    def open(self) -> Store:
        return open_store(self.location)

    def read(self, key: str) -> bytes:
        return self.open().read_bytes(key)

    def exists(self, key: str) -> bool:
        return self.open().exists(key)

    def keys(self, prefix: str = "") -> list[str]:
        if self.directory is not None and not self.directory.exists():
            return []
        return self.open().list_keys(prefix)

    def digest(self) -> dict[str, str]:
        """sha256 of every object (hidden temp areas excluded), as `tree_digest` for directories."""
        store = self.open()
        return {key: hashlib.sha256(store.read_bytes(key)).hexdigest() for key in self.keys()}

    def leftovers(self) -> list[str]:
        """Interrupted uploads: `.tmp` files, staging objects, unfinished multipart uploads."""
        if self.directory is not None and not self.directory.exists():
            return []
        return [t.name for t in self.open().temporaries()]

    def local_tree(self, scratch: Path) -> Path:
        """A directory holding the store's objects (the store itself, or a download of the bucket)."""
        if self.directory is not None:
            return self.directory
        store = self.open()
        for key in self.keys():
            target = scratch / key
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                for chunk in store.iter_range(key):
                    handle.write(chunk)
        return scratch


@pytest.fixture
def pipeline_env(tmp_path, simulator, monkeypatch, request, store_kind) -> PipelineStore:
    """TALOS_* variables for a run against the simulator into a fresh store: a directory, or an
    S3 bucket (a fresh moto bucket, or a fresh prefix of TALOS_TEST_S3_URL)."""
    for name in list(os.environ):
        if name.startswith(("TALOS_", "DAGSTER_HOME", "GITHUB_TOKEN", "ACTIONS_ID_TOKEN")):
            monkeypatch.delenv(name)
    if store_kind == "s3":
        handle = PipelineStore("s3", request.getfixturevalue("s3_store_url"))
    else:
        root = tmp_path / "store"
        handle = PipelineStore("dir", str(root), root)
    monkeypatch.setenv("TALOS_STORE", handle.location)
    monkeypatch.setenv("TALOS_RELEASES_URL", simulator.releases_url)
    monkeypatch.setenv("TALOS_FACTORY_URL", simulator.factory_url)
    monkeypatch.setenv("TALOS_SIGNING", "none")
    return handle


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden temp areas excluded)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }

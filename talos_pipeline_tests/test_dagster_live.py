"""The real Dagster deployment, hands off: `dagster dev` (webserver + daemon + code server) on
127.0.0.1 with a temporary DAGSTER_HOME, against the upstream simulator.

Nothing is turned on by hand: the release sensor (running by default) adds the simulated
releases and requests runs, the automation sensor rebuilds the catalog; a release added to the
simulator gets published; a GraphQL `launchPartitionBackfill` over all partitions (what the
UI's backfill button sends) completes. Parametrized over the instance storage: SQLite in
DAGSTER_HOME, and a throwaway PostgreSQL cluster (Debian's `postgresql` binaries; the test
creates and removes it).

Set TALOS_ASSET_GRAPH_PNG=/path/asset-graph.png to also take a headless-Chromium screenshot of
the asset graph after the backfill (how docs/asset-graph.png is made; not a CI step).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.stores import ObjectMissing, open_store
from talos_pipeline.simulator import UpstreamSimulator
from talos_pipeline.simulator.releases import SimulatedRelease

from .chromium import chromium
from .fake_sigstore.fixtures import missing_tool

REPO = Path(__file__).resolve().parent.parent
ARCHES = ("amd64", "arm64")
RELEASES = [
    SimulatedRelease("v1.11.6", "2025-12-10T10:15:33Z", prerelease=False),
    SimulatedRelease("v1.12.0-beta.1", "2025-12-01T11:20:47Z", prerelease=True),  # left out by policy
    SimulatedRelease("v1.12.0", "2025-12-22T18:05:12Z", prerelease=False),
    SimulatedRelease("v1.12", "2025-12-23T10:00:00Z", prerelease=False),  # malformed: reported, not added
    SimulatedRelease("v1.12.1", "2025-12-30T15:22:09Z", prerelease=False),
]
INITIAL = ["v1.11.6", "v1.12.0", "v1.12.1"]
ADDED = "v1.12.2"
DISK_SIZE = 256 * 1024
COLD_BUILD = 2.0  # runs last long enough that two launched together overlap on a loaded 2-core machine
MAX_CONCURRENT_RUNS = 2
POOL_LIMIT = 1
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str, probe: Callable[[], object], timeout: float, on_timeout: Callable[[], str] = lambda: ""
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")
        time.sleep(1.0)


# --------------------------------------------------------------------------- PostgreSQL
def _postgres_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary directory on 127.0.0.1:<free port>; removed afterwards.

    Runs as the `postgres` user when we are root (PostgreSQL refuses to run as root)."""
    bindir = _postgres_bindir()
    if bindir is None:
        missing_tool("PostgreSQL server binaries are missing (Debian package postgresql; scripts/test installs it)")
    root = Path(tempfile.mkdtemp(prefix="talos-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, cwd=root)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "dagster", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster")
            # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which dagster-postgres does not install
            yield f"postgresql+psycopg2://dagster@127.0.0.1:{port}/dagster"
        finally:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, cwd=root)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"PostgreSQL setup failed: {exc.cmd}: {exc.stderr}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- dagster dev
def dagster_yaml(postgres_url: str | None) -> str:
    lines = [
        "telemetry:",
        "  enabled: false",
        "nux:",
        "  enabled: false",
        "concurrency:",  # docs/deployment.md, "Concurrency": runs at once, factory downloads at once
        "  runs:",
        f"    max_concurrent_runs: {MAX_CONCURRENT_RUNS}",
        "  pools:",
        f"    default_limit: {POOL_LIMIT}",
        "sensors:",
        "  use_threads: true",
        "  num_workers: 4",
    ]
    if postgres_url:
        lines += ["storage:", "  postgres:", f"    postgres_url: {postgres_url}"]
    return "\n".join(lines) + "\n"


@dataclass
class Deployment:
    url: str
    store: str
    log: Path
    process: subprocess.Popen
    timings: dict[str, float] = field(default_factory=dict)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def catalog(self) -> dict | None:
        try:
            return json.loads(open_store(self.store).read_bytes(IMAGES_KEY))
        except ObjectMissing:
            return None

    def products(self) -> set[str]:
        catalog = self.catalog()
        return set(catalog["products"]) if catalog else set()

    def runs(self) -> list[dict]:
        data = self.graphql(
            "{ runsOrError(limit: 200) { ... on Runs { results { runId jobName status startTime endTime "
            "tags { key value } assetSelection { path } } } } }"
        )
        return data["runsOrError"]["results"]

    def finished_runs(self) -> list[dict] | None:
        """Every run, once none is queued or in progress (the catalog is written before its run ends)."""
        runs = self.runs()
        return runs if all(r["status"] in FINISHED_RUN for r in runs) else None

    def diagnostics(self) -> str:
        try:
            shown = ("talos", "dagster/partition", "dagster/backfill")
            runs = "\n".join(
                f"  {r['runId'][:8]} {r['jobName']} {r['status']} "
                f"{ {t['key']: t['value'] for t in r['tags'] if t['key'].startswith(shown)} }"
                for r in self.runs()
            )
        except Exception as exc:  # the diagnostics must not hide the failure
            runs = f"  (runs unavailable: {exc})"
        ticks = self.sensor_ticks()
        tail = self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""
        return (
            f"products: {sorted(self.products())}\nruns:\n{runs}\nsensor ticks: {ticks}\ndagster dev log tail:\n{tail}"
        )

    def sensor_ticks(self) -> list:
        try:
            data = self.graphql(
                """{ sensorsOrError(repositorySelector: {repositoryName: "__repository__",
                     repositoryLocationName: "talos_pipeline.definitions"}) {
                     ... on Sensors { results { name sensorState { status ticks(limit: 3) { status skipReason
                     error { message } } } } } } }"""
            )
            return [
                (s["name"], s["sensorState"]["status"], s["sensorState"]["ticks"])
                for s in data["sensorsOrError"]["results"]
            ]
        except Exception as exc:
            return [f"(unavailable: {exc})"]


@contextmanager
def dagster_dev(
    tmp: Path, simulator: UpstreamSimulator, store: str, postgres_url: str | None, extra_env: dict
) -> Iterator[Deployment]:
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(postgres_url))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TALOS_", "DAGSTER_", "GITHUB_TOKEN", "ACTIONS_ID_TOKEN"))
    }
    env.update({
        "DAGSTER_HOME": str(home),
        "TALOS_STORE": store,
        "TALOS_RELEASES_URL": simulator.releases_url,
        "TALOS_FACTORY_URL": simulator.factory_url,
        "TALOS_SIGNING": "none",
        "TALOS_VARIANTS": "nocloud",
        "TALOS_SENSOR_INTERVAL_SECONDS": "5",
        # a token: 5,000 requests/hour and free 304s, so a 5 s interval stays within budget
        "GITHUB_TOKEN": "live-test-token",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    })  # fmt: skip
    port = free_port()
    log = tmp / "dagster-dev.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole below
        )  # fmt: skip
    deployment = Deployment(url=f"http://127.0.0.1:{port}", store=store, log=log, process=process)
    try:

        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(f"dagster dev exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                return requests.get(f"{deployment.url}/server_info", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for("the Dagster webserver", answering, 120, lambda: log.read_text(errors="replace")[-4000:])
        deployment.timings["webserver up"] = time.monotonic() - started
        yield deployment
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anything left in the group (run workers, code server)?
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


# --------------------------------------------------------------------------- the flow
LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions error { message } }
    ... on Error { message }
  }
}"""

BACKFILL_ASSETS = [
    "talos_release",
    "talos_metadata_tarball",
    "talos_disk_image",
    "talos_signatures",
    "talos_image",
    "talos_catalog",
]


def expected_products(versions) -> set[str]:
    return {f"talos:{v}:{a}:nocloud" for v in versions for a in ARCHES}


def take_screenshot(deployment: Deployment, target: Path, tmp: Path, width: int = 2400, height: int = 720) -> None:
    """Open the global asset lineage in headless Chromium, hide the asset tree, expand every group
    (the UI's Alt+E), and save a PNG."""
    with chromium(tmp / "chromium") as page:
        page.size(width, height)
        page.call("Page.navigate", url=f"{deployment.url}/asset-groups")
        wait_for("the asset graph to render", lambda: "talos_images" in page.text(), 60)
        time.sleep(3)
        page.click(511, 79)  # the asset tree's hide button, left of the search box
        time.sleep(2)
        for kind in ("rawKeyDown", "keyUp"):  # Alt+E: expand all groups
            page.call("Input.dispatchKeyEvent", type=kind, modifiers=1, key="e", code="KeyE", windowsVirtualKeyCode=69)
        wait_for("the expanded groups", lambda: "talos_disk_image" in page.text(), 30)
        time.sleep(4)
        page.screenshot(target)


@dataclass
class Setup:
    name: str
    store: str
    postgres_url: str | None = None


@pytest.fixture(params=["sqlite-dir", "postgres-s3"])
def setup(request, tmp_path) -> Iterator[Setup]:
    """SQLite instance + directory store (one machine), and PostgreSQL instance + S3 store
    (moto over HTTP, or TALOS_TEST_S3_URL): nothing shared through local files."""
    if request.param == "sqlite-dir":
        yield Setup(request.param, str(tmp_path / "store"))
        return
    store = request.getfixturevalue("s3_store_url")  # sets AWS_* for this process and dagster dev
    with throwaway_postgres() as url:
        yield Setup(request.param, store, url)


def most_at_once(runs: list[dict]) -> int:
    """The most runs in progress at one time, from their start and end times."""
    edges = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs], key=lambda e: (e[0], e[1]))
    level = most = 0
    for _, step in edges:
        level += step
        most = max(most, level)
    return most


def builds_catalog(run: dict) -> bool:
    return run["jobName"] == "publish_catalog" or {"path": ["talos_catalog"]} in (run["assetSelection"] or [])


def rebuilt_by(run: dict) -> str:
    tags = {t["key"]: t["value"] for t in run["tags"]}
    if "dagster/from_automation_condition" in tags:
        return "automation"
    return tags.get("talos/trigger") or (tags.get("dagster/backfill") and "backfill") or "other"


def test_dagster_publishes_new_releases_and_backfills_by_itself(tmp_path, qcow2_cache, setup):
    timings: dict[str, float] = {}
    with UpstreamSimulator(releases=RELEASES, disk_size=DISK_SIZE, cache_dir=qcow2_cache,
                           first_byte_delay=COLD_BUILD) as simulator, \
         dagster_dev(tmp_path, simulator, setup.store, setup.postgres_url, {}) as deployment:  # fmt: skip
        timings.update(deployment.timings)
        started = time.monotonic()

        # 1. the release sensor finds the eligible releases; the automation sensor rebuilds the catalog
        wait_for(
            f"{INITIAL} published and in the catalog",
            lambda: deployment.products() == expected_products(INITIAL),
            420,
            deployment.diagnostics,
        )
        timings["3 releases × 2 arches published + catalog"] = time.monotonic() - started
        runs = wait_for("the runs to finish", deployment.finished_runs, 120, deployment.diagnostics)
        sensor_runs = [r for r in runs if {"key": "talos/trigger", "value": "talos_release_sensor"} in r["tags"]]
        assert len(sensor_runs) == len(INITIAL) * len(ARCHES), deployment.diagnostics()
        assert all(r["status"] == "SUCCESS" for r in sensor_runs), deployment.diagnostics()
        in_progress = most_at_once(sensor_runs)
        assert 2 <= in_progress <= MAX_CONCURRENT_RUNS, f"runs at once: {in_progress}\n{deployment.diagnostics()}"
        assert simulator.build_stats().max_concurrent == POOL_LIMIT, "the talos_factory pool bounds the downloads"
        catalog_runs = [r for r in runs if builds_catalog(r)]
        assert catalog_runs and all(r["status"] == "SUCCESS" for r in catalog_runs), deployment.diagnostics()
        assert {rebuilt_by(r) for r in catalog_runs} <= {"automation", "talos_catalog_sensor"}, deployment.diagnostics()

        # 2. a new upstream release is published without anyone asking
        phase = time.monotonic()
        simulator.add_release(ADDED)
        wait_for(
            f"{ADDED} published and in the catalog",
            lambda: deployment.products() == expected_products([*INITIAL, ADDED]),
            300,
            deployment.diagnostics,
        )
        timings["a new release published + catalog"] = time.monotonic() - phase
        catalog_runs = [r for r in deployment.runs() if builds_catalog(r)]
        print(f"\ncatalog rebuilt by: {[rebuilt_by(r) for r in reversed(catalog_runs)]}")

        # 3. the UI's backfill over every partition (+ the catalog once at the end)
        phase = time.monotonic()
        downloads = {(v, a): simulator.downloads(v, a) for v in [*INITIAL, ADDED] for a in ARCHES}
        assert set(downloads.values()) == {1}, downloads
        launched = deployment.graphql(
            LAUNCH_BACKFILL,
            {"params": {"assetSelection": [{"path": [name]} for name in BACKFILL_ASSETS], "allPartitions": True}},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def backfill_done():
            status = deployment.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
            return status if status.get("status") in TERMINAL_BACKFILL else None

        status = wait_for(f"backfill {backfill_id}", backfill_done, 420, deployment.diagnostics)
        timings["backfill of 8 partitions + catalog"] = time.monotonic() - phase
        assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), (status, deployment.diagnostics())
        backfill_runs = [r for r in deployment.runs() if {"key": "dagster/backfill", "value": backfill_id} in r["tags"]]
        assert backfill_runs and all(r["status"] == "SUCCESS" for r in backfill_runs), deployment.diagnostics()
        assert any(builds_catalog(r) for r in backfill_runs)
        after = {(v, a): simulator.downloads(v, a) for v in [*INITIAL, ADDED] for a in ARCHES}
        assert set(after.values()) == {2}, f"every partition re-ran once: {after}"
        assert deployment.products() == expected_products([*INITIAL, ADDED])

        if target := os.environ.get("TALOS_ASSET_GRAPH_PNG"):
            take_screenshot(deployment, Path(target), tmp_path)
        process = deployment.process
    assert process.poll() is not None, "dagster dev stopped"
    print(f"\nlive timings ({setup.name}): "
          + ", ".join(f"{k}: {v:.0f}s" for k, v in timings.items()))  # fmt: skip

"""The code location as Dagster sees it: every name operators and stored state rely on, the
lineage, the location name that keys sensor cursors, and the tools that load it.

Run history, schedules and sensor cursors are keyed by location + repository + instigator
name, so renaming any of them silently orphans a deployment's state: `test_inventory` fails when
a name disappears, and `test_a_sensor_cursor_written_before_the_defs_layout_is_read` proves a
cursor stored under the old layout's ids still drives the sensor.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.selector import InstigatorSelector
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    SensorInstigatorData,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.sensor import execute_sensor_iteration

from talos_pipeline.core.settings import Settings
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.defs.resources import resources_from_settings
from talos_pipeline.launch import Launcher

REPO = Path(__file__).resolve().parent.parent
LOCATION = "talos_pipeline.definitions"
REPOSITORY = "__repository__"  # a Definitions object's repository

ASSETS = {
    "talos_release",
    "talos_metadata_tarball",
    "talos_disk_image",
    "talos_signatures",
    "talos_image",
    "talos_catalog",
    "talos_upstream_drift",
}
CHECKS = {
    ("talos_image", "published_objects_match_record"),
    ("talos_catalog", "catalog_files_exist"),
    ("talos_upstream_drift", "proxied_disks_match_upstream"),
}
JOBS = {"publish_images", "sign_images", "publish_catalog", "check_upstream_drift", "prune_store"}
SENSORS = {
    "default_automation_condition_sensor": "RUNNING",
    "talos_release_sensor": "RUNNING",
    "talos_catalog_sensor": "RUNNING",
    "talos_drift_republish_sensor": "RUNNING",
    "talos_publication_failure_sensor": "RUNNING",
    "talos_self_service_sensor": "RUNNING",
}
SCHEDULES = {"talos_upstream_drift_daily": "RUNNING", "daily_prune_schedule": "STOPPED"}
CHAIN = ["talos_release", "talos_metadata_tarball", "talos_disk_image", "talos_signatures", "talos_image"]

# Selector ids of main's code location before the defs/ layout (commit 7ce7cf7), computed by
# loading its workspace.yaml (python_module talos_pipeline.definitions, no location_name) and
# reading each remote sensor's and schedule's `selector_id`. Pinned: they must never change.
SELECTOR_IDS_BEFORE = {
    "default_automation_condition_sensor": "b55984509ffbc2dc003217b6540171217c56ccf9",
    "talos_catalog_sensor": "85f63a5c1e13b68b153aaf3ee087ad293340a9f2",
    "talos_drift_republish_sensor": "95c595dff4d69e0d95cf484294e9fc39c67bdd10",
    "talos_release_sensor": "e170b3320415fb64ce6c5fe758e028c5aac0b322",
    "daily_prune_schedule": "5a18774c17a4684b51f01df49d21dad1707ac964",
    "talos_upstream_drift_daily": "791bf11dabe35de5f75f480f27864287655e7367",
}


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return load_definitions()


def test_inventory(definitions):
    graph = definitions.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert checks == CHECKS
    assert {job.name for job in definitions.resolve_all_job_defs()} - {"__ASSET_JOB"} == JOBS
    sensors = {definitions.resolve_sensor_def(name) for name in SENSORS}
    assert {s.name: s.default_status.value for s in sensors} == SENSORS
    assert {s.name for s in definitions.sensors} == set(SENSORS)
    assert {s.name: definitions.resolve_schedule_def(s.name).default_status.value for s in definitions.schedules} == (
        SCHEDULES
    )
    assert set(definitions.resources) == {
        "talos_store", "talos_upstream", "talos_discovery", "talos_images", "talos_signing", "talos_alerts",
    }  # fmt: skip
    assert set(definitions.loggers) == {"console"}


def test_the_lineage_is_the_chain_of_the_design(definitions):
    graph = definitions.resolve_asset_graph()
    for upstream, downstream in itertools.pairwise(CHAIN):
        assert graph.get(dg.AssetKey(downstream)).parent_keys == {dg.AssetKey(upstream)}
    assert graph.get(dg.AssetKey("talos_catalog")).parent_keys == {dg.AssetKey("talos_image")}
    publish = definitions.resolve_job_def("publish_images")
    assert set(publish.asset_layer.executable_asset_keys) == {dg.AssetKey(name) for name in CHAIN}
    signing = definitions.resolve_job_def("sign_images")
    assert set(signing.asset_layer.executable_asset_keys) == {
        dg.AssetKey("talos_signatures"),
        dg.AssetKey("talos_image"),
    }


def test_the_location_name_is_the_same_in_every_place():
    workspace = (REPO / "workspace.yaml").read_text()
    assert f"module_name: {LOCATION}" in workspace and f"location_name: {LOCATION}" in workspace
    pyproject = (REPO / "pyproject.toml").read_text()
    assert pyproject.count(f'code_location_name = "{LOCATION}"') == 2, "[tool.dagster] and [tool.dg.project]"
    assert f"location_name: {LOCATION}" in (REPO / "docs/deployment.md").read_text()
    for name, selector_id in SELECTOR_IDS_BEFORE.items():
        assert InstigatorSelector(location_name=LOCATION, repository_name=REPOSITORY, name=name).get_id() == selector_id


def _old_release_sensor_origin() -> RemoteInstigatorOrigin:
    """The origin main's workspace.yaml gave the release sensor: the location is named after its module."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=LOCATION, working_directory=str(REPO), python_file=None
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target)
    assert location.location_name == LOCATION
    return RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, REPOSITORY), "talos_release_sensor")


def test_a_sensor_cursor_written_before_the_defs_layout_is_read(tmp_path, monkeypatch):
    """The daemon's own sensor iteration, on the code location of workspace.yaml, ticks the release
    sensor with the cursor stored under the old ids: its rate-limit wait (in the cursor only) holds."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for name in list(os.environ):
        if name.startswith(("TALOS_", "GITHUB_TOKEN")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("TALOS_RELEASES_URL", "http://127.0.0.1:9/never-asked")  # a request would fail the tick
    monkeypatch.chdir(REPO)
    wait_until = time.time() + 3600
    cursor = json.dumps({"etag": 'W/"before"', "eligible": 4, "wait_until": wait_until})
    origin = _old_release_sensor_origin()
    with dg.DagsterInstance.get() as instance:
        instance.add_instigator_state(
            InstigatorState(
                origin, InstigatorType.SENSOR, InstigatorStatus.RUNNING, SensorInstigatorData(cursor=cursor)
            )
        )
        assert instance.get_instigator_state(origin.get_id(), SELECTOR_IDS_BEFORE["talos_release_sensor"])
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=["workspace.yaml"])) as workspace:
            location = workspace.create_request_context().get_code_location(LOCATION)
            (repository,) = location.get_repositories().values()
            sensors = {s.name: s for s in repository.get_sensors()}
            schedules = {s.name: s for s in repository.get_schedules()}
            for name, selector_id in SELECTOR_IDS_BEFORE.items():
                assert (sensors.get(name) or schedules[name]).selector_id == selector_id, name
            release = sensors["talos_release_sensor"]
            state = instance.get_instigator_state(release.get_remote_origin_id(), release.selector_id)
            assert state is not None and state.instigator_data.cursor == cursor
            list(execute_sensor_iteration(workspace, logging.getLogger("test"), None, None))
        ticks = instance.get_ticks(release.get_remote_origin_id(), release.selector_id)
    assert ticks, "the release sensor ticked"
    assert "GitHub rate limit: not asking again before" in (ticks[0].skip_reason or ""), ticks[0]
    assert json.loads(ticks[0].cursor or cursor)["etag"] == 'W/"before"'


def _run(*command: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    home = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_HOME"))}
    return subprocess.run(command, cwd=cwd, env={**home, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_dg_and_dagster_load_the_location_without_warnings(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    bin_dir = Path(sys.executable).parent
    activated = {"VIRTUAL_ENV": sys.prefix, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {"DAGSTER_HOME": str(tmp_path), **activated}
    checked = _run(str(bin_dir / "dg"), "check", "defs", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    validated = _run(str(bin_dir / "dagster"), "definitions", "validate", "-w", "workspace.yaml", env=env)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert f"Validation successful for code location {LOCATION}" in validated.stderr + validated.stdout
    for output in (checked.stdout + checked.stderr, validated.stdout + validated.stderr):
        ours = [line for line in output.splitlines() if "Warning" in line and "SupersessionWarning" not in line]
        assert not ours, output
        assert "does not match" not in output
    listed = _run(str(bin_dir / "dg"), "list", "defs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "talos_signatures" in listed.stdout and "talos_publication_failure_sensor" in listed.stdout


def test_an_installed_wheel_loads_the_same_definitions(tmp_path):
    """`pip install .` (the publish workflow) ships no pyproject.toml: the defs folder still loads."""
    site = tmp_path / "site"
    built = _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(REPO))
    assert built.returncode == 0, built.stderr
    probe = (
        "import json, warnings, dagster as dg, talos_pipeline\n"
        "warnings.simplefilter('error', dg.PreviewWarning); warnings.simplefilter('error', dg.BetaWarning)\n"
        "from talos_pipeline.definitions import defs\n"
        "print(talos_pipeline.__file__)\n"
        "print(json.dumps([k.to_user_string() for k in defs().resolve_asset_graph().get_all_asset_keys()]))\n"
    )
    loaded = _run(sys.executable, "-c", probe, cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert loaded.returncode == 0, loaded.stderr
    where, assets = loaded.stdout.splitlines()
    assert where.startswith(str(site))
    assert set(json.loads(assets)) == ASSETS


def _instance_text(home: Path) -> str:
    """Everything the instance's SQLite databases hold, decompressed where it is compressed."""
    chunks = []
    for database in home.rglob("*.db"):
        with sqlite3.connect(database) as connection:
            tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                for row in connection.execute(f"select * from {table}"):
                    for cell in row:
                        if isinstance(cell, bytes):
                            try:
                                cell = zlib.decompress(cell)
                            except zlib.error:
                                pass
                            cell = cell.decode(errors="replace")
                        chunks.append(str(cell))
    return "\n".join(chunks)


def test_in_process_runs_keep_secrets_from_the_environment_out_of_the_instance(tmp_path, monkeypatch):
    """Resources built from `Settings` hold literal values, which Dagster writes into the run's
    snapshot; a secret that came from the environment stays an `EnvVar` there."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-secret-from-the-environment")
    monkeypatch.setenv("TALOS_STORE", str(tmp_path / "store-from-the-environment"))
    settings = Settings.from_env().replace(signing="key", signing_key=str(tmp_path / "given-by-the-caller.key"))
    resources = resources_from_settings(settings)
    assert isinstance(resources["talos_upstream"].github_token, dg.EnvVar)
    assert resources["talos_signing"].signing_key == str(tmp_path / "given-by-the-caller.key")
    assert Launcher(settings).rebuild_catalog() == (0, None)
    stored = _instance_text(home)
    assert "store-from-the-environment" in stored, "the scan finds literal values"
    assert "ghp-secret-from-the-environment" not in stored

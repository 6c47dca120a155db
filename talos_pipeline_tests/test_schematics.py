"""Variants from schematic files and schematic ids, against the simulated Image Factory.

A schematic file is registered with the factory (`POST /schematics`) and published under the id
the factory returns; every requested system extension is checked against the factory's list for
that Talos version before anything is downloaded, for file and id variants alike, in the CLI and
in the Dagster run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from talos_pipeline.cli import main
from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.schematics import schematic_extensions, unavailable_extensions
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.variants import parse_variant, parse_variants
from talos_pipeline.launch import Launcher

from .conftest import PipelineStore

STORE_KINDS = ["dir"]
STORAGE = """\
# iSCSI and util-linux, for storage nodes
customization:
  systemExtensions:
    officialExtensions:
      - siderolabs/iscsi-tools
      - siderolabs/util-linux-tools
"""
# The simulated factory offers the NVIDIA "-production" extensions from v1.12.0 on only.
GPU = """\
customization:
  systemExtensions:
    officialExtensions: [siderolabs/nvidia-open-gpu-kernel-modules-production]
"""
MISSING = "siderolabs/nvidia-open-gpu-kernel-modules-production"


def register(simulator, document: str) -> str:
    """The id the factory gives a schematic (what the pipeline must publish under)."""
    response = requests.post(f"{simulator.factory_url}/schematics", data=document.encode(), timeout=10)
    response.raise_for_status()
    return response.json()["id"]


def image_requests(simulator) -> list[tuple[str, str, int]]:
    return [r for r in simulator.requests if r[1].startswith(("/image/", "/cdn/"))]


@pytest.fixture
def schematic_file(tmp_path):
    def write(name: str, document: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(document)
        return path

    return write


def test_a_schematic_file_variant_parses_to_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    variant = parse_variant("storage=nocloud:@schematics/storage.yaml")
    assert variant.schematic_file == str(tmp_path / "schematics" / "storage.yaml")
    assert variant.schematic == "" and not variant.is_vanilla
    assert parse_variant(variant.spec()) == variant
    assert [v.name for v in parse_variants(f"nocloud,{variant.spec()}")] == ["nocloud", "storage"]
    with pytest.raises(ConfigError, match="name the schematic file after '@'"):
        parse_variant("storage=nocloud:@")


def test_extensions_are_read_from_the_document_and_renamed_ones_still_count():
    assert schematic_extensions(STORAGE, "storage.yaml") == ("siderolabs/iscsi-tools", "siderolabs/util-linux-tools")
    assert schematic_extensions("customization: {}\n", "vanilla") == ()
    with pytest.raises(ConfigError, match=r"x\.yaml is not a schematic"):
        schematic_extensions("- a list\n", "x.yaml")
    with pytest.raises(ConfigError, match="must be a list of names"):
        schematic_extensions("customization: {systemExtensions: {officialExtensions: iscsi}}", "x.yaml")
    offered = ["siderolabs/nvidia-container-toolkit-lts", "siderolabs/iscsi-tools"]
    assert unavailable_extensions(["siderolabs/nvidia-container-toolkit", "siderolabs/iscsi-tools"], offered) == []
    assert unavailable_extensions(["siderolabs/zfs"], offered) == ["siderolabs/zfs"]


def test_a_schematic_file_variant_publishes_under_the_id_the_factory_returns(
    pipeline_env: PipelineStore, simulator, schematic_file, monkeypatch
):
    path = schematic_file("storage", STORAGE)
    monkeypatch.setenv("TALOS_VARIANTS", f"nocloud,storage=nocloud:@{path}")
    assert main(["publish", "v1.12.0", "--arch", "amd64"]) == 0
    schematic = register(simulator, STORAGE)
    record = json.loads(pipeline_env.read("records/v1.12.0/amd64/storage.json"))
    assert record["schematic"] == schematic and record["platform"] == "nocloud"
    assert record["upstream_path"] == f"image/{schematic}/v1.12.0/nocloud-amd64.qcow2"
    assert simulator.downloads("v1.12.0", "amd64", "nocloud", schematic) == 1
    assert simulator.downloads("v1.12.0", "amd64", "nocloud") == 1, "the vanilla variant is another image"
    products = json.loads(pipeline_env.read("streams/v1/images.json"))["products"]
    assert {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.0:amd64:storage"} <= set(products)
    assert json.loads(pipeline_env.read("state/v1.12.0/amd64/variants.json")) == {"storage": schematic}


def test_an_extension_the_version_lacks_fails_before_any_download(
    pipeline_env: PipelineStore, simulator, schematic_file, monkeypatch, capsys
):
    monkeypatch.setenv("TALOS_VARIANTS", f"nocloud,gpu=nocloud:@{schematic_file('gpu', GPU)}")
    assert main(["publish", "v1.12.0", "v1.11.6", "--arch", "amd64"]) == 2
    err = capsys.readouterr().err
    assert f'"{MISSING}"' in err and "Talos v1.11.6" in err and "variant 'gpu'" in err
    assert "v1.12.0" not in err.split("error:", 1)[1], "v1.12.0 has the extension"
    assert image_requests(simulator) == [], "nothing was asked of the factory's images"
    assert not pipeline_env.keys("records/")


def test_the_run_itself_checks_the_extensions_before_the_disk_step(
    pipeline_env: PipelineStore, simulator, schematic_file, monkeypatch
):
    """What a sensor- or UI-launched run does: `talos_release` fails the partition, with the same message."""
    monkeypatch.setenv("TALOS_VARIANTS", f"nocloud,gpu=nocloud:@{schematic_file('gpu', GPU)}")
    error = Launcher(Settings.from_env()).publish_partition("v1.11.6", "amd64", ["nocloud", "gpu"])
    assert error is not None and f'"{MISSING}"' in error and "Talos v1.11.6" in error
    assert image_requests(simulator) == []
    assert not pipeline_env.keys("state/v1.11.6/amd64/")


def test_a_schematic_id_variant_is_checked_the_same_way(pipeline_env: PipelineStore, simulator, monkeypatch, capsys):
    schematic = register(simulator, GPU)
    monkeypatch.setenv("TALOS_VARIANTS", f"nocloud,gpu=nocloud:{schematic}")
    assert main(["publish", "v1.11.6", "--arch", "amd64"]) == 2
    err = capsys.readouterr().err
    assert f'"{MISSING}"' in err and "Talos v1.11.6" in err and schematic in err
    assert main(["publish", "v1.12.0", "--arch", "amd64", "--variant", "gpu"]) == 0
    assert simulator.downloads("v1.12.0", "amd64", "nocloud", schematic) == 1
    assert json.loads(pipeline_env.read("records/v1.12.0/amd64/gpu.json"))["schematic"] == schematic
    assert image_requests(simulator) and all("v1.11.6" not in path for _, path, _ in image_requests(simulator))


def test_unknown_ids_and_unusable_files_name_the_value(
    pipeline_env: PipelineStore, simulator, schematic_file, monkeypatch, capsys
):
    unknown = "b" * 64
    cases = {
        f"x=nocloud:{unknown}": f"does not know schematic {unknown}",
        "x=nocloud:@/nonexistent/x.yaml": "schematic file /nonexistent/x.yaml cannot be read",
        f"x=nocloud:@{schematic_file('bad', 'customization: {unknownField: 1}')}": "refused the schematic",
    }
    for variants, fragment in cases.items():
        monkeypatch.setenv("TALOS_VARIANTS", variants)
        assert main(["publish", "v1.12.0", "--arch", "amd64"]) == 2, variants
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, err
    assert image_requests(simulator) == []

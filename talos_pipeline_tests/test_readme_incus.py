"""Every `incus` command README.md shows, run as written against the real Incus client and daemon.

The commands are read from the README's `sh` blocks (continuation lines joined), the example
server URL is replaced by a test server over a published store, and each runs through `bash` in
a directory holding a `controlplane.yaml`, on a daemon set up like one after `incus admin init`
(a storage pool, a root disk in the default profile).

These machines cannot create virtual machines (no `vhost_vsock`), so a `launch` goes as far as
that: the client must accept every argument, resolve the image alias on our server, and the
daemon must accept the profiles and device overrides, failing only with the VM-driver error;
its `-c` keys are checked by setting them on a scratch profile (which the daemon validates).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from serve import create_app, generate_self_signed, start_in_thread
from talos_pipeline.core.stores import DirectoryStore

from .incus_fixtures import IncusClient, needs_incus, start_incusd, stop_incusd

pytestmark = [needs_incus, pytest.mark.slow, pytest.mark.incus]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_URL = "https://images.example.com"
VM_DRIVER_MISSING = "vhost_vsock"
MACHINE_CONFIG = "version: v1alpha1\nmachine:\n  type: controlplane\n"


def readme_commands(text: str) -> list[str]:
    """The `incus …` commands of every `sh` block, continuation lines joined, comments dropped;
    a command shown twice (the introduction repeats a few) runs once."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split("  #", 1)[0].strip()
            if words.startswith("incus "):
                commands.append(re.sub(r"\s+", " ", words))
    return list(dict.fromkeys(commands))


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    generate_self_signed(cert, key)
    return cert, key


@pytest.fixture(scope="module")
def store(tmp_path_factory, qcow2_cache) -> Path:
    from talos_pipeline.simulator import UpstreamSimulator

    root = tmp_path_factory.mktemp("published") / "store"
    with UpstreamSimulator(disk_size=1024 * 1024, cache_dir=qcow2_cache) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_HOME"))}
        env.update(
            TALOS_STORE=str(root),
            TALOS_RELEASES_URL=sim.releases_url,
            TALOS_FACTORY_URL=sim.factory_url,
            TALOS_SIGNING="none",
        )
        result = subprocess.run(
            [sys.executable, "-m", "talos_pipeline.cli", "publish", "v1.12.0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture(scope="module")
def server(store, tls):
    url, stop = start_in_thread(create_app(DirectoryStore(store)), cert=str(tls[0]), key=str(tls[1]))
    yield url
    stop()


@pytest.fixture(scope="module")
def incus(tmp_path_factory, tls) -> IncusClient:
    state = tmp_path_factory.mktemp("incus")
    home = tmp_path_factory.mktemp("home")
    proc = start_incusd(state, tls[0])
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "INCUS_DIR": str(state),
        "INCUS_CONF": str(home / "conf"),
        "INCUS_CACHE": str(home / "cache"),
    }
    client = IncusClient(env=env, conf=home / "conf")
    # what `incus admin init` leaves behind, minus a network: a pool and a root disk
    client.run("storage", "create", "default", "dir")
    client.run("profile", "device", "add", "default", "root", "disk", "path=/", "pool=default")
    (client.conf / "servercerts").mkdir(parents=True, exist_ok=True)
    (client.conf / "servercerts" / "talos.crt").write_bytes(tls[0].read_bytes())  # as the README says
    yield client
    stop_incusd(proc)


def _config_pairs(command: str) -> list[str]:
    words = shlex.split(command.replace('"$(cat controlplane.yaml)"', shlex.quote(MACHINE_CONFIG)))
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-c", "--config")]


def test_the_readme_shows_the_commands_this_test_runs():
    commands = readme_commands((ROOT / "README.md").read_text())
    verbs = {" ".join(c.split()[1:3]) for c in commands}
    assert {"remote add", "launch talos:talos/latest", "profile create", "image import"} <= verbs, commands
    assert not [c for c in commands if re.search(r"-d cidata", c)], "-d cannot add a device (see README)"


def test_a_scratch_profile_rejects_bad_config_so_it_can_check_the_readmes(incus):
    incus.run("profile", "create", "config-probe")
    bad = incus.run("profile", "set", "config-probe", "limits.memory=4GiBX", check=False)
    assert bad.returncode != 0, "the daemon must validate profile config for the check below to mean anything"
    incus.run("profile", "delete", "config-probe")


def test_every_incus_command_in_the_readme_works_as_written(incus, server, tmp_path):
    (tmp_path / "controlplane.yaml").write_text(MACHINE_CONFIG)
    commands = readme_commands((ROOT / "README.md").read_text())
    for number, written in enumerate(commands):
        command = written.replace(EXAMPLE_URL, server)
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=incus.env, capture_output=True, text=True, timeout=300
        )
        output = result.stdout + result.stderr
        if command.startswith("incus launch "):
            assert result.returncode != 0 and VM_DRIVER_MISSING in output, f"{written}\n{output}"
            pairs = _config_pairs(command)
            if pairs:
                probe = f"launch-config-{number}"
                incus.run("profile", "create", probe)
                incus.run("profile", "set", probe, *pairs)
                incus.run("profile", "delete", probe)
        else:
            assert result.returncode == 0, f"{written}\n{output}"
    aliases = {alias["name"] for alias in incus.json("image", "alias", "list", "local:")}
    assert "talos-1.12" in aliases, "the direct URL import named its image"

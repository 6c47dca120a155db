"""The real Incus daemon and client, isolated in temporary directories.

incusd runs with its own `INCUS_DIR` (state, socket and image cache), so tests never touch a
system daemon and start with a cold cache. `SSL_CERT_FILE` makes incusd trust the test server's
self-signed certificate for direct URL imports; the CLI trusts it through
`$INCUS_CONF/servercerts/<remote>.crt`, exactly as users are told to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

INCUSD = "/usr/libexec/incus/incusd"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

needs_incus = pytest.mark.skipif(  # never skipped in CI: scripts/test installs Incus there
    not (os.path.exists(INCUSD) and shutil.which("incus") and os.geteuid() == 0) and not os.environ.get("CI"),
    reason="needs root and the Debian incus + incus-client packages (scripts/test installs them)",
)


@dataclass
class IncusClient:
    env: dict[str, str]
    conf: Path

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        result = subprocess.run(["incus", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"incus {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str):
        return json.loads(self.run(*args, "--format", "json").stdout)

    def add_remote(self, name: str, url: str, cert: Path) -> None:
        servercerts = self.conf / "servercerts"
        servercerts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert, servercerts / f"{name}.crt")
        self.run("remote", "add", name, url, "--protocol", "simplestreams", "--public")


def start_incusd(state_dir: Path, trusted_cert: Path) -> subprocess.Popen:
    bundle = state_dir / "ca-bundle.crt"
    system = Path(SYSTEM_CA_BUNDLE).read_bytes() if Path(SYSTEM_CA_BUNDLE).exists() else b""
    bundle.write_bytes(system + b"\n" + trusted_cert.read_bytes())
    env = dict(os.environ, INCUS_DIR=str(state_dir), SSL_CERT_FILE=str(bundle))
    with open(state_dir / "incusd.out", "wb") as log:  # incusd writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [INCUSD, "--group", "root", "--logfile", str(state_dir / "incusd.log")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = subprocess.run(["incus", "info"], env=env, capture_output=True)
        if probe.returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop_incusd(proc)
    raise RuntimeError(
        f"incusd did not start; see {state_dir / 'incusd.log'}:\n{(state_dir / 'incusd.out').read_text()[-2000:]}"
    )


def stop_incusd(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

"""Pytest fixtures around the fake Sigstore.

Import them where they are needed::

    from talos_pipeline_tests.fake_sigstore.fixtures import (  # noqa: F401
        fake_sigstore,
        sigstore_ambient,
    )
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import FakeSigstore, ambient_env

JS_DIR = Path(__file__).resolve().parent.parent / "js"


@pytest.fixture(scope="session")
def fake_sigstore() -> Iterator[FakeSigstore]:
    """One fake Sigstore for the whole session (repository talos-org/talos-incus)."""
    with FakeSigstore() as fake:
        yield fake


@pytest.fixture
def sigstore_ambient(fake_sigstore: FakeSigstore, monkeypatch: pytest.MonkeyPatch) -> FakeSigstore:
    """Set the GitHub Actions OIDC variables and TALOS_SIGSTORE_TRUST_CONFIG for this test."""
    for name, value in ambient_env(fake_sigstore).items():
        monkeypatch.setenv(name, value)
    return fake_sigstore


def missing_tool(message: str) -> None:
    """Skip on a developer machine; fail in CI, where scripts/test installs everything."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def node_verifier() -> list[str]:
    """`node verify.mjs`, with node_modules installed from the committed lockfile if missing."""
    node = shutil.which("node")
    if node is None:
        missing_tool("node is not installed: the sigstore-js cross-check cannot run")
    if not (JS_DIR / "node_modules" / "@sigstore" / "verify").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            missing_tool("npm is not installed: cannot install the sigstore-js verifier")
        subprocess.run(
            [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return [node, str(JS_DIR / "verify.mjs")]


def run_node(cmd: list[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)

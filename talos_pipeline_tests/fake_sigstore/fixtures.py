"""Pytest fixtures around the fake Sigstore.

Import them where they are needed::

    from talos_pipeline_tests.fake_sigstore.fixtures import (  # noqa: F401
        fake_sigstore,
        sigstore_ambient,
    )
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeSigstore, ambient_env


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

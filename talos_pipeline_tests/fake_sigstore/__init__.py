"""A loopback fake Sigstore (OIDC token endpoint, Fulcio, CT log, Rekor v1) for offline tests.

    from talos_pipeline_tests.fake_sigstore import FakeSigstore, ambient_env

    with FakeSigstore(repository="ORG/REPO") as fake:
        env = ambient_env(fake)      # set these (monkeypatch.setenv) and sign as in GitHub Actions
        fake.trusted_root_path       # bare trusted_root.json for verifiers
        fake.counters.fulcio_certificates_issued

Pytest fixtures (`fake_sigstore`, `sigstore_ambient`) live in `.fixtures`; import them into a
test module or conftest to use them. What the fake implements, and why: docs/sigstore.md.
"""

from .server import (
    GITHUB_ISSUER,
    Counters,
    FakeSigstore,
    ambient_env,
    closed_port_url,
)

__all__ = ["GITHUB_ISSUER", "Counters", "FakeSigstore", "ambient_env", "closed_port_url"]

"""Dagster resources: the settings of `core.settings`, each an `EnvVar` when it is set.

An unset `EnvVar` is an error in Dagster, so `env_or` binds the variable only when the
environment of the loading process has it and the documented default otherwise; the value is
still resolved by Dagster at run time and stays hidden in the UI.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from talos_pipeline.core.discovery import DiscoveryPolicy
from talos_pipeline.core.settings import (
    DEFAULT_ARCHES,
    DEFAULT_FACTORY_URL,
    DEFAULT_INCLUDE_PRERELEASES,
    DEFAULT_MIN_VERSION,
    DEFAULT_RELEASES_URL,
    DEFAULT_VARIANTS,
    DISK_MODES,
    SIGNING_MODES,
    check_choice,
    default_store,
)
from talos_pipeline.core.signing import Signer, make_signer
from talos_pipeline.core.store import Store, open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.variants import Variant, parse_arches, parse_variants


def env_or(name: str, default: Any) -> Any:
    return dg.EnvVar(name) if os.environ.get(name) else default


class TalosStore(dg.ConfigurableResource):
    """Where images and the catalog are published (`TALOS_STORE`: a directory or s3://bucket/prefix)."""

    location: str

    def open(self) -> Store:
        store = open_store(self.location)
        store.check_ready()
        return store


class TalosUpstream(dg.ConfigurableResource):
    """GitHub's releases API and the Talos Image Factory."""

    releases_url: str = DEFAULT_RELEASES_URL
    factory_url: str = DEFAULT_FACTORY_URL
    github_token: str | None = None

    def releases(self, log=None) -> ReleasesClient:
        return ReleasesClient(self.releases_url, self.github_token, log=log)

    def factory(self, log=None) -> FactoryClient:
        return FactoryClient(self.factory_url, log=log)


class TalosDiscovery(dg.ConfigurableResource):
    """Which upstream releases the release sensor publishes (see `core.discovery`)."""

    include_prereleases: str = DEFAULT_INCLUDE_PRERELEASES
    min_version: str = DEFAULT_MIN_VERSION

    def policy(self) -> DiscoveryPolicy:
        return DiscoveryPolicy.from_settings(self.include_prereleases, self.min_version)


class TalosImages(dg.ConfigurableResource):
    """Which images each partition produces, and whether disks are mirrored or proxied."""

    arches: str = DEFAULT_ARCHES
    variants: str = DEFAULT_VARIANTS
    disk_mode: str = "mirror"

    def variant_list(self) -> list[Variant]:
        return parse_variants(self.variants)

    def arch_list(self) -> list[str]:
        return parse_arches(self.arches)

    def checked_disk_mode(self) -> str:
        return check_choice("TALOS_DISK_MODE", self.disk_mode, DISK_MODES)


class TalosSigning(dg.ConfigurableResource):
    """Sigstore keyless, key mode, or none; one signer (one Fulcio certificate) per run."""

    mode: str = "none"
    key: str | None = None
    key_password: str | None = None
    trust_config: str | None = None
    _signer: Signer | None = PrivateAttr(default=None)

    def signer(self) -> Signer:
        if self._signer is None:
            check_choice("TALOS_SIGNING", self.mode, SIGNING_MODES)
            self._signer = make_signer(
                self.mode, key=self.key, key_password=self.key_password, trust_config_path=self.trust_config
            )
        return self._signer

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._signer is not None and hasattr(self._signer, "close"):
            self._signer.close()


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "talos_store": TalosStore(location=env_or("TALOS_STORE", default_store())),
        "talos_upstream": TalosUpstream(
            releases_url=env_or("TALOS_RELEASES_URL", DEFAULT_RELEASES_URL),
            factory_url=env_or("TALOS_FACTORY_URL", DEFAULT_FACTORY_URL),
            github_token=env_or("GITHUB_TOKEN", None),
        ),
        "talos_discovery": TalosDiscovery(
            include_prereleases=env_or("TALOS_INCLUDE_PRERELEASES", DEFAULT_INCLUDE_PRERELEASES),
            min_version=env_or("TALOS_MIN_VERSION", DEFAULT_MIN_VERSION),
        ),
        "talos_images": TalosImages(
            arches=env_or("TALOS_ARCHES", DEFAULT_ARCHES),
            variants=env_or("TALOS_VARIANTS", DEFAULT_VARIANTS),
            disk_mode=env_or("TALOS_DISK_MODE", "mirror"),
        ),
        "talos_signing": TalosSigning(
            mode=env_or("TALOS_SIGNING", "none"),
            key=env_or("TALOS_SIGNING_KEY", None),
            key_password=env_or("TALOS_SIGNING_KEY_PASSWORD", None),
            trust_config=env_or("TALOS_SIGSTORE_TRUST_CONFIG", None),
        ),
    }

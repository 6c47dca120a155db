"""Dagster resources: the settings of `core/settings.py`, each bound to its environment variable.

An unset `EnvVar` is an error in Dagster, so `bound` binds the variable only when the
environment of the loading process has it and the documented default otherwise; the value is
still resolved by Dagster at run time and stays hidden in the UI. Every resource turns its
fields back into `Settings` through the same table, so parsing and validation live in one place.

In-process runs (`talos-pipeline publish`, the demo) bind the values of a `Settings` instead
(`resources_from_settings`), so a caller can change a setting without touching `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dagster as dg
import requests
from pydantic import PrivateAttr

from talos_pipeline.core.discovery import DiscoveryPolicy
from talos_pipeline.core.selfservice import self_service_variants
from talos_pipeline.core.settings import SETTING_BY_NAME, DiskMode, Settings, SigningMode
from talos_pipeline.core.signing import Signer, signer_for
from talos_pipeline.core.stores import Store, open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.variants import Variant, select_variants

Log = Callable[[str], None]
WEBHOOK_TIMEOUT = 10.0
"""Seconds a webhook may take to connect and to answer; the sensor's tick waits for it."""


def bound(name: str) -> Any:
    """The value a resource field is bound to for setting `name` (see the module docstring)."""
    setting = SETTING_BY_NAME[name]
    if os.environ.get(setting.env):
        return dg.EnvVar(setting.env)
    return str(setting.value({})) if setting.default else None


def given(settings: Settings) -> Callable[[str], Any]:
    """Field values from `settings`, as text the way the environment spells them. A secret that
    came from the environment stays an `EnvVar`: a literal value would be written into the
    definition snapshot each run stores in the instance."""
    environ = settings.as_environ()

    def value(name: str) -> Any:
        setting = SETTING_BY_NAME[name]
        from_environment = bool(os.environ.get(setting.env)) and setting.value(os.environ) == getattr(settings, name)
        if setting.secret and from_environment:
            return dg.EnvVar(setting.env)
        return environ.get(setting.env)

    return value


class _SettingsResource(dg.ConfigurableResource):
    """A resource whose fields are rows of the settings table (same names)."""

    def settings(self) -> Settings:
        return Settings.from_values({name: getattr(self, name) for name in type(self).model_fields})


class TalosStore(_SettingsResource):
    """Where images and the catalog are published (`TALOS_STORE`: a directory or s3://bucket/prefix)."""

    store: str

    def open(self) -> Store:
        store = open_store(self.store, self.settings())
        store.check_ready()
        return store


class TalosUpstream(_SettingsResource):
    """GitHub's releases API and the Talos Image Factory."""

    releases_url: str | None = None
    factory_url: str | None = None
    github_token: str | None = None
    upstream_read_timeout: str | None = None
    upstream_first_byte_timeout: str | None = None

    def releases(self, log: Log | None = None) -> ReleasesClient:
        settings = self.settings()
        return ReleasesClient.from_settings(settings, log=log)

    def factory(self, log: Log | None = None) -> FactoryClient:
        return FactoryClient.from_settings(self.settings(), log=log)


class TalosDiscovery(_SettingsResource):
    """Which upstream releases the release sensor publishes (see `core/discovery.py`)."""

    include_prereleases: str | None = None
    min_version: str | None = None

    def policy(self) -> DiscoveryPolicy:
        return DiscoveryPolicy.from_settings(self.settings())


class TalosImages(_SettingsResource):
    """Which images each partition produces, and whether disks are mirrored or proxied.

    Besides the configured variants (`TALOS_VARIANTS`, built by default), a run may select the
    self-service variants users requested (`TALOS_SELF_SERVICE`), which live in the store so every
    process sees the same set (docs/self-service.md)."""

    arches: str | None = None
    variants: str | None = None
    disk_mode: str | None = None
    store: str | None = None
    self_service: str | None = None
    self_service_versions: str | None = None

    def variant_list(self) -> list[Variant]:
        return self.settings().variant_list()

    def select(self, names: list[str]) -> list[Variant]:
        """The variants a run builds: the configured ones, or those `names` selects among the
        configured and the self-service variants."""
        configured = self.variant_list()
        extra = [name for name in names if name not in {v.name for v in configured}]
        if not extra:
            return select_variants(configured, names)
        settings = self.settings()
        return select_variants(configured + self_service_variants(open_store(settings.store, settings), extra), names)

    def arch_list(self) -> list[str]:
        return self.settings().arch_list()

    def checked_disk_mode(self) -> DiskMode:
        return self.settings().disk_mode


class TalosSigning(_SettingsResource):
    """Sigstore keyless, key mode, or none; one signer (one Fulcio certificate) per run."""

    signing: str | None = None
    signing_key: str | None = None
    signing_key_password: str | None = None
    trust_config: str | None = None
    _signer: Signer | None = PrivateAttr(default=None)

    @property
    def mode(self) -> SigningMode:
        return self.settings().signing

    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = signer_for(self.settings())
        return self._signer

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._signer is not None:
            self._signer.close()


class TalosAlerts(_SettingsResource):
    """Where failed publications are reported besides the sensor's log (`TALOS_ALERT_WEBHOOK`),
    and the Dagster UI the report links to (`TALOS_DAGSTER_URL`)."""

    alert_webhook: str | None = None
    dagster_url: str | None = None

    def run_url(self, run_id: str) -> str | None:
        base = self.settings().dagster_url
        return f"{base}/runs/{run_id}" if base else None

    def post(self, body: dict[str, Any], log: Log) -> None:
        """POST `body` as JSON to the webhook, if one is set; a webhook that is down is logged,
        never raised: the next failure is reported all the same."""
        url = self.settings().alert_webhook
        if not url:
            return
        try:
            response = requests.post(url, json=body, timeout=WEBHOOK_TIMEOUT)
            response.raise_for_status()
        except requests.RequestException as exc:
            log(f"TALOS_ALERT_WEBHOOK: could not report run {body.get('run_id')}: {exc}")


def _resources(value: Callable[[str], Any]) -> dict[str, dg.ConfigurableResource]:
    def fields(*names: str) -> dict[str, Any]:
        return {name: value(name) for name in names}

    return {
        "talos_store": TalosStore(**fields("store")),
        "talos_upstream": TalosUpstream(
            **fields(
                "releases_url", "factory_url", "github_token", "upstream_read_timeout", "upstream_first_byte_timeout"
            )
        ),
        "talos_discovery": TalosDiscovery(**fields("include_prereleases", "min_version")),
        "talos_images": TalosImages(
            **fields("arches", "variants", "disk_mode", "store", "self_service", "self_service_versions")
        ),
        "talos_signing": TalosSigning(**fields("signing", "signing_key", "signing_key_password", "trust_config")),
        "talos_alerts": TalosAlerts(**fields("alert_webhook", "dagster_url")),
    }


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """Every resource, bound to the environment variables (the code location's resources)."""
    return _resources(bound)


def resources_from_settings(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource with the values of `settings` (for in-process runs; see `given`)."""
    return _resources(given(settings))


@dg.definitions
def resources() -> dg.Definitions:
    """Bound when the code location loads, resolved by Dagster in each run."""
    return dg.Definitions(resources=resources_from_env())

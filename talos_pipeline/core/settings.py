"""Every setting, its environment variable and its default, in one place.

The CLI and `serve/` read settings from the environment through `Settings.from_env`; the
Dagster resources declare the same variables as `EnvVar` fields (see `defs/resources.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .variants import Variant, parse_arches, parse_variants

DEFAULT_RELEASES_URL = "https://api.github.com/repos/siderolabs/talos/releases"
DEFAULT_FACTORY_URL = "https://factory.talos.dev"
DEFAULT_ARCHES = "amd64,arm64"
DEFAULT_VARIANTS = "nocloud,metal"
DEFAULT_INCLUDE_PRERELEASES = "false"
DEFAULT_MIN_VERSION = "v1.10.0"
SIGNING_MODES = ("sigstore", "key", "none")
DISK_MODES = ("mirror", "proxy")


def default_store() -> str:
    """A data directory beside the current directory, so a fresh clone works with no setup."""
    return str(Path("data/store").resolve())


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid: use one of {', '.join(choices)}")
    return value


def parse_bool(name: str, value: str | bool) -> bool:
    """A boolean setting: true/false, yes/no, on/off, 1/0 (anything else is an error naming it)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r} is not valid: use true or false")


@dataclass(frozen=True)
class Settings:
    store: str = field(default_factory=default_store)
    releases_url: str = DEFAULT_RELEASES_URL
    factory_url: str = DEFAULT_FACTORY_URL
    github_token: str | None = None
    arches: str = DEFAULT_ARCHES
    variants: str = DEFAULT_VARIANTS
    signing: str = "none"
    signing_key: str | None = None
    signing_key_password: str | None = None
    trust_config: str | None = None
    disk_mode: str = "mirror"
    public_url: str | None = None
    verify_reads: bool = False
    include_prereleases: bool = False
    min_version: str = DEFAULT_MIN_VERSION

    ENV = {
        "store": "TALOS_STORE",
        "releases_url": "TALOS_RELEASES_URL",
        "factory_url": "TALOS_FACTORY_URL",
        "github_token": "GITHUB_TOKEN",
        "arches": "TALOS_ARCHES",
        "variants": "TALOS_VARIANTS",
        "signing": "TALOS_SIGNING",
        "signing_key": "TALOS_SIGNING_KEY",
        "signing_key_password": "TALOS_SIGNING_KEY_PASSWORD",
        "trust_config": "TALOS_SIGSTORE_TRUST_CONFIG",
        "disk_mode": "TALOS_DISK_MODE",
        "public_url": "TALOS_PUBLIC_URL",
        "verify_reads": "TALOS_VERIFY_READS",
        "include_prereleases": "TALOS_INCLUDE_PRERELEASES",
        "min_version": "TALOS_MIN_VERSION",
    }
    BOOLEANS = ("verify_reads", "include_prereleases")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {attr: environ[var] for attr, var in cls.ENV.items() if environ.get(var)}
        for attr in cls.BOOLEANS:
            if attr in values:
                values[attr] = parse_bool(cls.ENV[attr], str(values[attr]))
        return cls(**values).validated()

    def validated(self) -> Settings:
        self.variant_list()
        self.arch_list()
        check_choice("TALOS_SIGNING", self.signing, SIGNING_MODES)
        check_choice("TALOS_DISK_MODE", self.disk_mode, DISK_MODES)
        if self.signing == "key" and not self.signing_key:
            raise ConfigError(
                "TALOS_SIGNING=key needs TALOS_SIGNING_KEY (a PEM private key or its path); "
                "create one with `talos-pipeline keygen`"
            )
        for name in ("releases_url", "factory_url"):
            value = getattr(self, name)
            if not value.startswith(("http://", "https://")):
                raise ConfigError(f"{self.ENV[name]}={value!r} is not an http(s) URL")
        return self

    def variant_list(self) -> list[Variant]:
        return parse_variants(self.variants)

    def arch_list(self) -> list[str]:
        return parse_arches(self.arches)

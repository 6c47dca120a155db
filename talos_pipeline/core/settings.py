"""Every setting: its environment variable, its default and its meaning, defined once.

`SETTINGS` is the table. `Settings.from_env()` reads it for the CLI, `serve/` and the demo
(the demo builds one with `Settings.from_env(...).replace(...)` instead of touching
`os.environ`); the Dagster resources bind the same variables as `EnvVar`s through `bound_value`.
A value that cannot be used is a `ConfigError` that names the variable and says what to use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .variants import Variant, parse_arches, parse_variants


class SigningMode(StrEnum):
    """`TALOS_SIGNING`: keyless Sigstore (ambient OIDC), a PEM key, or no signatures."""

    SIGSTORE = "sigstore"
    KEY = "key"
    NONE = "none"


class DiskMode(StrEnum):
    """`TALOS_DISK_MODE`: keep the hashed bytes in the store, or stream them from the factory."""

    MIRROR = "mirror"
    PROXY = "proxy"


class S3UploadMode(StrEnum):
    """`TALOS_S3_UPLOAD`: multipart upload while hashing, or spool to a local file first."""

    STREAM = "stream"
    SPOOL = "spool"


class AccessLogFormat(StrEnum):
    """`TALOS_SERVE_ACCESS_LOG`: one access-log line per response, as text or JSON, or none."""

    PLAIN = "plain"
    JSON = "json"
    OFF = "off"


Parser = Callable[[str, str], Any]
E = TypeVar("E", bound=StrEnum)


def parse_text(_name: str, value: str) -> str:
    return value.strip()


def parse_optional(_name: str, value: str) -> str | None:
    return value.strip() or None


def parse_url(name: str, value: str) -> str:
    value = value.strip()
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={value!r} is not an http(s) URL")
    return value.rstrip("/")


def parse_optional_url(name: str, value: str) -> str | None:
    return parse_url(name, value) if value.strip() else None


def parse_bool(name: str, value: str | bool) -> bool:
    """true/false, yes/no, on/off, 1/0 (anything else is an error naming the setting)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r} is not valid: use true or false")


def parse_positive_int(name: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}={value!r} is not valid: use a whole number of at least 1")
    return int(text)


def parse_optional_positive_int(name: str, value: str) -> int | None:
    return parse_positive_int(name, value) if value.strip() else None


def parse_non_negative_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if number < 0 or number != number:
        raise ConfigError(f"{name}={value!r} is not valid: use a number of seconds, 0 or more")
    return number


def parse_positive_float(name: str, value: str) -> float:
    number = parse_non_negative_float(name, value)
    if number == 0:
        raise ConfigError(f"{name}={value!r} is not valid: use a number of seconds above 0")
    return number


def parse_non_negative_int(name: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit():
        raise ConfigError(f"{name}={value!r} is not valid: use a whole number, 0 or more")
    return int(text)


MIN_TOKEN_LENGTH = 16


def parse_tokens(name: str, value: str) -> str | None:
    """Comma-separated bearer tokens, each long enough to be a secret; None when unset."""
    tokens = [token.strip() for token in value.split(",") if token.strip()]
    short = [token for token in tokens if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token]
    if short:
        raise ConfigError(
            f"{name}: {len(short)} of the tokens are shorter than {MIN_TOKEN_LENGTH} characters or contain spaces; "
            "use long random tokens, e.g. `openssl rand -hex 24`"
        )
    return ",".join(tokens) or None


def choice(enum: type[E]) -> Callable[[str, str], E]:
    def parse(name: str, value: str) -> E:
        try:
            return enum(value.strip().lower())
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not valid: use one of {', '.join(enum)}") from None

    return parse


def parse_store(name: str, value: str) -> str:
    """`s3://bucket[/prefix]` as given; a directory path made absolute (runs may change directory)."""
    value = value.strip()
    if not value:
        raise ConfigError(f"{name} is empty: give a directory path or s3://bucket[/prefix]")
    if value.startswith("s3://"):
        return value
    if "://" in value:
        raise ConfigError(f"{name}={value!r}: unsupported scheme; use a directory path or s3://bucket[/prefix]")
    return str(Path(value).expanduser().resolve())


@dataclass(frozen=True)
class Setting:
    name: str
    """The `Settings` attribute (and the Dagster resource field that binds the same variable)."""
    env: str
    default: str
    """As the environment would spell it; "" means unset."""
    parse: Parser
    help: str
    secret: bool = False

    def value(self, environ: Mapping[str, str]) -> Any:
        text = environ.get(self.env)
        return self.parse(self.env, text if text not in (None, "") else self.default)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "store",
        "TALOS_STORE",
        "data/store",
        parse_store,
        "s3://bucket[/prefix] (boto3; AWS_* variables, AWS_ENDPOINT_URL for R2/MinIO/Ceph) or a directory",
    ),
    Setting(
        "releases_url",
        "TALOS_RELEASES_URL",
        "https://api.github.com/repos/siderolabs/talos/releases",
        parse_url,
        "GitHub's releases API for siderolabs/talos",
    ),
    Setting("factory_url", "TALOS_FACTORY_URL", "https://factory.talos.dev", parse_url, "the Talos Image Factory"),
    Setting(
        "upstream_read_timeout",
        "TALOS_UPSTREAM_READ_TIMEOUT",
        "120",
        parse_positive_float,
        "seconds without a byte from GitHub or the factory (mid-body, or a small request) before the "
        "connection counts as dead and the image fails, nothing published",
    ),
    Setting(
        "upstream_first_byte_timeout",
        "TALOS_UPSTREAM_FIRST_BYTE_TIMEOUT",
        "1200",
        parse_positive_float,
        "seconds the factory may take to start sending a disk (a cold build takes minutes)",
    ),
    Setting(
        "github_token",
        "GITHUB_TOKEN",
        "",
        parse_optional,
        "token for the releases API (60 requests/hour without; 1,000 with the Actions token)",
        secret=True,
    ),
    Setting("arches", "TALOS_ARCHES", "amd64,arm64", parse_text, "architectures each version is published for"),
    Setting(
        "variants",
        "TALOS_VARIANTS",
        "nocloud,metal",
        parse_text,
        "variants; the first is the default; custom: NAME=PLATFORM:SCHEMATIC_ID or NAME=PLATFORM:@schematic.yaml",
    ),
    Setting(
        "publish_jobs",
        "TALOS_PUBLISH_JOBS",
        "4",
        parse_positive_int,
        "version×arch partitions a CLI publication runs at once",
    ),
    Setting(
        "signing",
        "TALOS_SIGNING",
        SigningMode.NONE,
        choice(SigningMode),
        "sigstore (keyless, ambient OIDC), key (TALOS_SIGNING_KEY) or none",
    ),
    Setting(
        "signing_key", "TALOS_SIGNING_KEY", "", parse_optional, "PEM private key (text or path) for key mode", True
    ),
    Setting(
        "signing_key_password",
        "TALOS_SIGNING_KEY_PASSWORD",
        "",
        parse_optional,
        "password of an encrypted TALOS_SIGNING_KEY",
        secret=True,
    ),
    Setting(
        "trust_config",
        "TALOS_SIGSTORE_TRUST_CONFIG",
        "",
        parse_optional,
        "Sigstore ClientTrustConfig JSON of a private instance [public-good production]",
    ),
    Setting(
        "disk_mode",
        "TALOS_DISK_MODE",
        DiskMode.MIRROR,
        choice(DiskMode),
        "mirror (keep the hashed bytes in the store) or proxy (stream them from the factory)",
    ),
    Setting(
        "public_url",
        "TALOS_PUBLIC_URL",
        "",
        parse_optional_url,
        "the server's public base URL, for absolute links (Incus-Image-URL)",
    ),
    Setting(
        "verify_reads",
        "TALOS_VERIFY_READS",
        "false",
        parse_bool,
        "serve/ re-hashes full downloads from the store and cuts off a corrupted one",
    ),
    Setting(
        "self_service",
        "TALOS_SELF_SERVICE",
        "off",
        parse_bool,
        "serve/ accepts POST /requests for self-service variants, and the sensor builds them (docs/self-service.md)",
    ),
    Setting(
        "self_service_tokens",
        "TALOS_SELF_SERVICE_TOKENS",
        "",
        parse_tokens,
        "comma-separated bearer tokens that may POST /requests (required when TALOS_SELF_SERVICE is on)",
        secret=True,
    ),
    Setting(
        "self_service_versions",
        "TALOS_SELF_SERVICE_VERSIONS",
        "2",
        parse_positive_int,
        "a request is built for this many newest stable versions of the catalog (then follows new releases)",
    ),
    Setting(
        "self_service_pending",
        "TALOS_SELF_SERVICE_PENDING",
        "3",
        parse_positive_int,
        "requests one token may have queued or building at once (beyond: 429)",
    ),
    Setting(
        "include_prereleases",
        "TALOS_INCLUDE_PRERELEASES",
        "false",
        parse_bool,
        "the release sensor and publish --new also take -alpha/-beta/-rc releases",
    ),
    Setting(
        "min_version",
        "TALOS_MIN_VERSION",
        "v1.10.0",
        parse_text,
        "oldest release the release sensor and publish --new take",
    ),
    Setting(
        "sensor_interval_seconds",
        "TALOS_SENSOR_INTERVAL_SECONDS",
        "",
        parse_optional_positive_int,
        "release sensor polling [300 without GITHUB_TOKEN, 60 with]",
    ),
    Setting(
        "prune_keep",
        "TALOS_PRUNE_KEEP",
        "",
        parse_optional_positive_int,
        "retention: newest N versions of each product line [all]",
    ),
    Setting(
        "prune_keep_per_minor",
        "TALOS_PRUNE_KEEP_PER_MINOR",
        "",
        parse_optional_positive_int,
        "retention: newest N versions of each minor line [all]",
    ),
    Setting(
        "prune_grace_seconds",
        "TALOS_PRUNE_GRACE_SECONDS",
        "3600",
        parse_non_negative_float,
        "retention: files are deleted only after this long out of the catalog",
    ),
    Setting(
        "s3_upload",
        "TALOS_S3_UPLOAD",
        S3UploadMode.STREAM,
        choice(S3UploadMode),
        "stream (multipart while hashing) or spool (local file first)",
    ),
    Setting(
        "s3_part_size_mib", "TALOS_S3_PART_SIZE", "8", parse_positive_int, "S3 multipart part size in MiB (5 or more)"
    ),
    Setting("s3_concurrency", "TALOS_S3_CONCURRENCY", "4", parse_positive_int, "S3 parts uploaded at once"),
    Setting(
        "alert_webhook",
        "TALOS_ALERT_WEBHOOK",
        "",
        parse_optional_url,
        "URL that failed publications are POSTed to as JSON [unset: the sensor's log only]",
        secret=True,
    ),
    Setting(
        "dagster_url",
        "TALOS_DAGSTER_URL",
        "",
        parse_optional_url,
        "the Dagster UI's base URL, for links to failed runs in alerts",
    ),
    Setting(
        "serve_head_timeout",
        "TALOS_SERVE_HEAD_TIMEOUT",
        "10",
        parse_positive_float,
        "serve/: seconds for a complete request head (TLS handshake included); then the connection is closed",
    ),
    Setting(
        "serve_idle_timeout",
        "TALOS_SERVE_IDLE_TIMEOUT",
        "5",
        parse_positive_float,
        "serve/: seconds a keep-alive connection may wait for its next request",
    ),
    Setting(
        "serve_send_timeout",
        "TALOS_SERVE_SEND_TIMEOUT",
        "60",
        parse_positive_float,
        "serve/: seconds a client may leave a response unread before it is disconnected",
    ),
    Setting(
        "serve_max_connections",
        "TALOS_SERVE_MAX_CONNECTIONS",
        "1024",
        parse_positive_int,
        "serve/: connections per worker; beyond it the oldest idle or incomplete one is closed",
    ),
    Setting(
        "serve_max_connections_per_client",
        "TALOS_SERVE_MAX_CONNECTIONS_PER_CLIENT",
        "256",
        parse_non_negative_int,
        "serve/: connections per client address and worker (0: no cap); beyond it that client's oldest idle one "
        "is closed. Raise it (or 0) when a reverse proxy or CDN is the only client",
    ),
    Setting(
        "serve_proxy_connections",
        "TALOS_SERVE_PROXY_CONNECTIONS",
        "64",
        parse_positive_int,
        "serve/ proxy mode: downloads from the factory at once per worker (beyond: 503)",
    ),
    Setting(
        "serve_upstream_timeout",
        "TALOS_SERVE_UPSTREAM_TIMEOUT",
        "30",
        parse_positive_float,
        "serve/ proxy mode: seconds without a byte from the factory mid-body before the download is cut off",
    ),
    Setting(
        "serve_upstream_first_byte_timeout",
        "TALOS_SERVE_UPSTREAM_FIRST_BYTE_TIMEOUT",
        "600",
        parse_positive_float,
        "serve/ proxy mode: seconds the factory may take to answer (a cold build)",
    ),
    Setting(
        "serve_access_log",
        "TALOS_SERVE_ACCESS_LOG",
        AccessLogFormat.PLAIN,
        choice(AccessLogFormat),
        "serve/: access log as plain text lines, JSON lines, or off",
    ),
    Setting(
        "serve_tls_check_seconds",
        "TALOS_SERVE_TLS_CHECK_SECONDS",
        "10",
        parse_positive_float,
        "serve/: how often the certificate files are checked for renewal (SIGHUP reloads at once)",
    ),
)
SETTING_BY_ENV: dict[str, Setting] = {setting.env: setting for setting in SETTINGS}
SETTING_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Parsed, validated values of `SETTINGS` (one attribute per row)."""

    store: str
    releases_url: str
    factory_url: str
    upstream_read_timeout: float
    upstream_first_byte_timeout: float
    github_token: str | None
    arches: str
    variants: str
    publish_jobs: int
    signing: SigningMode
    signing_key: str | None
    signing_key_password: str | None
    trust_config: str | None
    disk_mode: DiskMode
    public_url: str | None
    verify_reads: bool
    self_service: bool
    self_service_tokens: str | None
    self_service_versions: int
    self_service_pending: int
    include_prereleases: bool
    min_version: str
    sensor_interval_seconds: int | None
    prune_keep: int | None
    prune_keep_per_minor: int | None
    prune_grace_seconds: float
    s3_upload: S3UploadMode
    s3_part_size_mib: int
    s3_concurrency: int
    alert_webhook: str | None
    dagster_url: str | None
    serve_head_timeout: float
    serve_idle_timeout: float
    serve_send_timeout: float
    serve_max_connections: int
    serve_max_connections_per_client: int
    serve_proxy_connections: int
    serve_upstream_timeout: float
    serve_upstream_first_byte_timeout: float
    serve_access_log: AccessLogFormat
    serve_tls_check_seconds: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        return cls(**{setting.name: setting.value(environ) for setting in SETTINGS}).validated()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from attribute → text (e.g. Dagster resource fields); defaults for the rest."""
        environ = {SETTING_BY_NAME[name].env: str(value) for name, value in values.items() if value is not None}
        return cls.from_env(environ)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (given as text or as parsed values)."""
        parsed = {
            name: value if not isinstance(value, str) else SETTING_BY_NAME[name].parse(SETTING_BY_NAME[name].env, value)
            for name, value in changes.items()
        }
        return dataclasses.replace(self, **parsed).validated()

    def as_environ(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for child processes)."""
        environ = {}
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            if value is not None:
                environ[setting.env] = str(value).lower() if isinstance(value, bool) else str(value)
        return environ

    def validated(self) -> Settings:
        self.variant_list()
        self.arch_list()
        if self.signing is SigningMode.KEY and not self.signing_key:
            raise ConfigError(
                "TALOS_SIGNING=key needs TALOS_SIGNING_KEY (a PEM private key or its path); "
                "create one with `talos-pipeline keygen`"
            )
        return self

    def variant_list(self) -> list[Variant]:
        return parse_variants(self.variants)

    def arch_list(self) -> list[str]:
        return parse_arches(self.arches)

    def token_list(self) -> list[str]:
        """TALOS_SELF_SERVICE_TOKENS as a list; a ConfigError when self-service is on without any."""
        tokens = [token for token in (self.self_service_tokens or "").split(",") if token]
        if self.self_service and not tokens:
            raise ConfigError(
                "TALOS_SELF_SERVICE=on needs TALOS_SELF_SERVICE_TOKENS (comma-separated bearer tokens, "
                "e.g. from `openssl rand -hex 24`)"
            )
        return tokens


def bound_value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """What a Dagster resource field should hold for setting `name`: the variable's name wrapped
    by the caller as an `EnvVar` when it is set (resolved at run time, hidden in the UI), else the
    documented default as text. Returns (env name, default text, is_set)."""
    environ = os.environ if environ is None else environ
    setting = SETTING_BY_NAME[name]
    return setting.env, setting.default, bool(environ.get(setting.env))

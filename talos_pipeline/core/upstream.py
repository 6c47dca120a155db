"""Clients for the two upstream services: GitHub's releases API and the Talos Image Factory.

Both raise `UpstreamError` with the URL, the answer and what to do; transient failures
(connection errors, 5xx) are retried with exponential backoff and jitter before that.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from .errors import InputError, UpstreamError
from .images import ImageRef
from .releases import ReleaseFacts
from .settings import SETTING_BY_NAME, Settings

USER_AGENT = "talos-pipeline/0.1 (+https://github.com/talos-pipeline)"
CONNECT_TIMEOUT = 10.0
RETRY_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class UpstreamTimeouts:
    """How long GitHub and the factory may stay silent (`TALOS_UPSTREAM_*_TIMEOUT`).

    A cold factory build holds back a disk's first byte for minutes, so that wait has its own
    bound; once bytes flow, or for any small request, silence for `read` seconds is a dead
    connection."""

    read: float = float(SETTING_BY_NAME["upstream_read_timeout"].default)
    first_byte: float = float(SETTING_BY_NAME["upstream_first_byte_timeout"].default)

    @classmethod
    def of(cls, settings: Settings) -> UpstreamTimeouts:
        return cls(read=settings.upstream_read_timeout, first_byte=settings.upstream_first_byte_timeout)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delays(self) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            ceiling = min(self.max_delay, self.base_delay * 2**attempt)
            yield random.uniform(ceiling / 2, ceiling)


def new_session(token: str | None = None) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _short_body(response: requests.Response) -> str:
    text = response.text.strip()
    return text[:200] if text else "(empty body)"


def _with_retries(
    what: str, send: Callable[[], requests.Response], policy: RetryPolicy, log: Callable[[str], None] | None
) -> requests.Response:
    """Send, retrying connection errors and 5xx; the last answer or error is the caller's."""
    delays = policy.delays()
    while True:
        try:
            response = send()
            if response.status_code not in RETRY_STATUSES:
                return response
            problem = f"HTTP {response.status_code}: {_short_body(response)}"
        except requests.RequestException as exc:
            response, problem = None, f"{type(exc).__name__}: {exc}"
        delay = next(delays, None)
        if delay is None:
            if response is not None:
                return response
            raise UpstreamError(
                f"{what}: {problem} after {policy.attempts} attempts; check that the service is "
                "reachable from this machine and retry later",
                transient=True,
            )
        if log:
            log(f"{what}: {problem}; retrying in {delay:.1f}s")
        time.sleep(delay)


class RateLimited(UpstreamError):
    def __init__(self, message: str, reset_at: datetime | None) -> None:
        super().__init__(message)
        self.reset_at = reset_at


@dataclass
class ReleasesPage:
    """The releases GitHub lists (drafts are never visible), or `not_modified` on a 304."""

    releases: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None
    not_modified: bool = False


class ReleasesClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        retry: RetryPolicy = RetryPolicy(),
        timeouts: UpstreamTimeouts = UpstreamTimeouts(),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.session = new_session(token)
        self.retry = retry
        self.timeouts = timeouts
        self.log = log

    @classmethod
    def from_settings(cls, settings: Settings, log: Callable[[str], None] | None = None) -> ReleasesClient:
        return cls(settings.releases_url, settings.github_token, timeouts=UpstreamTimeouts.of(settings), log=log)

    def _get(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        response = _with_retries(
            f"GitHub releases {url}",
            lambda: self.session.get(url, headers=headers, timeout=(CONNECT_TIMEOUT, self.timeouts.read)),
            self.retry,
            self.log,
        )
        self._raise_for_rate_limit(url, response)
        return response

    @staticmethod
    def _raise_for_rate_limit(url: str, response: requests.Response) -> None:
        exhausted = response.status_code == 403 and response.headers.get("x-ratelimit-remaining") == "0"
        if response.status_code != 429 and not exhausted:
            return
        reset_at = None
        if retry_after := response.headers.get("retry-after"):
            reset_at = datetime.fromtimestamp(time.time() + float(retry_after), UTC)
        elif reset := response.headers.get("x-ratelimit-reset"):
            reset_at = datetime.fromtimestamp(int(reset), UTC)
        when = reset_at.strftime("%Y-%m-%d %H:%M:%S UTC") if reset_at else "later"
        raise RateLimited(
            f"GitHub rate limit reached for {url} (HTTP {response.status_code}); it resets at {when}. "
            "Set GITHUB_TOKEN for 5,000 requests/hour instead of 60.",
            reset_at,
        )

    def list_releases(self, etag: str | None = None) -> ReleasesPage:
        """Every visible release, following `link: rel="next"` verbatim."""
        headers = {"Accept": "application/vnd.github+json"}
        if etag:
            headers["If-None-Match"] = etag
        url = f"{self.url}?per_page=100"
        first = self._get(url, headers)
        if first.status_code == 304:
            return ReleasesPage(etag=etag, not_modified=True)
        page = ReleasesPage(etag=first.headers.get("etag"))
        response = first
        while True:
            if response.status_code != 200:
                raise UpstreamError(
                    f"GitHub releases {url}: HTTP {response.status_code}: {_short_body(response)}; "
                    "check TALOS_RELEASES_URL and GITHUB_TOKEN"
                )
            page.releases.extend(self._json_list(url, response))
            next_url = response.links.get("next", {}).get("url")
            if not next_url:
                return page
            url = next_url
            response = self._get(url, {"Accept": "application/vnd.github+json"})

    @staticmethod
    def _json_list(url: str, response: requests.Response) -> list[dict[str, Any]]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, list):
            raise UpstreamError(f"GitHub releases {url}: expected a JSON list of releases, got {_short_body(response)}")
        return body

    def release(self, version: str) -> ReleaseFacts:
        """The facts of one release; an unknown or draft tag is an error naming it."""
        url = f"{self.url}/tags/{version}"
        response = self._get(url, {"Accept": "application/vnd.github+json"})
        if response.status_code == 404:
            raise UpstreamError(
                f"Talos {version} has no published GitHub release ({url} answered 404); "
                "check the tag, or wait: releases stay drafts for a while after tagging"
            )
        if response.status_code != 200:
            raise UpstreamError(f"GitHub release {url}: HTTP {response.status_code}: {_short_body(response)}")
        return ReleaseFacts.from_github(response.json())


@dataclass(frozen=True)
class OfficialExtension:
    """One entry of the factory's `/version/<v>/extensions/official`."""

    name: str
    """The repository path, e.g. `siderolabs/iscsi-tools`."""
    ref: str = ""
    digest: str = ""


class FactoryClient:
    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        timeouts: UpstreamTimeouts = UpstreamTimeouts(),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.session = new_session()
        self.retry = retry
        self.timeouts = timeouts
        self.log = log

    @classmethod
    def from_settings(cls, settings: Settings, log: Callable[[str], None] | None = None) -> FactoryClient:
        return cls(settings.factory_url, timeouts=UpstreamTimeouts.of(settings), log=log)

    def image_url(self, image: ImageRef) -> str:
        return f"{self.url}/{image.factory_path()}"

    def _send(self, method: str, path: str, **options: Any) -> tuple[str, requests.Response]:
        """(the URL, the answer) of one small request, retried like every other."""
        url = f"{self.url}/{path}"
        response = _with_retries(
            f"Image Factory {url}",
            lambda: self.session.request(method, url, timeout=(CONNECT_TIMEOUT, self.timeouts.read), **options),
            self.retry,
            self.log,
        )
        return url, response

    def _json(self, url: str, response: requests.Response, expected: str) -> Any:
        """The body as JSON (the factory may say text/plain: parse it anyway)."""
        try:
            return json.loads(response.content)
        except ValueError:
            raise UpstreamError(f"Image Factory {url}: expected {expected}, got {_short_body(response)}") from None

    def versions(self) -> list[str]:
        """The factory's `/versions`."""
        url, response = self._send("GET", "versions")
        if response.status_code != 200:
            raise UpstreamError(
                f"Image Factory {url}: HTTP {response.status_code}: {_short_body(response)}; check TALOS_FACTORY_URL"
            )
        versions = self._json(url, response, "a JSON list of versions")
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise UpstreamError(f"Image Factory {url}: expected a JSON list of versions, got {_short_body(response)}")
        return versions

    def require_version(self, version: str) -> list[str]:
        """The `/versions` answer, once it names `version` (the provenance records it)."""
        versions = self.versions()
        if version not in versions:
            raise UpstreamError(
                f"the Image Factory at {self.url} does not offer Talos {version} (not in /versions); "
                "it lists releases from v1.2.0 on and prereleases of the newest minor only"
            )
        return versions

    def register_schematic(self, document: bytes) -> str:
        """POST a schematic (YAML or JSON) and return its id; posting the same one again is harmless
        (the id is the sha256 of the factory's canonical form)."""
        url, response = self._send("POST", "schematics", data=document, headers={"Content-Type": "application/yaml"})
        if response.status_code == 400:
            raise InputError(f"the Image Factory at {self.url} refused the schematic: {_short_body(response)}")
        if response.status_code not in (200, 201):
            raise UpstreamError(f"Image Factory {url}: HTTP {response.status_code}: {_short_body(response)}")
        body = self._json(url, response, 'a JSON object {"id": ...}')
        schematic_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(schematic_id, str) or len(schematic_id) != 64:
            raise UpstreamError(f"Image Factory {url}: expected a schematic id, got {_short_body(response)}")
        return schematic_id

    def schematic(self, schematic_id: str) -> str:
        """The canonical YAML of a schematic the factory knows."""
        url, response = self._send("GET", f"schematics/{schematic_id}")
        if response.status_code == 404:
            raise InputError(
                f"the Image Factory at {self.url} does not know schematic {schematic_id}; "
                "register it (POST /schematics), or give the schematic file as NAME=PLATFORM:@file.yaml"
            )
        if response.status_code != 200:
            raise UpstreamError(f"Image Factory {url}: HTTP {response.status_code}: {_short_body(response)}")
        return response.text

    def official_extensions(self, version: str) -> list[OfficialExtension]:
        """The official system extensions the factory offers for one Talos version."""
        url, response = self._send("GET", f"version/{version}/extensions/official")
        if response.status_code != 200:
            raise UpstreamError(
                f"Image Factory {url}: HTTP {response.status_code}: {_short_body(response)}; "
                "the factory offers extensions only for the versions it lists in /versions"
            )
        body = self._json(url, response, "a JSON list of extensions")
        if not isinstance(body, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in body):
            raise UpstreamError(f"Image Factory {url}: expected a JSON list of extensions, got {_short_body(response)}")
        return [OfficialExtension(e["name"], str(e.get("ref", "")), str(e.get("digest", ""))) for e in body]

    def open_image(self, image: ImageRef) -> requests.Response:
        """GET the qcow2 as a stream (redirects followed); the caller reads and closes it."""
        url = self.image_url(image)
        response = _with_retries(
            f"{image.label}: Image Factory {url}",
            lambda: self.session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, self.timeouts.first_byte)),
            self.retry,
            self.log,
        )
        if response.status_code != 200:
            body = _short_body(response)
            response.close()
            hint = {
                404: "the factory does not offer this version or schematic; check the version and TALOS_VARIANTS",
                400: "the factory refused the platform or architecture; check TALOS_VARIANTS and TALOS_ARCHES",
            }.get(response.status_code, "the factory keeps failing; retry later")
            raise UpstreamError(
                f"{image.label}: {url} answered HTTP {response.status_code}: {body}; {hint}",
                transient=response.status_code >= 500,
            )
        return response

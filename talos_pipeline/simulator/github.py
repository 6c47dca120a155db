"""The GitHub releases API of siderolabs/talos, as clients see it (docs/talos-upstream.md, "GitHub").

Routes: ``/repos/siderolabs/talos/releases`` and the ``/repositories/<id>/releases`` form its
``Link`` headers use (newest first, ``per_page``/``page``, drafts hidden), ``/releases/tags/<tag>``,
``/releases/latest``, ``/releases/<id>``, and the free ``/rate_limit``. Every answer carries
``x-ratelimit-*`` headers; listings carry a weak ``ETag`` and answer ``If-None-Match`` with 304.

Release assets carry download counts that grow by one *tick* per `tick_downloads` call and per
``download_tick_seconds`` of running time; like on GitHub, the listing's ETag then changes although
no release did.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlencode

from .messages import Request, Response, json_answer
from .ratelimit import GITHUB_DOCS, RATE_LIMIT_DOCS, RateLimiter
from .releases import ReleaseHistory, SimulatedAsset, SimulatedRelease, format_timestamp, parse_semver

__all__ = ["GITHUB_OWNER", "GITHUB_REPO", "GITHUB_REPO_ID", "GitHubAPI", "is_github_path", "release_id"]

GITHUB_OWNER, GITHUB_REPO = "siderolabs", "talos"
GITHUB_REPO_ID = 130424170  # illustrative: link headers use /repositories/<id>/releases
UPLOADS = "https://uploads.github.com"


def is_github_path(path: str) -> bool:
    return path.startswith(("/repos/", "/repositories/")) or path == "/rate_limit"


def release_id(tag: str) -> int:
    return 200_000_000 + int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "big") % 90_000_000


class GitHubAPI:
    def __init__(
        self,
        history: ReleaseHistory,
        limiter: RateLimiter,
        *,
        per_page_default: int = 30,
        download_tick_seconds: float | None = None,
    ) -> None:
        if not 1 <= per_page_default <= 100:
            raise ValueError(f"per_page_default must be between 1 and 100, got {per_page_default}")
        if download_tick_seconds is not None and not download_tick_seconds >= 0:
            raise ValueError(
                f"download_tick_seconds must be >= 0 (0 or None: only manual ticks), got {download_tick_seconds!r}"
            )
        self.history = history
        self.limiter = limiter
        self.per_page_default = per_page_default
        self.download_tick_seconds = download_tick_seconds
        self._lock = threading.Lock()
        self._manual_ticks = 0
        self._started = time.monotonic()

    def tick_downloads(self, count: int = 1) -> None:
        """Every asset is downloaded a few more times (``count`` ticks)."""
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        with self._lock:
            self._manual_ticks += count

    def download_ticks(self) -> int:
        with self._lock:
            ticks = self._manual_ticks
        if self.download_tick_seconds:
            ticks += int((time.monotonic() - self._started) // self.download_tick_seconds)
        return ticks

    def handle(self, request: Request) -> Response:
        scheme, _, token = request.header("Authorization").partition(" ")
        token = token.strip() if scheme.lower() in ("bearer", "token") else ""
        identity = f"token:{token}" if token else f"ip:{request.client_host}"
        common = {
            "x-github-api-version-selected": "2022-11-28",
            "x-github-media-type": "github.v3; format=json",
            "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP, Accept-Encoding",
            "Cache-Control": f"{'private' if token else 'public'}, max-age=60, s-maxage=60",
        }
        if request.path == "/rate_limit":  # free, like the real endpoint
            budget = self.limiter.status(token or None)
            core = {name: budget[name] for name in ("limit", "remaining", "used", "reset")}
            return json_answer(200, {"resources": {"core": core}, "rate": core}, common)
        if request.method not in ("GET", "HEAD"):
            return json_answer(404, _not_found("releases/releases"), common)
        admitted, limits = self.limiter.admit(identity, authenticated=bool(token))
        if not admitted:
            who = "user ID 1" if token else request.client_host
            message = f"API rate limit exceeded for {who}."
            if not token:
                message += (
                    " (But here's the good news: Authenticated requests get a higher rate limit. "
                    "Check out the documentation for more details.)"
                )
            return json_answer(403, {"message": message, "documentation_url": RATE_LIMIT_DOCS}, {**common, **limits})

        status, value, extra = self._route(request)
        if status != 200:
            return json_answer(status, value, {**common, **limits, **extra})
        answer = json_answer(200, value)
        etag = 'W/"' + hashlib.sha256(answer.body).hexdigest() + '"'
        if _etag_matches(request.header("If-None-Match"), etag):
            if token:
                limits = self.limiter.refund(identity)
            return Response(304, content_type=None, headers={**common, **limits, **extra, "ETag": etag})
        answer.headers.update({**common, **limits, **extra, "ETag": etag})
        return answer

    def _route(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        path = request.path
        m = re.match(r"^/repos/([^/]+)/([^/]+)(/.*)?$", path) or re.match(r"^/repositories/(\d+)(/.*)?$", path)
        if m is None:
            return 404, _not_found(""), {}
        if path.startswith("/repos/"):
            owner, repo, rest = m.group(1), m.group(2), m.group(3) or ""
            if (owner.lower(), repo.lower()) != (GITHUB_OWNER, GITHUB_REPO):
                return 404, _not_found("repos/repos#get-a-repository"), {}
        else:
            if int(m.group(1)) != GITHUB_REPO_ID:
                return 404, _not_found("repos/repos#get-a-repository"), {}
            rest = m.group(2) or ""
        rest = rest.rstrip("/")
        base = request.base_url
        ticks = self.download_ticks()
        visible = self.history.visible()
        if rest == "/releases":
            return self._release_page(visible, request.query, base, ticks)
        if rest.startswith("/releases/tags/"):
            tag = unquote(rest[len("/releases/tags/") :])
            for release in visible:
                if release.tag == tag:
                    return 200, release_json(release, base, ticks), {}
            return 404, _not_found("releases/releases#get-a-release-by-tag-name"), {}
        if rest == "/releases/latest":
            for release in visible:
                if not release.prerelease and "-" not in release.tag:
                    return 200, release_json(release, base, ticks), {}
            return 404, _not_found("releases/releases#get-the-latest-release"), {}
        m = re.match(r"^/releases/(\d+)$", rest)
        if m:
            for release in visible:
                if release_id(release.tag) == int(m.group(1)):
                    return 200, release_json(release, base, ticks), {}
            return 404, _not_found("releases/releases#get-a-release"), {}
        return 404, _not_found(""), {}

    def _release_page(
        self, visible: list[SimulatedRelease], query: list[tuple[str, str]], base: str, ticks: int
    ) -> tuple[int, Any, dict[str, str]]:
        params = dict(query)
        try:
            per_page = int(params.get("per_page", ""))
        except ValueError:
            per_page = self.per_page_default
        per_page = self.per_page_default if per_page < 1 else min(per_page, 100)
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        last = max(1, math.ceil(len(visible) / per_page))
        items = visible[(page - 1) * per_page : page * per_page]
        headers = {}
        if len(visible) > per_page:

            def link(n: int) -> str:
                kept = [(k, v) for k, v in query if k != "page"]
                return f"{base}/repositories/{GITHUB_REPO_ID}/releases?{urlencode([*kept, ('page', str(n))])}"

            rels = []
            if page > 1:
                rels.append(f'<{link(min(page - 1, last))}>; rel="prev"')
            if page < last:
                rels.append(f'<{link(page + 1)}>; rel="next"')
                rels.append(f'<{link(last)}>; rel="last"')
            if page > 1:
                rels.append(f'<{link(1)}>; rel="first"')
            headers["Link"] = ", ".join(rels)
        return 200, [release_json(r, base, ticks) for r in items], headers


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == wanted for candidate in header.split(","))


def _not_found(doc: str) -> dict[str, str]:
    url = f"{GITHUB_DOCS}/{doc}" if doc else GITHUB_DOCS
    return {"message": "Not Found", "documentation_url": url, "status": "404"}


def _hash(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def asset_json(release: SimulatedRelease, asset: SimulatedAsset, base: str, ticks: int) -> dict[str, Any]:
    key = f"{release.tag}/{asset.name}"
    digest = _hash(key)
    aid = 300_000_000 + int.from_bytes(digest[:4], "big") % 90_000_000
    uploaded = format_timestamp(datetime.fromtimestamp(release.published.timestamp() - 1800 + digest[4] * 4, UTC))
    return {
        "url": f"{base}/repos/{GITHUB_OWNER}/{GITHUB_REPO}/releases/assets/{aid}",
        "id": aid,
        "node_id": "RA_kwDOB8Z" + digest.hex()[8:16],
        "name": asset.name,
        "label": "",
        "uploader": {"login": "talos-bot", "id": 44077431, "type": "User", "site_admin": False},
        "content_type": asset.content_type,
        "state": "uploaded",
        "size": asset.size,
        "digest": "sha256:" + _hash(key + "/content").hex(),
        "download_count": 40 + int.from_bytes(digest[5:7], "big") % 20_000 + ticks * (1 + digest[7] % 5),
        "created_at": uploaded,
        "updated_at": uploaded,
        "browser_download_url": f"https://github.com/{GITHUB_OWNER}/{GITHUB_REPO}/releases/download/{key}",
    }


def release_json(release: SimulatedRelease, base: str, ticks: int = 0) -> dict[str, Any]:
    rid = release_id(release.tag)
    tag = release.tag
    parsed = parse_semver(tag)
    created = format_timestamp(datetime.fromtimestamp(release.published.timestamp() - 5233, UTC))
    api = f"{base}/repos/{GITHUB_OWNER}/{GITHUB_REPO}"
    html = f"https://github.com/{GITHUB_OWNER}/{GITHUB_REPO}/releases/tag/{tag}"
    return {
        "url": f"{api}/releases/{rid}",
        "assets_url": f"{api}/releases/{rid}/assets",
        "upload_url": f"{UPLOADS}/repos/{GITHUB_OWNER}/{GITHUB_REPO}/releases/{rid}/assets{{?name,label}}",
        "html_url": html,
        "id": rid,
        "author": {"login": "talos-bot", "id": 44077431, "type": "User", "site_admin": False},
        "node_id": "RE_kwDOB8Z" + hashlib.sha256(tag.encode()).hexdigest()[:8],
        "tag_name": tag,
        "target_commitish": f"release-{parsed[0]}.{parsed[1]}" if parsed else "main",
        "name": tag,
        "draft": release.draft,
        "immutable": False,
        "prerelease": release.prerelease,
        "created_at": created,
        "updated_at": release.published_at,
        "published_at": None if release.draft else release.published_at,
        "assets": [asset_json(release, asset, base, ticks) for asset in release.assets],
        "tarball_url": f"{api}/tarball/{tag}",
        "zipball_url": f"{api}/zipball/{tag}",
        "body": f"## [Talos {tag.lstrip('v')}]({html}) (simulated)\n",
    }

"""The proxy to the Talos Image Factory, for disks that are not mirrored in the store.

The URL is always the configured factory URL + a path from the catalog that must look like an
Image Factory qcow2 path: nothing in a request chooses the host or the path, so this is not an
open proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import requests

from talos_pipeline.core.simplestreams import UPSTREAM_PATH
from talos_pipeline.core.stores import CHUNK
from talos_pipeline.core.upstream import CONNECT_TIMEOUT, READ_TIMEOUT, USER_AGENT

from .bodies import StreamAborted


class UpstreamProblem(Exception):
    """The factory did not answer with the expected disk (before any byte was sent)."""


class FactoryProxy:
    """Streams disks from the configured Image Factory.

    The URL is always `factory_url + "/" + path`, where `path` comes from the catalog and must be
    an Image Factory qcow2 path: nothing from a request chooses the host or the path, so this is
    not an open proxy. Redirects the factory itself answers (to its CDN) are followed.
    """

    def __init__(self, factory_url: str, session: requests.Session | None = None) -> None:
        if not factory_url.startswith(("http://", "https://")):
            raise ValueError(f"factory URL {factory_url!r} is not an http(s) URL")
        self.base = factory_url.rstrip("/")
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
        self.session = session

    def url_for(self, path: str) -> str:
        if not isinstance(path, str) or not UPSTREAM_PATH.match(path):
            raise UpstreamProblem(f"refusing to proxy {path!r}: not an Image Factory qcow2 path")
        return f"{self.base}/{path}"

    def open(self, path: str, expected_size: int) -> tuple[str, requests.Response]:
        """GET the disk; raise `UpstreamProblem` unless it is a 200 (of the expected length, if given)."""
        url = self.url_for(path)
        try:
            response = self.session.get(
                url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), headers={"Accept-Encoding": "identity"}
            )
        except requests.RequestException as exc:
            raise UpstreamProblem(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            response.close()
            raise UpstreamProblem(f"{url} answered HTTP {response.status_code}")
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != expected_size:
            response.close()
            raise UpstreamSizeDrift(url, int(length))
        return url, response

    @staticmethod
    def chunks(
        url: str, response: requests.Response, on_error: Callable[[int, BaseException], None]
    ) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                received += len(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            on_error(received, exc)
            raise StreamAborted(f"{url}: failed after {received} bytes") from exc
        finally:
            response.close()


class UpstreamSizeDrift(UpstreamProblem):
    def __init__(self, url: str, size: int) -> None:
        super().__init__(f"{url} announces {size} bytes")
        self.url = url
        self.size = size

"""The proxy to the Talos Image Factory, for disks that are not mirrored in the store.

The URL is always the configured factory URL + a path from the catalog that must look like an
Image Factory qcow2 path: nothing in a request chooses the host or the path, so this is not an
open proxy. Redirects the factory itself answers (to its CDN) are followed.

Upstream I/O cannot starve the server: every blocking read runs on this proxy's own bounded pool
of threads (`connections`), never on the pool the store and the catalog use, and a proxied
download beyond that many gets a 503 at once. A factory that sends nothing for `stall_timeout`
seconds mid-body is cut off; one that takes up to `first_byte_timeout` to answer (a cold build)
is waited for, with the response headers already sent to the client (see `handlers.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread
import requests

from talos_pipeline.core.simplestreams import UPSTREAM_PATH
from talos_pipeline.core.upstream import CONNECT_TIMEOUT, USER_AGENT

from .bodies import CHUNK, StreamAborted


class UpstreamProblem(Exception):
    """The factory did not answer with the expected disk (before any byte was sent)."""


class UpstreamBusy(UpstreamProblem):
    """Every proxy connection of this worker is in use."""


class UpstreamSizeDrift(UpstreamProblem):
    def __init__(self, url: str, size: int) -> None:
        super().__init__(f"{url} announces {size} bytes")
        self.url = url
        self.size = size


class FactoryProxy:
    """Streams disks from the configured Image Factory on its own bounded thread pool."""

    def __init__(
        self,
        factory_url: str,
        *,
        connections: int = 64,
        stall_timeout: float = 30.0,
        first_byte_timeout: float = 600.0,
        session: requests.Session | None = None,
    ) -> None:
        if not factory_url.startswith(("http://", "https://")):
            raise ValueError(f"factory URL {factory_url!r} is not an http(s) URL")
        self.base = factory_url.rstrip("/")
        self.stall_timeout = stall_timeout
        self.first_byte_timeout = first_byte_timeout
        self.limiter = anyio.CapacityLimiter(connections)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=connections)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
        self.session = session

    def url_for(self, path: str | None) -> str:
        if not isinstance(path, str) or not UPSTREAM_PATH.match(path):
            raise UpstreamProblem(f"refusing to proxy {path!r}: not an Image Factory qcow2 path")
        return f"{self.base}/{path}"

    def _get(self, url: str, expected_size: int) -> requests.Response:
        try:
            response = self.session.get(
                url,
                stream=True,
                timeout=(CONNECT_TIMEOUT, self.first_byte_timeout),
                headers={"Accept-Encoding": "identity"},
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
        connection = getattr(response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(self.stall_timeout)  # from now on: a read that waits this long is a stall
        return response

    async def open(self, path: str | None, expected_size: int) -> tuple[str, requests.Response]:
        """GET the disk; raise `UpstreamProblem` unless it is a 200 (of the expected length, if given)."""
        url = self.url_for(path)
        if self.limiter.available_tokens < 1:
            raise UpstreamBusy(f"all {int(self.limiter.total_tokens)} proxy connections are in use")
        return url, await anyio.to_thread.run_sync(self._get, url, expected_size, limiter=self.limiter)

    async def chunks(
        self, url: str, response: requests.Response, on_error: Callable[[int, BaseException], None]
    ) -> AsyncIterator[bytes]:
        """The body, each read on the proxy's pool; an error or a stall cuts the response off."""
        stream = response.raw.stream(CHUNK, decode_content=False)
        received = 0
        try:
            while True:
                try:
                    chunk = await anyio.to_thread.run_sync(next, stream, None, limiter=self.limiter)
                except Exception as exc:
                    on_error(received, exc)
                    raise StreamAborted(f"{url}: failed after {received} bytes") from exc
                if chunk is None:
                    return
                received += len(chunk)
                yield chunk
        finally:
            response.close()

    def close(self) -> None:
        self.session.close()

"""Headless Chromium (Debian package `chromium`) driven over the DevTools protocol.

One page target, JSON-RPC over its WebSocket (`websockets`' sync client): navigate, evaluate
JavaScript in the page, click, screenshot. Used for the Dagster UI's asset graph
(`test_dagster_live.py`) and for the server's page (`test_selfservice_browser.py`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

from .fake_sigstore.fixtures import missing_tool

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars", "--remote-allow-origins=*",
)  # fmt: skip


def find_chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        missing_tool("Chromium is not installed (Debian package chromium; scripts/test installs it)")
    assert browser is not None
    return browser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pages(port: int) -> list | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json() or None
    except (requests.RequestException, ValueError):
        return None


def wait_until(what: str, probe: Callable[[], Any], seconds: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(interval)
    return value


class Page:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.counter = 0

    def call(self, method: str, **params: Any) -> dict:
        self.counter += 1
        ident = self.counter
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == ident:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable results)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def navigate(self, url: str, ready: Callable[[], bool] | None = None, seconds: float = 60) -> None:
        self.call("Page.navigate", url=url)
        wait_until(f"{url} to load", ready or (lambda: self.evaluate("document.readyState") == "complete"), seconds)

    def size(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def click(self, x: int, y: int) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, target: Path, full_page: bool = False) -> None:
        options: dict[str, Any] = {"format": "png"}
        if full_page:
            options["captureBeyondViewport"] = True
            metrics = self.call("Page.getLayoutMetrics")["cssContentSize"]
            options["clip"] = {"x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"], "scale": 1}
        target.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **options)["data"]))


@contextlib.contextmanager
def chromium(profile: Path, *extra_flags: str) -> Iterator[Page]:
    """A headless Chromium with a fresh profile in `profile`; stopped on exit."""
    port = _free_port()
    process = subprocess.Popen(
        [find_chromium(), *FLAGS, *extra_flags, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        pages = wait_until("Chromium's DevTools endpoint", lambda: _pages(port), 30)
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        with connect(url, max_size=None) as ws:
            page = Page(ws)
            page.call("Page.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

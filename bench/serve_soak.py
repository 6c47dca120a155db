"""Soak: many concurrent HTTPS clients against `serve/` for a fixed time; every response checked.

Builds a store with `talos-pipeline publish` from the upstream simulator (one `--disk-mib` image,
default 64 MiB, plus 12 small ones), starts `python -m serve --workers N` with TLS 1.3 on
127.0.0.1, and runs `--clients` threads (default 200) for `--seconds` (default 180, long enough for memory to
reach its plateau: it grows for the first ~100 s while buffers and allocator arenas fill), each with its
own keep-alive connection (re-opened now and then, so TLS handshakes are part of the mix, and
before a request when it has been idle for more than `KEEP_ALIVE_SECONDS - 2` s or the server has
closed it, as HTTP clients do: the server closes connections `KEEP_ALIVE_SECONDS` after it
finished sending a response), doing:

| share | request | checked |
|---|---|---|
| 15 % | `index.json` | 200, Content-Length, body identical to the first fetch |
| 15 % | `images.json` | same |
| 25 % | either, with `If-None-Match: <ETag>` | 304, no body, same ETag |
| 20 % | a random `Range` of a disk (up to 1 MiB) | 206, Content-Range, bytes equal to the store file's |
| 15 % | full download of a small disk or metadata tarball | 200, size, sha256 against the catalog |
| 1 %  | full download of the large disk | 200, size, sha256 against the catalog |
| 9 %  | direct import `/talos/<version>/<variant>/<arch>`, then its unified tarball (small) | 200, |
|      |   | `Incus-Image-Hash`, sha256 of the tarball |

No new request starts after `--seconds`; requests in flight finish (each socket has a 60 s
timeout). The serve process tree's RSS is sampled every second together with the requests and
errors so far; the record shows them as a table of memory over time (a row every `--table-every`
seconds: total RSS, largest process, requests, requests/s, errors), and the requests/s of those
intervals as a median with its spread. Errors must be zero; the exit status is 1 otherwise.
Afterwards `/healthz` metrics and the server log (ERROR lines, aborted or incomplete responses)
are checked too.

    .venv/bin/python bench/serve_soak.py [--clients 200] [--seconds 180] [--disk-mib 64] [--workers 2]
        [--table-every 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import select
import shutil
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MIB,
    Row,
    RssSampler,
    append_output,
    markdown_table,
    print_table,
    publish_into,
    stop_process,
)
from bench.serve_vs_nginx import (
    BIG,
    FILLER_VERSIONS,
    HOST,
    RECOMMENDED_WORKERS,
    start_serve,
)
from bench.stats import Sample
from serve.connection import Limits

READ = 1024 * 1024
# Client-side idle limit for keep-alive connections, below the server's (serve.server.KEEP_ALIVE_SECONDS).
KEEP_ALIVE_SECONDS = Limits().idle_timeout
IDLE_LIMIT = KEEP_ALIVE_SECONDS - 2
MIX = {
    "index": 15,
    "images": 15,
    "not_modified": 25,
    "range": 20,
    "small_file": 15,
    "large_disk": 1,
    "unified": 9,
}


@dataclass
class CatalogFile:
    path: str
    size: int
    sha256: str


@dataclass
class Product:
    version: str
    arch: str
    variant: str
    unified_sha256: str
    unified_size: int


@dataclass
class Plan:
    docs: dict[str, bytes]
    etags: dict[str, str]
    large: CatalogFile
    small: list[CatalogFile]
    disks: list[CatalogFile]
    products: list[Product]
    store: Path


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    bytes: int = 0
    connections: int = 0
    idle_reconnects: int = 0
    server_closed: int = 0

    def ok(self, kind: str, received: int) -> None:
        with self.lock:
            self.done[kind] = self.done.get(kind, 0) + 1
            self.bytes += received

    def error(self, kind: str, message: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.examples) < 10:
                self.examples.append(f"{kind}: {message}")

    def totals(self) -> tuple[int, int]:
        """(requests completed so far, a direct import and its tarball counting as two; errors so far)."""
        with self.lock:
            return sum(self.done.values()) + self.done.get("unified", 0), sum(self.errors.values())


@dataclass
class Tick:
    """One look at the run: seconds since the start, serve's RSS (KiB), requests and errors so far."""

    seconds: float
    total_kib: int
    largest_kib: int
    requests: int
    errors: int


def watch(clients: list[Client], pid: int, stats: Stats, interval: float, give_up: float) -> list[Tick]:
    """Sample serve's RSS and the request counters every `interval` s until every client is done."""
    sampler = RssSampler(pid, interval)
    ticks = []
    while True:
        looked = time.monotonic()
        seconds, total, largest = sampler.sample()
        ticks.append(Tick(seconds, total, largest, *stats.totals()))
        if not any(client.is_alive() for client in clients) or looked > give_up:
            return ticks
        time.sleep(max(0.0, interval - (time.monotonic() - looked)))


def memory_over_time(ticks: list[Tick], every: float, load_seconds: float) -> tuple[str, Sample | None]:
    """The table of RSS samples every `every` s, and the requests/s of the intervals within the load
    (the first `load_seconds`; the drain after it starts no new requests)."""
    marks, next_mark = [], 0.0
    for tick in ticks:
        if tick.seconds >= next_mark or tick is ticks[-1]:
            marks.append(tick)
            next_mark = tick.seconds - tick.seconds % every + every
    rows, rates = [], []
    for before, tick in zip([None, *marks], marks, strict=False):
        if before is None:
            rps = "-"
        else:
            rps_value = (tick.requests - before.requests) / max(tick.seconds - before.seconds, 1e-9)
            if tick.seconds <= load_seconds:
                rates.append(rps_value)
            rps = f"{rps_value:,.0f}"
        rows.append(
            [
                f"{tick.seconds:.0f}",
                f"{tick.total_kib / 1024:.0f}",
                f"{tick.largest_kib / 1024:.0f}",
                f"{tick.requests:,}",
                rps,
                str(tick.errors),
            ]
        )
    table = markdown_table(
        ["time (s)", "serve RSS, all processes (MiB)", "largest process (MiB)", "requests so far",
         "requests/s since the row above", "errors so far"],
        rows,
    )  # fmt: skip
    return table, Sample.of(rates) if rates else None


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def load_plan(store: Path) -> Plan:
    catalog = json.loads((store / "streams/v1/images.json").read_text())
    large = None
    smalls, disks, products = [], [], []
    for product in catalog["products"].values():
        for version in product["versions"].values():
            for item in version["items"].values():
                entry = CatalogFile(item["path"], item["size"], item["sha256"])
                big = (product["release"], product["arch"], product["variant"]) == BIG
                if item["ftype"] == "disk-kvm.img":
                    disks.append(entry)
                    if big:
                        large = entry
                    else:
                        products.append(
                            Product(
                                product["release"],
                                product["arch"],
                                product["variant"],
                                item["unified_sha256"],
                                item["unified_size"],
                            )
                        )
                if not (big and item["ftype"] == "disk-kvm.img"):
                    smalls.append(entry)
    docs = {name: (store / f"streams/v1/{name}.json").read_bytes() for name in ("index", "images")}
    assert large is not None, f"{BIG} is not in the catalog"
    return Plan(docs, {}, large, smalls, disks, products, store)


class Client(threading.Thread):
    def __init__(
        self, number: int, port: int, context: ssl.SSLContext, plan: Plan, stats: Stats, deadline: float, seed: int
    ) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.port, self.context, self.plan, self.stats, self.deadline = port, context, plan, stats, deadline
        self.rng = random.Random(seed * 1000 + number)
        self.conn: http.client.HTTPSConnection | None = None
        self.last_used = 0.0  # when the last response on `conn` was read to its end
        self.idle = 0.0  # how long `conn` had been idle when the current request was sent
        self.fresh = True  # whether the current request opened its connection
        self.kinds, self.weights = list(MIX), list(MIX.values())

    # ---- connection
    def connection(self) -> http.client.HTTPSConnection:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(HOST, self.port, timeout=60, context=self.context)
            with self.stats.lock:
                self.stats.connections += 1
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.idle = 0.0

    def request(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        self.fresh = self.conn is None
        if self.conn is not None:
            self.idle = time.monotonic() - self.last_used
            # As HTTP clients do before reusing a keep-alive connection: not after our own idle
            # limit (below the server's; Go's IdleConnTimeout), nor when the server has already
            # closed it (urllib3's is_connection_dropped: readable means EOF). The server closes a
            # connection KEEP_ALIVE_SECONDS after it finished *sending* a response, which a slow
            # reader may finish reading much later.
            idle = self.idle > IDLE_LIMIT
            if idle or select.select([self.conn.sock], [], [], 0)[0]:
                self.drop()
                with self.stats.lock:
                    if idle:
                        self.stats.idle_reconnects += 1
                    else:
                        self.stats.server_closed += 1
        conn = self.connection()
        conn.request("GET", path, headers={"User-Agent": "serve-soak", **(headers or {})})
        return conn.getresponse()

    def body(self, response: http.client.HTTPResponse, expected: int, digest=None) -> tuple[int, bytes | None]:
        """Read the whole body in large chunks; hash it when `digest` is given, else keep it."""
        length = response.getheader("Content-Length")
        expect(length is not None and int(length) == expected, f"Content-Length {length}, expected {expected}")
        received, kept = 0, []
        while True:
            chunk = response.read(READ)
            if not chunk:
                break
            received += len(chunk)
            if digest is not None:
                digest.update(chunk)
            else:
                kept.append(chunk)
        expect(received == expected, f"received {received} of {expected} bytes")
        return received, None if digest is not None else b"".join(kept)

    # ---- the mix
    def document(self, name: str) -> int:
        response = self.request(f"/streams/v1/{name}.json")
        expect(response.status == 200, f"{name}.json: HTTP {response.status}")
        expected = self.plan.docs[name]
        received, body = self.body(response, len(expected))
        expect(body == expected, f"{name}.json: body differs from the first fetch")
        expect(response.getheader("ETag") == self.plan.etags[name], f"{name}.json: ETag changed")
        return received

    def not_modified(self) -> int:
        name = self.rng.choice(("index", "images"))
        etag = self.plan.etags[name]
        response = self.request(f"/streams/v1/{name}.json", {"If-None-Match": etag})
        body = response.read()
        expect(response.status == 304, f"{name}.json with If-None-Match: HTTP {response.status}")
        expect(body == b"", f"{name}.json 304 with a {len(body)}-byte body")
        expect(response.getheader("ETag") == etag, f"{name}.json 304: ETag {response.getheader('ETag')}")
        return 0

    def ranged(self) -> int:
        disk = self.rng.choice(self.plan.disks)
        start = self.rng.randrange(disk.size)
        end = min(disk.size, start + self.rng.randint(1, READ))  # exclusive
        response = self.request(f"/{disk.path}", {"Range": f"bytes={start}-{end - 1}"})
        expect(response.status == 206, f"range of {disk.path}: HTTP {response.status}")
        expected_range = f"bytes {start}-{end - 1}/{disk.size}"
        expect(
            response.getheader("Content-Range") == expected_range,
            f"Content-Range {response.getheader('Content-Range')}, expected {expected_range}",
        )
        received, body = self.body(response, end - start)
        with open(self.plan.store / disk.path, "rb") as handle:
            expect(
                body == os.pread(handle.fileno(), end - start, start),
                f"range {start}-{end - 1} of {disk.path}: wrong bytes",
            )
        return received

    def full(self, entry: CatalogFile) -> int:
        response = self.request(f"/{entry.path}")
        expect(response.status == 200, f"{entry.path}: HTTP {response.status}")
        digest = hashlib.sha256()
        received, _ = self.body(response, entry.size, digest)
        expect(digest.hexdigest() == entry.sha256, f"{entry.path}: sha256 {digest.hexdigest()}, catalog {entry.sha256}")
        return received

    def unified(self) -> int:
        product = self.rng.choice(self.plan.products)
        response = self.request(f"/talos/{product.version}/{product.variant}/{product.arch}")
        text = response.read()
        expect(response.status == 200, f"direct import of {product}: HTTP {response.status}")
        expect(
            response.getheader("Incus-Image-Hash") == product.unified_sha256,
            f"Incus-Image-Hash {response.getheader('Incus-Image-Hash')}, catalog {product.unified_sha256}",
        )
        url = response.getheader("Incus-Image-URL") or ""
        prefix = f"https://{HOST}:{self.port}/"
        expect(url.startswith(prefix), f"Incus-Image-URL {url!r} is not on this server")
        response = self.request("/" + url[len(prefix) :])
        expect(response.status == 200, f"{url}: HTTP {response.status}")
        digest = hashlib.sha256()
        received, _ = self.body(response, product.unified_size, digest)
        expect(digest.hexdigest() == product.unified_sha256, f"{url}: sha256 {digest.hexdigest()}")
        return received + len(text)

    def run(self) -> None:
        actions = {
            "index": lambda: self.document("index"),
            "images": lambda: self.document("images"),
            "not_modified": self.not_modified,
            "range": self.ranged,
            "small_file": lambda: self.full(self.rng.choice(self.plan.small)),
            "large_disk": lambda: self.full(self.plan.large),
            "unified": self.unified,
        }
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            try:
                received = actions[kind]()
            except Exception as exc:
                self.stats.error(
                    kind,
                    f"{type(exc).__name__}: {exc} "
                    f"({'new connection' if self.fresh else f'reused, idle {self.idle:.1f} s before'})",
                )
                self.drop()
                continue
            self.last_used = time.monotonic()
            self.stats.ok(kind, received)
            if self.rng.random() < 0.05:
                self.drop()  # a new connection (and TLS handshake) now and then
        self.drop()


def healthz(port: int, context: ssl.SSLContext) -> dict:
    conn = http.client.HTTPSConnection(HOST, port, timeout=30, context=context)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients [200]")
    parser.add_argument(
        "--seconds",
        type=float,
        default=180,
        help="how long new requests are started [180: long enough to see a plateau]",
    )
    parser.add_argument("--disk-mib", type=int, default=64, help="data in the large disk image [64]")
    parser.add_argument(
        "--workers", type=int, default=RECOMMENDED_WORKERS, help=f"serve/ workers [{RECOMMENDED_WORKERS}]"
    )
    parser.add_argument("--table-every", type=float, default=5, help="seconds between rows of memory over time [5]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()

    from serve.tls import generate_self_signed
    from talos_pipeline.simulator import UpstreamSimulator

    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-soak-"))
    server = None
    stats = Stats()
    try:
        store = workdir / "store"
        store.mkdir()
        print(f"publishing a {args.disk_mib} MiB image and 12 small ones into {store} ...", file=sys.stderr, flush=True)
        with UpstreamSimulator(disk_size=args.disk_mib * MIB, cache_dir=str(workdir / "cache-big")) as big:
            publish_into(store, big, [BIG[0]], [BIG[1]], [BIG[2]])
        with UpstreamSimulator(disk_size=MIB, cache_dir=str(workdir / "cache-small")) as small:
            publish_into(store, small, FILLER_VERSIONS, ["amd64", "arm64"])
        shutil.rmtree(workdir / "cache-big", ignore_errors=True)
        plan = load_plan(store)
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        generate_self_signed(cert, key, hosts=(HOST, "localhost"))
        context = ssl.create_default_context(cafile=str(cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_3

        (server,) = start_serve(workdir, store, cert, key, args.workers, verify=False, schemes=("https",))
        port = int(server.https.rsplit(":", 1)[1])
        for name in ("index", "images"):
            conn = http.client.HTTPSConnection(HOST, port, timeout=30, context=context)
            conn.request("GET", f"/streams/v1/{name}.json")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or body != plan.docs[name]:
                raise SystemExit(f"{name}.json is not the store's ({response.status})")
            plan.etags[name] = response.getheader("ETag")
            conn.close()
        idle = RssSampler(server.proc.pid).sample()[1]

        print(
            f"{args.clients} clients for {args.seconds:.0f} s against {server.https} ...", file=sys.stderr, flush=True
        )
        started = time.monotonic()
        deadline = started + args.seconds
        clients = [Client(n, port, context, plan, stats, deadline, args.seed) for n in range(args.clients)]
        for client in clients:
            client.start()
        ticks = watch(clients, server.proc.pid, stats, 1.0, deadline + 180)
        elapsed = time.monotonic() - started
        stuck = sum(client.is_alive() for client in clients)
        if stuck:
            stats.error("stuck", f"{stuck} clients still busy 180 s after the end")
        health = healthz(port, context)
    finally:
        if server is not None:
            stop_process(server.proc, timeout=30)
        log = workdir / f"serve-{args.workers}w-default-https.log"
        log_text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)

    lines = log_text.splitlines()
    log_errors = [line for line in lines if " ERROR " in line or "Traceback" in line]
    aborted = sum(" ABORTED" in line or " INCOMPLETE" in line or " FAILED" in line for line in lines)
    access = sum(" serve.access: " in line for line in lines)
    metrics = health.get("metrics", {})
    bad_metrics = {name: value for name, value in metrics.items() if value}
    requests_done, errors = stats.totals()
    samples = [tick.total_kib for tick in ticks]
    # Steady state: from 10 s after the start to the end of the load (the drain is left out).
    steady = [tick.total_kib for tick in ticks if 10 <= tick.seconds <= args.seconds] or samples
    first, last = samples[0], samples[-1]
    over_time, interval_rates = memory_over_time(ticks, args.table_every, args.seconds)

    def mib(kib: float) -> str:
        return f"{kib / 1024:.0f} MiB"

    done = stats.done
    w = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
    rows = [
        Row(
            "errors (status, length, sha256, bytes of ranges, exceptions)",
            str(errors),
            "must be 0",
            "ok" if errors == 0 else "FAILED",
        ),
        Row(
            "requests completed (incl. the direct-import step of unified)",
            f"{requests_done:,} ({requests_done / elapsed:,.0f}/s over the whole run)",
            f"{elapsed:.0f} s incl. drain",
            "-",
        ),
        Row(
            f"requests/s per {args.table_every:.0f}-s interval while the clients were busy (drain left out)",
            interval_rates.show("{:,.0f}", " req/s") if interval_rates else "-",
            "-",
            "-",
        ),
        Row("bytes received", f"{stats.bytes / 1e9:.2f} GB ({stats.bytes / 1e6 / elapsed:,.0f} MB/s)", "-", "-"),
        Row(
            "catalog 200 (index.json / images.json) / 304",
            f"{done.get('index', 0):,} / {done.get('images', 0):,} / {done.get('not_modified', 0):,}",
            "-",
            "-",
        ),
        Row("ranged disk reads checked byte for byte", f"{done.get('range', 0):,}", "-", "-"),
        Row(
            "full downloads, sha256 checked: small files / large disk / unified tarballs",
            f"{done.get('small_file', 0):,} / {done.get('large_disk', 0):,} / {done.get('unified', 0):,}",
            "-",
            "-",
        ),
        Row(
            f"TLS connections opened (re-opened because idle > {IDLE_LIMIT} s; because the server had closed it)",
            f"{stats.connections:,} ({stats.idle_reconnects:,}; {stats.server_closed:,})",
            "-",
            "-",
        ),
        Row(
            f"serve RSS, all processes ({w}), sampled every 1 s: first / min / max / last",
            f"{mib(first)} / {mib(min(samples))} / {mib(max(samples))} / {mib(last)}",
            f"idle before: {mib(idle)}",
            f"last/first {last / max(first, 1):.2f}×",
        ),
        Row(
            "serve RSS, all processes, steady state (10 s to the end of the load): min / max",
            f"{mib(min(steady))} / {mib(max(steady))}",
            f"at 10 s: {mib(steady[0])}",
            f"max/min {max(steady) / max(min(steady), 1):.2f}×",
        ),
        Row(
            "server: /healthz metrics not zero; ERROR lines; aborted/incomplete responses",
            f"{bad_metrics or 'none'}; {len(log_errors)}; {aborted}",
            f"{access:,} access-log lines",
            "ok" if not (bad_metrics or log_errors or aborted) else "FAILED",
        ),
    ]
    title = (
        f"serve/ soak: {args.clients} HTTPS clients for {args.seconds:.0f} s, {w}, "
        f"{plan.large.size / MIB:.0f} MiB disk + 12 small images"
    )
    text = print_table(title, rows)
    over_time = (
        f"\nMemory over time (serve's process tree, sampled every 1 s; a row every {args.table_every:.0f} s):\n\n"
        + over_time
    )
    print(over_time, flush=True)
    text += "\n" + over_time
    if stats.examples or log_errors:
        extra = "\n".join(["", "first errors:", *stats.examples, *log_errors[:10]])
        print(extra, flush=True)
        text += "\n" + extra
    append_output(args.output, text)
    return 0 if errors == 0 and not (bad_metrics or log_errors or aborted) else 1


if __name__ == "__main__":
    sys.exit(main())

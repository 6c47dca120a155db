"""`serve/` against nginx serving the same published store directory, in the same run.

Builds a store with `talos-pipeline publish` from the upstream simulator: one large image
(`--size-mib`, default 512: Talos v1.12.0 amd64 nocloud) plus 12 small ones so that
`images.json` has a realistic size (13 products, ~18 KB). Then serves that directory with:

* nginx (Debian's nginx-light; `worker_processes auto`, `sendfile on`, access log on, TLS 1.3 only
  with the same self-signed certificate from `serve.tls.generate_self_signed`), HTTP and HTTPS;
* `python -m serve --workers N` (the project's own server, production defaults, access log on),
  HTTP and HTTPS, for every N in `--worker-counts` (default 1,2);
* `python -m serve` with `TALOS_VERIFY_READS=true`, to show what re-hashing full-body reads costs.

Figures: requests/s of `wrk -t2 -c32 -d10s` on `streams/v1/images.json` (200) and with
`If-None-Match: <etag>` (304), one per round of `--rounds`; MB/s of the disk download (`curl -o
/dev/null`, `--repeat` times), alone and as the total of `--parallel` simultaneous HTTPS
downloads; peak RSS of the serve process tree during each download (sampled every 50 ms). Each
is shown as its median with the spread (min–max, n); ratios are median over median.
All servers run side by side and every figure is taken in interleaved rounds, so load from
elsewhere on the machine hits serve/ and nginx alike; the load average is printed with the table.
Note that wrk/curl share the machine's cores with the server under test.
Every server listens on 127.0.0.1 only and is stopped at the end.

    .venv/bin/python bench/serve_vs_nginx.py [--size-mib 512] [--workers 2] [--worker-counts 1,2]
        [--seconds 10] [--rounds 3] [--repeat 5] [--parallel 4] [--output FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MIB,
    VENV_BIN,
    Row,
    RssSampler,
    append_output,
    free_port,
    print_table,
    publish_into,
    stop_process,
    wait_for_url,
)
from bench.stats import Sample, medians_of, times

HOST = "127.0.0.1"
BIG = ("v1.12.0", "amd64", "nocloud")
FILLER_VERSIONS = ["v1.11.5", "v1.11.6", "v1.12.1"]
# The worker count recommended for a 2-core machine (see `--worker-counts` and the README).
RECOMMENDED_WORKERS = 2


# --------------------------------------------------------------------------- servers
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes auto;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ application/json json; application/octet-stream qcow2; application/x-xz xz; }}
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5s;
    server {{
        listen {host}:{http_port};
        root {root};
    }}
    server {{
        listen {host}:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        root {root};
    }}
}}
"""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    http: str
    https: str

    def base(self, scheme: str) -> str:
        return self.http if scheme == "http" else self.https


def start_nginx(workdir: Path, root: Path, cert: Path, key: Path) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise SystemExit("nginx is needed for the baseline: apt-get install -y nginx-light")
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    http_port, https_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            prefix=prefix, host=HOST, http_port=http_port, https_port=https_port, root=root, cert=cert, key=key
        )
    )
    check = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise SystemExit(f"nginx -t failed:\n{check.stderr}")
    with open(prefix / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    server = Server("nginx", proc, f"http://{HOST}:{http_port}", f"https://{HOST}:{https_port}")
    for base in (server.http, server.https):
        wait_for_url(base + "/streams/v1/index.json", cafile=str(cert), proc=proc)
    return server


def start_serve(
    workdir: Path,
    store: Path,
    cert: Path,
    key: Path,
    workers: int,
    verify: bool,
    schemes: tuple[str, ...] = ("http", "https"),
) -> list[Server]:
    """`python -m serve` on the store, one per scheme (plain HTTP and HTTPS; one process tree each).

    `verify=True` sets TALOS_VERIFY_READS=true (full-body reads re-hashed); the default is off."""
    env = dict(os.environ, TALOS_STORE=str(store), TALOS_VERIFY_READS="true" if verify else "false")
    for name in ("TALOS_PUBLIC_URL", "TALOS_DISK_MODE", "TALOS_FACTORY_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    servers = []
    for scheme in schemes:
        port = free_port()
        cmd = [str(VENV_BIN / "python"), "-m", "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
        if scheme == "https":
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
        label = f"serve-{workers}w-{'verify' if verify else 'default'}-{scheme}"
        with open(workdir / f"{label}.log", "wb") as stderr:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=str(Path(__file__).resolve().parent.parent),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        base = f"{scheme}://{HOST}:{port}"
        servers.append(Server(label, proc, base, base))
    for server in servers:
        wait_for_url(server.http + "/streams/v1/index.json", cafile=str(cert), proc=server.proc, timeout=60)
    return servers


# --------------------------------------------------------------------------- clients
def fetch(
    url: str, cafile: Path, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict, bytes]:
    scheme, rest = url.split("://", 1)
    hostport, path = rest.split("/", 1)
    if scheme == "https":
        conn = http.client.HTTPSConnection(hostport, timeout=30, context=ssl.create_default_context(cafile=str(cafile)))
    else:
        conn = http.client.HTTPConnection(hostport, timeout=30)
    try:
        conn.request(method, "/" + path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wrk(url: str, seconds: int, threads: int, connections: int, headers: dict[str, str] | None = None) -> float:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = re.search(r"Socket errors: (.*)", out.stdout)
    if bad or errors:
        raise SystemExit(f"wrk saw errors against {url}:\n{out.stdout}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))


def json_rps(server: Server, scheme: str, cafile: Path, args) -> dict[str, float]:
    """requests/s for images.json: 200 and 304 (If-None-Match), after checking both answers."""
    url = server.base(scheme) + "/streams/v1/images.json"
    status, headers, body = fetch(url, cafile)
    if status != 200 or not body:
        raise SystemExit(f"{url}: {status}")
    tag = headers["etag"]
    status, _, _ = fetch(url, cafile, {"If-None-Match": tag})
    if status != 304:
        raise SystemExit(f"{url} with If-None-Match {tag}: {status}, expected 304")
    return {
        "200": wrk(url, args.seconds, args.threads, args.connections),
        "304": wrk(url, args.seconds, args.threads, args.connections, {"If-None-Match": tag}),
    }


def curl_download(url: str, cafile: Path, size: int) -> float:
    """MB/s of one download to /dev/null (curl's own figure), checking status and length."""
    cmd = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
        "--cacert",
        str(cafile),
        "--max-time",
        "300",
    ]
    if url.startswith("https"):
        cmd.append("--tlsv1.3")
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=320, check=False)
    code, got, speed = out.stdout.split()
    if out.returncode != 0 or code != "200" or int(got) != size:
        raise SystemExit(f"download of {url} failed: curl exit {out.returncode}, HTTP {code}, {got} of {size} bytes")
    return float(speed) / 1e6


def download(server: Server, scheme: str, disk_path: str, cafile: Path, size: int) -> tuple[float, RssSampler]:
    """One download's MB/s, with the server's RSS sampled every 50 ms meanwhile."""
    with RssSampler(server.proc.pid, 0.05) as sampler:
        speed = curl_download(f"{server.base(scheme)}/{disk_path}", cafile, size)
    return speed, sampler


def parallel_downloads(server: Server, scheme: str, disk_path: str, cafile: Path, size: int, count: int) -> float:
    """Aggregate MB/s of `count` simultaneous downloads (total bytes / wall time), each checked."""
    import concurrent.futures

    url = f"{server.base(scheme)}/{disk_path}"
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda _: curl_download(url, cafile, size), range(count)))
    return count * size / (time.perf_counter() - started) / 1e6


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- the run
def disk_item(store: Path) -> tuple[str, int, str]:
    catalog = json.loads((store / "streams/v1/images.json").read_text())
    version, arch, variant = BIG
    product = catalog["products"][f"talos:{version}:{arch}:{variant}"]
    items = next(iter(product["versions"].values()))["items"]
    disk = next(item for item in items.values() if item["ftype"] == "disk-kvm.img")
    return disk["path"], disk["size"], disk["sha256"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="data in the large disk image [512]")
    parser.add_argument(
        "--workers",
        type=int,
        default=RECOMMENDED_WORKERS,
        help=f"serve/ workers for the download figures [{RECOMMENDED_WORKERS}]",
    )
    parser.add_argument("--worker-counts", default="1,2", help="serve/ worker counts for the JSON figures [1,2]")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per figure [10]")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads [2]")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections [32]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds per figure (median) [3]")
    parser.add_argument("--repeat", type=int, default=5, help="downloads per figure (median) [5]")
    parser.add_argument("--parallel", type=int, default=4, help="simultaneous HTTPS downloads for the total MB/s [4]")
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.worker_counts.split(",") if n.strip()} | {args.workers})
    for tool in ("wrk", "curl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install -y {tool}")

    from serve.tls import generate_self_signed
    from talos_pipeline.simulator import UpstreamSimulator

    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-serve-"))
    os.chmod(workdir, 0o755)
    running: list[Server] = []
    rows: list[Row] = []
    try:
        store = workdir / "store"
        store.mkdir()
        print(f"publishing a {args.size_mib} MiB image and 12 small ones into {store} ...", file=sys.stderr, flush=True)
        with UpstreamSimulator(disk_size=args.size_mib * MIB, cache_dir=str(workdir / "cache-big")) as big:
            publish_into(store, big, [BIG[0]], [BIG[1]], [BIG[2]])
        with UpstreamSimulator(disk_size=MIB, cache_dir=str(workdir / "cache-small")) as small:
            publish_into(store, small, FILLER_VERSIONS, ["amd64", "arm64"])
        shutil.rmtree(workdir / "cache-big", ignore_errors=True)
        disk_path, disk_size, _sha = disk_item(store)
        images_kb = (store / "streams/v1/images.json").stat().st_size / 1000
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        generate_self_signed(cert, key, hosts=(HOST, "localhost"))

        nginx = start_nginx(workdir, store, cert, key)
        running.append(nginx)
        # Every server runs for the whole measurement (idle ones cost nothing) and the figures are
        # taken in interleaved rounds, so that a load spike from elsewhere hits all of them alike.
        targets: dict[str, Server] = {"nginx-http": nginx, "nginx-https": nginx}
        for workers in counts:
            http_server, https_server = start_serve(workdir, store, cert, key, workers, verify=False)
            running += [http_server, https_server]
            targets[f"serve{workers}-http"], targets[f"serve{workers}-https"] = http_server, https_server
        http_server, https_server = start_serve(workdir, store, cert, key, args.workers, verify=True)
        running += [http_server, https_server]
        targets["verify-http"], targets["verify-https"] = http_server, https_server
        load_before = load_average()

        # Warm the page cache (and check that nginx serves the whole file) before measuring anything.
        curl_download(f"{nginx.http}/{disk_path}", cert, disk_size)
        json_targets = ["nginx"] + [f"serve{n}" for n in counts]
        rps: dict[tuple[str, str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for scheme in ("http", "https"):
                for name in json_targets:
                    for case, value in json_rps(targets[f"{name}-{scheme}"], scheme, cert, args).items():
                        rps.setdefault((name, scheme, case), []).append(value)
            print(f"round {round_ + 1}/{args.rounds} of wrk done", file=sys.stderr, flush=True)
        speeds: dict[tuple[str, str], list[float]] = {}
        peaks: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for _ in range(args.repeat):
            for scheme in ("http", "https"):
                for name in ("nginx", f"serve{args.workers}", "verify"):
                    speed, sampler = download(targets[f"{name}-{scheme}"], scheme, disk_path, cert, disk_size)
                    speeds.setdefault((name, scheme), []).append(speed)
                    peaks.setdefault((name, scheme), []).append((sampler.peak_total, sampler.peak_single))
        parallel: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for name in json_targets:
                parallel.setdefault(name, []).append(
                    parallel_downloads(targets[f"{name}-https"], "https", disk_path, cert, disk_size, args.parallel)
                )
        load_after = load_average()
    finally:
        for server in running:
            stop_process(server.proc, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    def w(n: int) -> str:
        return f"{n} worker{'s' if n > 1 else ''}"

    def req(sample: Sample) -> str:
        return sample.show("{:,.0f}", " req/s")

    def mbps(sample: Sample) -> str:
        return sample.show("{:,.0f}", " MB/s")

    for scheme in ("http", "https"):
        for case, label in (("200", "200"), ("304", "304 (If-None-Match)")):
            base = Sample.of(rps[("nginx", scheme, case)])
            for workers in counts:
                value = Sample.of(rps[(f"serve{workers}", scheme, case)])
                rows.append(
                    Row(
                        f"images.json ({images_kb:.0f} KB) {label}, {scheme.upper()}, serve {w(workers)}",
                        req(value),
                        f"nginx {req(base)}",
                        times(value.ratio_to(base)),
                    )
                )
    mib = disk_size / MIB
    kinds = ((f"serve{args.workers}", "default (verify_reads off)"), ("verify", "TALOS_VERIFY_READS=true"))
    for kind, label in kinds:
        for scheme in ("http", "https"):
            value, base = Sample.of(speeds[(kind, scheme)]), Sample.of(speeds[("nginx", scheme)])
            rows.append(
                Row(
                    f"disk download {mib:.0f} MiB, {scheme.upper()}, serve {w(args.workers)}, {label}",
                    mbps(value),
                    f"nginx sendfile {mbps(base)}",
                    times(value.ratio_to(base)),
                )
            )
    base = Sample.of(parallel["nginx"])
    for workers in counts:
        value = Sample.of(parallel[f"serve{workers}"])
        rows.append(
            Row(
                f"{args.parallel} simultaneous disk downloads, HTTPS, serve {w(workers)}, default: total",
                mbps(value),
                f"nginx {mbps(base)}",
                times(value.ratio_to(base)),
            )
        )

    def peak(kind: str, scheme: str, index: int) -> Sample:
        return Sample.of([run[index] / 1024 for run in peaks[(kind, scheme)]])

    for kind, label in kinds:
        for scheme in ("http", "https"):
            total, single = peak(kind, scheme, 0), peak(kind, scheme, 1)
            base_total, base_single = peak("nginx", scheme, 0), peak("nginx", scheme, 1)
            rows.append(
                Row(
                    f"peak RSS during a {scheme.upper()} download, serve {w(args.workers)}, {label}: "
                    "all processes; largest",
                    f"{total.show('{:.0f}', ' MiB')}; {single.show('{:.0f}', ' MiB')}",
                    f"nginx {base_total.show('{:.0f}', ' MiB')}; {base_single.show('{:.0f}', ' MiB')}",
                    times(total.ratio_to(base_total)),
                )
            )
    title = (
        f"serve/ vs nginx on the same store (wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, "
        f"{medians_of(args.rounds)}; downloads: curl, {medians_of(args.repeat, 'downloads each')}; 127.0.0.1)"
    )
    text = print_table(title, rows)
    note = f"\nload average (1, 5, 15 min) before: {load_before}; after: {load_after}"
    print(note, flush=True)
    text += "\n" + note
    append_output(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

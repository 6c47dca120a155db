"""Memory under slow readers: `--readers` clients (default 1,000) each download a disk at a trickle.

Builds a store with one `--disk-mib` image (default 64), starts `python -m serve --workers N` and
nginx on it (plain HTTP, 127.0.0.1), then opens the readers against each in turn: every reader
sends one GET for the disk with a 4 KiB receive buffer and reads about 8 KB/s for `--seconds`
(default 20). Figures: the server's RSS (all processes) before, at its peak, and 5 s after the
readers left, and the growth per reader; nginx the same as the baseline, in the same run. Each
round starts nginx and serve/ (every worker count of `--workers`) afresh, one after the other;
figures are medians (min–max, n) over `--repeat` rounds. The issue-13 bounds: ≤ 256 KiB per
reader and under 300 MiB for 1,000 readers, in every round (exit status 1 otherwise).

    .venv/bin/python bench/serve_slow_readers.py [--readers 1000] [--seconds 20] [--workers 1,2] [--repeat 3]
        [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MIB,
    VENV_BIN,
    Row,
    append_output,
    free_port,
    print_table,
    process_tree,
    publish_into,
    rss_kib,
    stop_process,
    wait_for_url,
)
from bench.serve_vs_nginx import BIG, HOST, disk_item, start_nginx
from bench.stats import Sample, medians_of, times

READ = 1024
# Issue 13's bounds: per slow reader, and for the whole serve/ process tree under 1,000 of them.
PER_READER_KIB = 256
PEAK_MIB = 300
Reading = tuple[float, float, float]


def tree_rss_mib(pid: int) -> float:
    return sum(rss_kib(p) for p in process_tree(pid)) / 1024


def trickle(port: int, path: str, readers: int, seconds: float, pid: int) -> Reading:
    """(RSS before, peak while `readers` read slowly, 5 s after they left), MiB."""
    before = tree_rss_mib(pid)
    socks = []
    for n in range(readers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((f"127.0.0.{2 + n % 200}", 0))
        sock.connect((HOST, port))
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        socks.append(sock)
    peak = before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        for sock in socks:
            sock.setblocking(False)
            try:
                sock.recv(READ * 8)
            except BlockingIOError:
                pass
        peak = max(peak, tree_rss_mib(pid))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    for sock in socks:
        sock.close()
    time.sleep(5)
    return before, peak, tree_rss_mib(pid)


def nginx_round(workdir: Path, store: Path, cert: Path, key: Path, path: str, args: argparse.Namespace) -> Reading:
    nginx = start_nginx(workdir, store, cert, key)
    try:
        return trickle(int(nginx.http.rsplit(":", 1)[1]), path, args.readers, args.seconds, nginx.proc.pid)
    finally:
        stop_process(nginx.proc, timeout=30)


def serve_round(workdir: Path, store: Path, workers: int, path: str, args: argparse.Namespace) -> Reading:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "PROMETHEUS_"))}
    env.update(TALOS_STORE=str(store), TALOS_SERVE_MAX_CONNECTIONS=str(args.readers + 100))
    cmd = [str(VENV_BIN / "python"), "-m", "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    with open(workdir / "serve.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_url(f"http://{HOST}:{port}/readyz", proc=proc, timeout=60)
        return trickle(port, path, args.readers, args.seconds, proc.pid)
    finally:
        stop_process(proc, timeout=30)


def mib(sample: Sample) -> str:
    return sample.show("{:.0f}", " MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--disk-mib", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="serve/ worker counts, comma-separated [1,2]")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each server freshly started (medians) [3]")
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from serve.tls import generate_self_signed
    from talos_pipeline.simulator import UpstreamSimulator

    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-slow-"))
    os.chmod(workdir, 0o755)
    readings: dict[str, list[Reading]] = {}
    try:
        store = workdir / "store"
        store.mkdir()
        with UpstreamSimulator(disk_size=args.disk_mib * MIB, cache_dir=str(workdir / "cache")) as sim:
            publish_into(store, sim, [BIG[0]], [BIG[1]], [BIG[2]])
        path, _size, _sha = disk_item(store)
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        generate_self_signed(cert, key, hosts=(HOST,))
        for round_ in range(args.repeat):
            # nginx and every serve/ worker count in each round, so load from elsewhere hits them alike.
            readings.setdefault("nginx", []).append(
                nginx_round(workdir / f"nginx-{round_}", store, cert, key, path, args)
            )
            for workers in counts:
                readings.setdefault(f"serve{workers}", []).append(serve_round(workdir, store, workers, path, args))
            print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def figure(kind: str, index: int) -> Sample:
        return Sample.of([reading[index] for reading in readings[kind]])

    def per_reader(kind: str) -> Sample:
        return Sample.of([(peak - before) * 1024 / args.readers for before, peak, _after in readings[kind]])

    n_before, n_peak, n_after = (figure("nginx", i) for i in range(3))
    nginx_growth = per_reader("nginx")
    rows = []
    ok = True
    for workers in counts:
        kind = f"serve{workers}"
        before, peak, after = (figure(kind, i) for i in range(3))
        growth = per_reader(kind)
        within = growth.high <= PER_READER_KIB and peak.high < PEAK_MIB
        ok &= within
        w = f"{workers} worker{'s' if workers > 1 else ''}"
        rows += [
            Row(
                f"RSS of serve/ ({w}), all processes: before / peak / 5 s after",
                f"{mib(before)} / {mib(peak)} / {mib(after)}",
                f"nginx {mib(n_before)} / {mib(n_peak)} / {mib(n_after)}",
                f"peak {times(peak.ratio_to(n_peak))}",
            ),
            Row(
                f"serve/ ({w}) growth per slow reader: (peak − before) / readers",
                growth.show("{:.0f}", " KiB"),
                f"nginx {nginx_growth.show('{:.0f}', ' KiB')}",
                f"must be ≤ {PER_READER_KIB} KiB in every round: "
                + ("ok" if growth.high <= PER_READER_KIB else "FAILED"),
            ),
            Row(
                f"serve/ ({w}) peak RSS under the slow readers",
                mib(peak),
                f"must stay under {PEAK_MIB} MiB in every round",
                "ok" if peak.high < PEAK_MIB else "FAILED",
            ),
        ]
    title = (
        f"Memory under {args.readers:,} slow readers (8 KB/s each for {args.seconds:.0f} s, {args.disk_mib} MiB disk; "
        f"{medians_of(args.repeat, 'rounds')}, every server freshly started)"
    )
    append_output(args.output, print_table(title, rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

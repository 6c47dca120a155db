"""Memory under slow readers: `--readers` clients (default 1,000) each download a disk at a trickle.

Builds a store with one `--disk-mib` image (default 64), starts `python -m serve --workers N` and
nginx on it (plain HTTP, 127.0.0.1), then opens the readers against each in turn: every reader
sends one GET for the disk with a 4 KiB receive buffer and reads about 8 KB/s for `--seconds`
(default 20). Figures: the server's RSS (all processes) before, at its peak, and 5 s after the
readers left; nginx the same as the baseline. The issue-13 bound is 300 MiB for 1,000 readers.

    .venv/bin/python bench/serve_slow_readers.py [--readers 1000] [--seconds 20] [--workers 2] [--output FILE]
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

READ = 1024


def tree_rss_mib(pid: int) -> float:
    return sum(rss_kib(p) for p in process_tree(pid)) / 1024


def trickle(port: int, path: str, readers: int, seconds: float, pid: int) -> tuple[float, float, float]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--disk-mib", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from serve.tls import generate_self_signed
    from talos_pipeline.simulator import UpstreamSimulator

    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-slow-"))
    os.chmod(workdir, 0o755)
    results: dict[str, tuple[float, float, float]] = {}
    try:
        store = workdir / "store"
        store.mkdir()
        with UpstreamSimulator(disk_size=args.disk_mib * MIB, cache_dir=str(workdir / "cache")) as sim:
            publish_into(store, sim, [BIG[0]], [BIG[1]], [BIG[2]])
        path, _size, _sha = disk_item(store)
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        generate_self_signed(cert, key, hosts=(HOST,))
        nginx = start_nginx(workdir, store, cert, key)
        try:
            port = int(nginx.http.rsplit(":", 1)[1])
            results["nginx"] = trickle(port, path, args.readers, args.seconds, nginx.proc.pid)
        finally:
            stop_process(nginx.proc, timeout=30)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "PROMETHEUS_"))}
        env.update(TALOS_STORE=str(store), TALOS_SERVE_MAX_CONNECTIONS=str(args.readers + 100))
        cmd = [str(VENV_BIN / "python"), "-m", "serve", "--host", HOST, "--port", str(port)]
        with open(workdir / "serve.log", "wb") as log:
            proc = subprocess.Popen(
                [*cmd, "--workers", str(args.workers)], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_for_url(f"http://{HOST}:{port}/readyz", proc=proc, timeout=60)
            results["serve"] = trickle(port, path, args.readers, args.seconds, proc.pid)
        finally:
            stop_process(proc, timeout=30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (before, peak, after), (n_before, n_peak, n_after) = results["serve"], results["nginx"]
    rows = [
        Row(
            f"RSS of serve/ ({args.workers} workers), all processes: before / peak / 5 s after",
            f"{before:.0f} / {peak:.0f} / {after:.0f} MiB",
            f"nginx {n_before:.0f} / {n_peak:.0f} / {n_after:.0f} MiB",
            f"peak {peak / max(n_peak, 1):.2f}×",
        ),
        Row(
            "serve/ growth per slow reader (peak - before) / readers",
            f"{(peak - before) * 1024 / args.readers:.0f} KiB",
            f"nginx {(n_peak - n_before) * 1024 / args.readers:.0f} KiB",
            "must be ≤ 256 KiB",
        ),
        Row(
            "serve/ peak RSS under the slow readers",
            f"{peak:.0f} MiB",
            "must stay under 300 MiB",
            "ok" if peak < 300 else "FAILED",
        ),
    ]
    title = (
        f"Memory under {args.readers:,} slow readers (8 KB/s each for {args.seconds:.0f} s, {args.disk_mib} MiB disk)"
    )
    append_output(args.output, print_table(title, rows))
    return 0 if peak < 300 else 1


if __name__ == "__main__":
    sys.exit(main())

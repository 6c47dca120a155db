"""The server underneath `serve/`: the same app under each candidate server, same store, same run.

Candidates (each with 2 worker processes, plain HTTP on 127.0.0.1, access logs off except ours,
which cannot turn it off cheaper than a level check):

* `serve/`'s own server (`python -m serve`: httptools/llhttp on uvloop, `serve/connection.py`);
* uvicorn with httptools (`uvicorn --factory serve.app:app_from_settings --http httptools`);
* granian (Rust, ASGI interface) and hypercorn (h11), when installed
  (`pip install 'granian>=2.8,<2.9' 'hypercorn>=0.18,<0.19'`; they are not dependencies).

Figures per server: requests/s of `wrk -t2 -c32` on images.json (median of `--rounds`); RSS
growth per idle keep-alive connection (1,000 connections that each made one request); and the
lock-out check of issue 13: with 1,100 idle TCP connections open, how long a new client waits
for index.json (or that it gets no answer within 5 s), and how many of the idle connections the
server has closed 25 s later.

    .venv/bin/python bench/serve_servers.py [--seconds 5] [--rounds 1] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
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
from bench.serve_vs_nginx import BIG, FILLER_VERSIONS, HOST, wrk

FACTORY = "serve.app:app_from_settings"


def commands(port: int) -> dict[str, list[str] | None]:
    py = str(VENV_BIN / "python")
    granian, hypercorn = VENV_BIN / "granian", VENV_BIN / "hypercorn"
    return {
        "serve/ (own, httptools + uvloop)": [py, "-m", "serve", "--host", HOST, "--port", str(port), "--workers", "2"],
        "uvicorn + httptools": [
            py, "-m", "uvicorn", "--factory", FACTORY, "--host", HOST, "--port", str(port),
            "--http", "httptools", "--loop", "uvloop", "--workers", "2", "--no-access-log",
        ],
        "granian (ASGI)": [
            str(granian), "--interface", "asgi", "--factory", FACTORY, "--host", HOST, "--port", str(port),
            "--workers", "2", "--no-access-log",
        ] if granian.exists() else None,
        "hypercorn (h11)": [
            str(hypercorn), "--workers", "2", "--bind", f"{HOST}:{port}", f"{FACTORY}()",
        ] if hypercorn.exists() else None,
    }  # fmt: skip


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in process_tree(pid))


def idle_connection_cost(port: int, pid: int, count: int = 1000) -> str:
    """KiB of RSS per idle keep-alive connection (each made one request first)."""
    time.sleep(1)
    before = tree_rss_kib(pid)
    socks = []
    request = f"GET /streams/v1/index.json HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    try:
        for _ in range(count):
            sock = socket.create_connection((HOST, port), timeout=10)
            socks.append(sock)
            sock.sendall(request)
            if not sock.recv(65536):
                return f"connection {len(socks)} closed without an answer"
        time.sleep(1)
        return f"{(tree_rss_kib(pid) - before) / count:.0f} KiB"
    except OSError as exc:
        return f"connection {len(socks)} got no answer within 10 s ({type(exc).__name__})"
    finally:
        for sock in socks:
            sock.close()


def lockout(port: int) -> tuple[str, str]:
    """(time a new client waited with 1,100 idle connections open, idle connections closed after 25 s)."""
    idle = []
    for n in range(1100):
        sock = socket.socket()
        sock.bind((f"127.0.0.{2 + n % 11}", 0))
        sock.connect((HOST, port))
        idle.append(sock)
    opened = time.monotonic()
    started = time.monotonic()
    try:
        with socket.create_connection((HOST, port), timeout=5) as client:
            client.sendall(f"GET /streams/v1/index.json HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            answer = client.recv(64)
        waited = f"{time.monotonic() - started:.2f} s" if answer.startswith(b"HTTP/1.1 200") else f"{answer[:12]!r}"
    except OSError as exc:
        waited = f"no answer ({type(exc).__name__})"
    time.sleep(max(0.0, 25 - (time.monotonic() - opened)))
    closed = 0
    for sock in idle:
        sock.setblocking(False)
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return waited, f"{closed} of {len(idle)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration [5]")
    parser.add_argument("--rounds", type=int, default=1, help="wrk rounds (median) [1]")
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from talos_pipeline.simulator import UpstreamSimulator

    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-servers-"))
    rows: list[Row] = []
    try:
        store = workdir / "store"
        store.mkdir()
        with UpstreamSimulator(disk_size=MIB, cache_dir=str(workdir / "cache")) as sim:
            publish_into(store, sim, [BIG[0], *FILLER_VERSIONS], ["amd64", "arm64"], [BIG[2]])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "PROMETHEUS_"))}
        env.update(TALOS_STORE=str(store))
        results: dict[str, tuple[float, str, str, str]] = {}
        for name, cmd in commands(0).items():
            if cmd is None:
                print(f"{name}: not installed, skipped", file=sys.stderr)
                continue
            port = free_port()
            cmd = commands(port)[name]
            assert cmd is not None
            with open(workdir / f"{port}.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(Path(__file__).parents[1]),
                    start_new_session=True,
                )  # fmt: skip
            try:
                url = f"http://{HOST}:{port}/streams/v1/images.json"
                wait_for_url(url, proc=proc, timeout=60)
                rps = statistics.median(wrk(url, args.seconds, 2, 32) for _ in range(args.rounds))
                per_connection = idle_connection_cost(port, proc.pid)
                waited, closed = lockout(port)
                results[name] = (rps, per_connection, waited, closed)
                print(f"{name}: {rps:,.0f} req/s, {per_connection}/conn, {waited}, {closed}", file=sys.stderr)
            finally:
                stop_process(proc, timeout=30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = results.get("uvicorn + httptools", (0.0, "", "", ""))[0]
    for name, (rps, per_connection, waited, closed) in results.items():
        rows.append(Row(f"{name}: images.json 200, HTTP, 2 workers", f"{rps:,.0f} req/s",
                        f"uvicorn {base:,.0f} req/s", f"{rps / base:.2f}×" if base else "-"))  # fmt: skip
        rows.append(Row(f"{name}: RSS per idle keep-alive connection (1,000)", per_connection, "-", "-"))
        rows.append(Row(f"{name}: 1,100 idle TCP connections: a new client's index.json; idle closed after 25 s",
                        f"{waited}; {closed}", "must be < 2 s; ≥ 990", "-"))  # fmt: skip
    text = print_table("The server underneath serve/: the same app, same store, same run (127.0.0.1)", rows)
    append_output(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

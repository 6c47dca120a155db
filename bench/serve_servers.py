"""The server underneath `serve/`: the same app under each candidate server, same store, same run.

Candidates (each with 2 worker processes, plain HTTP on 127.0.0.1, access logs off except ours,
which cannot turn it off cheaper than a level check):

* `serve/`'s own server (`python -m serve`: httptools/llhttp on uvloop, `serve/connection.py`);
* uvicorn with httptools (`uvicorn --factory serve.app:app_from_settings --http httptools`);
* granian (Rust, ASGI interface) and hypercorn (h11).

uvicorn, granian and hypercorn are not runtime dependencies: they are the `bench` extra of
pyproject.toml (`.venv/bin/pip install -e '.[bench]'`, which `bench/run` does); the script stops
with that instruction when one is missing rather than leave a row out.

Figures per server: requests/s of `wrk -t2 -c32` on images.json, one figure per round, the
servers side by side and the rounds interleaved (median with its spread, ratio median over
median against uvicorn); RSS growth per idle keep-alive connection (1,000 connections that each
made one request); and the lock-out check of issue 13: with 1,100 idle TCP connections open, how
long a new client waits for index.json (or that it gets no answer within 5 s), and how many of
the idle connections the server has closed 25 s later.

    .venv/bin/python bench/serve_servers.py [--seconds 10] [--rounds 3] [--output FILE]
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
from bench.serve_vs_nginx import BIG, FILLER_VERSIONS, HOST, wrk
from bench.stats import Sample, medians_of, times

FACTORY = "serve.app:app_from_settings"


BASELINE = "uvicorn + httptools"
# The servers compared with serve/'s own: each an executable of the `bench` extra in the virtualenv.
CANDIDATES = ("uvicorn", "granian", "hypercorn")


def missing_candidates() -> list[str]:
    return [name for name in CANDIDATES if not (VENV_BIN / name).exists()]


def commands(port: int) -> dict[str, list[str]]:
    py = str(VENV_BIN / "python")
    return {
        "serve/ (own, httptools + uvloop)": [py, "-m", "serve", "--host", HOST, "--port", str(port), "--workers", "2"],
        BASELINE: [
            py, "-m", "uvicorn", "--factory", FACTORY, "--host", HOST, "--port", str(port),
            "--http", "httptools", "--loop", "uvloop", "--workers", "2", "--no-access-log",
        ],
        "granian (ASGI)": [
            str(VENV_BIN / "granian"), "--interface", "asgi", "--factory", FACTORY, "--host", HOST,
            "--port", str(port), "--workers", "2", "--no-access-log",
        ],
        "hypercorn (h11)": [
            str(VENV_BIN / "hypercorn"), "--workers", "2", "--bind", f"{HOST}:{port}", f"{FACTORY}()",
        ],
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


def start(name: str, env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with open(workdir / f"{port}.log", "wb") as log:
        proc = subprocess.Popen(
            commands(port)[name], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(Path(__file__).parents[1]),
            start_new_session=True,
        )  # fmt: skip
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per figure [10]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds (medians) [3]")
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    missing = missing_candidates()
    if missing:
        raise SystemExit(
            f"bench/serve_servers.py compares serve/ with {', '.join(CANDIDATES)}; not installed in "
            f"{VENV_BIN.parent}: {', '.join(missing)}. Install the bench extra: .venv/bin/pip install -e '.[dev,bench]'"
        )
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from talos_pipeline.simulator import UpstreamSimulator

    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-servers-"))
    running: dict[str, tuple[subprocess.Popen, int]] = {}
    rps: dict[str, list[float]] = {}
    other: dict[str, tuple[str, str, str]] = {}
    try:
        store = workdir / "store"
        store.mkdir()
        with UpstreamSimulator(disk_size=MIB, cache_dir=str(workdir / "cache")) as sim:
            publish_into(store, sim, [BIG[0], *FILLER_VERSIONS], ["amd64", "arm64"], [BIG[2]])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "PROMETHEUS_"))}
        env.update(TALOS_STORE=str(store))
        # Every server runs for the whole measurement and the wrk rounds are interleaved, so load
        # from elsewhere on the machine hits them alike.
        for name in commands(0):
            running[name] = start(name, env, workdir)
        for proc, port in running.values():
            wait_for_url(f"http://{HOST}:{port}/streams/v1/images.json", proc=proc, timeout=60)
        for round_ in range(args.rounds):
            for name, (_proc, port) in running.items():
                url = f"http://{HOST}:{port}/streams/v1/images.json"
                rps.setdefault(name, []).append(wrk(url, args.seconds, 2, 32))
            print(f"round {round_ + 1}/{args.rounds} of wrk done", file=sys.stderr, flush=True)
        for name, (proc, port) in running.items():
            per_connection = idle_connection_cost(port, proc.pid)
            waited, closed = lockout(port)
            other[name] = (per_connection, waited, closed)
            print(f"{name}: {per_connection}/conn, {waited}, {closed}", file=sys.stderr, flush=True)
    finally:
        for proc, _port in running.values():
            stop_process(proc, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    base = Sample.of(rps[BASELINE])
    rows: list[Row] = []
    for name, values in rps.items():
        value = Sample.of(values)
        per_connection, waited, closed = other[name]
        rows.append(Row(f"{name}: images.json 200, HTTP, 2 workers", value.show("{:,.0f}", " req/s"),
                        f"uvicorn {base.show('{:,.0f}', ' req/s')}", times(value.ratio_to(base))))  # fmt: skip
        rows.append(Row(f"{name}: RSS per idle keep-alive connection (1,000)", per_connection, "-", "-"))
        rows.append(Row(f"{name}: 1,100 idle TCP connections: a new client's index.json; idle closed after 25 s",
                        f"{waited}; {closed}", "must be < 2 s; ≥ 990", "-"))  # fmt: skip
    title = (
        f"The server underneath serve/: the same app, same store, same run (wrk -t2 -c32 -d{args.seconds}s, "
        f"{medians_of(args.rounds)}; 127.0.0.1)"
    )
    append_output(args.output, print_table(title, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmarks: timing, peak RSS of child processes, result tables."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
MIB = 1024 * 1024


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def run_timed(cmd: list[str] | str, *, env: dict | None = None, shell: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {cmd}\n{stderr[-2000:]}")
    return elapsed, usage.ru_maxrss


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, rows: list[Row]) -> str:
    table = markdown_table(
        ["figure", "value", "baseline (same run)", "ratio"], [[r.figure, r.value, r.baseline, r.ratio] for r in rows]
    )
    text = f"## {title}\n\nmachine: {machine()}\n\n{table}"
    print(text, flush=True)
    return text


# --------------------------------------------------------------------------- servers (serve/ benchmarks)
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_url(url: str, *, cafile: str | None = None, timeout: float = 30.0, proc=None) -> None:
    """Poll `url` until it answers 200 (or fail after `timeout`, or as soon as `proc` exits)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=cafile) if cafile else None
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server for {url} exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s ({last})")


def stop_process(proc, timeout: float = 10.0) -> None:
    """SIGTERM one child we started (its process group if it leads one), then SIGKILL after `timeout`."""
    import signal

    if proc is None or proc.poll() is not None:
        return
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def rss_kib(pid: int) -> int:
    """Current resident set size of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the RSS of a process tree in a thread: `with RssSampler(pid, 0.05) as s: ...`.

    `samples` holds (seconds since start, sum over the tree in KiB, largest single process in KiB).
    The tree is re-read every sample, so worker processes started later are included.
    """

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        import threading

        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int]] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def sample(self) -> tuple[float, int, int]:
        sizes = [rss_kib(p) for p in process_tree(self.pid)]
        return (time.monotonic() - self._started, sum(sizes), max(sizes, default=0))

    def _run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.sample())

    @property
    def peak_total(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def peak_single(self) -> int:
        return max((s[2] for s in self.samples), default=0)


def publish_into(store: Path, sim, versions: list[str], arches: list[str], variants: list[str] | None = None) -> None:
    """`talos-pipeline publish` (the pipeline's own command) of `versions` from the simulator `sim` into `store`."""
    env = dict(
        os.environ,
        TALOS_STORE=str(store),
        TALOS_RELEASES_URL=sim.releases_url,
        TALOS_FACTORY_URL=sim.factory_url,
        TALOS_SIGNING="none",
    )
    env.pop("DAGSTER_HOME", None)
    cmd = [str(VENV_BIN / "talos-pipeline"), "publish", *versions]
    for arch in arches:
        cmd += ["--arch", arch]
    for variant in variants or ():
        cmd += ["--variant", variant]
    run_timed(cmd, env=env)


def append_output(path: str | None, text: str) -> None:
    """Append a printed table to `--output FILE` (for `bench/run` to collect)."""
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text.rstrip("\n") + "\n\n")

"""The whole S3 publication of a disk (what `publish` does into S3) vs boto3's `upload_file`, same bytes.

The headline is the whole publication as `publish` does it into S3: multipart upload to a
staging key while the bytes arrive, then the server-side copy to the content-addressed key, shown
with and without that copy (the copy is timed in each run and subtracted; spool mode, which has
no copy, is measured too), each against boto3's `upload_file` of the same file into the same
server, in the same run.

A qcow2 image of `--size-mib` (512 by default) is generated once into a temporary file. Each
measurement runs in a fresh child process against one moto server (a separate process, on
127.0.0.1, over HTTP) started by this script:

* `S3Store.upload`, stream mode (the default): the file is fed in 1 MiB chunks, as the download
  loop of the publish step feeds it, while parts go to a staging multipart upload; then
  `commit(key, sha256=…)`: complete the staging upload, server-side copy to the
  content-addressed key (the server's full-object SHA-256 checked against ours), delete the
  staging object. The whole publication, not just the bytes on the wire; each run is also split
  at CompleteMultipartUpload into the upload proper (what upload_file does) and the copy.
* `S3Store.upload`, spool mode (`TALOS_S3_UPLOAD=spool`): the chunks go to an unlinked local
  file, and `commit` uploads it in parallel parts straight to the final key.
* baseline: `boto3.client("s3").upload_file(file, bucket, key)` with its default TransferConfig
  (8 MiB parts, 10 threads) into the same bucket.

Runs rotate between the three, each against a freshly started moto server (moto slows down as
it accumulates objects); the figures are medians (min–max, n) of wall times measured inside the
child (interpreter start-up excluded); the peak RSS comes from `wait4` of the child. moto is a Python server, so its
own CPU (it keeps objects in temporary files and concatenates or copies them byte by byte, for a
multipart completion as for a "server-side" copy) is part of every figure: run it on an
otherwise idle machine.

    .venv/bin/python bench/s3_upload.py [--size-mib 512] [--repeat 5] [--part-mib 8] [--concurrency 4]

Use `--endpoint URL --bucket B` (and AWS_* credentials) to measure a real MinIO/R2/S3 instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIB, Row, append_output, print_table
from bench.stats import Sample, medians_of, rate, times

MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    with open(workdir / "moto.log", "ab") as log:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **MOTO_ENV),
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto_server did not start; see {workdir / 'moto.log'}") from None
            time.sleep(0.05)


def make_image(path: Path, size_mib: int) -> str:
    from talos_pipeline.simulator import write_qcow2

    with open(path, "wb") as handle:
        write_qcow2(handle, data_size=size_mib * MIB, seed=b"s3-upload-bench")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


# -- the child side --------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> int:
    import boto3

    key = f"bench/disk-{args.sha256}.qcow2"
    fed = 0.0
    if args.worker in ("stream", "spool"):
        from talos_pipeline.core.stores.s3 import S3Store

        store = S3Store(
            args.bucket, part_size=args.part_mib * MIB, concurrency=args.concurrency, upload_mode=args.worker
        )
        completed: list[float] = []  # when the multipart upload was complete (before any copy)
        store.s3.meta.events.register(
            "after-call.s3.CompleteMultipartUpload", lambda **_: completed.append(time.perf_counter())
        )
        started = time.perf_counter()
        upload = store.upload()
        with open(args.file, "rb", buffering=0) as handle:
            while chunk := handle.read(MIB):
                upload.write(chunk)
        upload.commit(key, sha256=args.sha256)
        seconds = time.perf_counter() - started
        fed = completed[0] - started if completed else seconds
        size = store.stat(key).size
        leftovers = store.temporaries()
        if leftovers:
            raise SystemExit(f"uploads left behind: {leftovers}")
    else:
        client = boto3.client("s3")
        started = time.perf_counter()
        client.upload_file(args.file, args.bucket, key)
        seconds = time.perf_counter() - started
        size = client.head_object(Bucket=args.bucket, Key=key)["ContentLength"]
    boto3.client("s3").delete_object(Bucket=args.bucket, Key=key)
    print(json.dumps({"seconds": seconds, "fed": fed, "size": size}))
    return 0


def run_child(kind: str, args: argparse.Namespace, env: dict, workdir: Path) -> tuple[float, float, int]:
    moto = None
    if not args.endpoint:  # a fresh server and bucket for every run
        moto, endpoint = start_moto(workdir)
        env = dict(env, AWS_ENDPOINT_URL=endpoint, **MOTO_ENV)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=args.bucket)
    try:
        return _run_child(kind, args, env)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)


def _run_child(kind: str, args: argparse.Namespace, env: dict) -> tuple[float, float, int]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--file",
        args.file,
        "--sha256",
        args.sha256,
        "--bucket",
        args.bucket,
        "--part-mib",
        str(args.part_mib),
        "--concurrency",
        str(args.concurrency),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} upload failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["size"] != os.path.getsize(args.file):
        raise SystemExit(f"{kind} upload stored {result['size']} bytes")
    return result["seconds"], result["fed"], usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--part-mib", type=int, default=8, help="S3Store part size [8]")
    parser.add_argument("--concurrency", type=int, default=4, help="S3Store parts in flight [4]")
    parser.add_argument("--endpoint", help="measure this S3 endpoint instead of a local moto server")
    parser.add_argument("--bucket", help="bucket to use with --endpoint (must exist)")
    parser.add_argument("--output", help="also append the table to this file")
    parser.add_argument("--worker", choices=["stream", "spool", "boto3"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--sha256", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    workdir = Path(tempfile.mkdtemp(prefix="talos-s3-bench-"))
    try:
        if args.endpoint:
            if not args.bucket:
                raise SystemExit("--endpoint needs --bucket")
            env = dict(os.environ, AWS_ENDPOINT_URL=args.endpoint)
        else:
            env = dict(os.environ)
            args.bucket = f"bench-{uuid.uuid4().hex[:8]}"
        image = workdir / "image.qcow2"
        args.sha256 = make_image(image, args.size_mib)
        args.file = str(image)
        size = image.stat().st_size
        runs: dict[str, list[tuple[float, float, int]]] = {"stream": [], "spool": [], "boto3": []}
        run_child("boto3", args, env, workdir)  # warm-up (page cache)
        for i in range(args.repeat):
            order = list(runs)[i % 3 :] + list(runs)[: i % 3]
            for kind in order:
                runs[kind].append(run_child(kind, args, env, workdir))
    finally:
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()

    mb = size / 1e6
    boto_s = Sample.of([run[0] for run in runs["boto3"]])
    stream_s = Sample.of([run[0] for run in runs["stream"]])
    # The same stream runs without their server-side copy: each run's time up to CompleteMultipartUpload.
    stream_no_copy_s = Sample.of([run[1] for run in runs["stream"]])
    copy_s = Sample.of([run[0] - run[1] for run in runs["stream"]])
    spool_s = Sample.of([run[0] for run in runs["spool"]])
    boto_rate = rate(mb, boto_s)
    baseline = f"boto3 upload_file {boto_rate.show('{:,.0f}', ' MB/s')}; {boto_s.show('{:.2f}', ' s')}"

    def publication(figure: str, seconds: Sample) -> Row:
        mbps = rate(mb, seconds)
        value = f"{mbps.show('{:,.0f}', ' MB/s')}; {seconds.show('{:.2f}', ' s')}"
        return Row(figure, value, baseline, times(mbps.ratio_to(boto_rate)))

    def rss(kind: str) -> Sample:
        return Sample.of([run[2] / 1024 for run in runs[kind]])

    where = args.endpoint or "moto_server on 127.0.0.1 (HTTP)"
    parts = f"{args.part_mib} MiB parts × {args.concurrency}"
    rows = [
        publication(
            f"whole S3 publication, stream (default): multipart ({parts}) to staging + server-side copy "
            "to the final key + staging delete",
            stream_s,
        ),
        publication(
            "whole S3 publication without the server-side copy: the same runs up to CompleteMultipartUpload "
            "(copy timed and subtracted per run)",
            stream_no_copy_s,
        ),
        Row(
            "… the server-side copy + staging delete alone, per run",
            copy_s.show("{:.2f}", " s"),
            "-",
            f"{copy_s.median / stream_s.median:.0%} of the stream publication (median over median)",
        ),
        publication(
            f"whole S3 publication, spool (`TALOS_S3_UPLOAD=spool`, no server-side copy): local unlinked file, "
            f"then multipart ({parts}) to the final key",
            spool_s,
        ),
        Row(
            "peak RSS of the uploading process, stream / spool",
            f"{rss('stream').show('{:.0f}', ' MiB')} / {rss('spool').show('{:.0f}', ' MiB')}",
            f"boto3 upload_file {rss('boto3').show('{:.0f}', ' MiB')}",
            f"{times(rss('stream').ratio_to(rss('boto3')))} / {times(rss('spool').ratio_to(rss('boto3')))}",
        ),
    ]
    title = f"S3 publication of a {size / MIB:.0f} MiB image to {where}: {medians_of(args.repeat)}"
    text = print_table(title, rows)
    append_output(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

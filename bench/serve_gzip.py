"""What gzip-compressing the catalog documents costs `serve/` per catalog change, and what it saves.

A realistic images.json (random sha256 digests, so it compresses like a real one) is rendered for
100 and 1,000 Talos versions × 2 arches × 3 variants. Baseline (same run): `parse_catalog` without
compression, the work `serve/` already does once per catalog change (validate both documents, build
the allow-list); measured: the same with both documents gzip-compressed (what `serve/` does now).
The ratio says how much the compression adds to a change; the sizes what a client downloads.

    .venv/bin/python bench/serve_gzip.py [--versions 100,1000] [--repeat 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog_scale import ARCHES, VARIANTS, record
from bench.common import Row, append_output, print_table
from bench.stats import Sample
from serve import snapshot
from talos_pipeline.core.records import ProductRecord, PublishedFile
from talos_pipeline.core.simplestreams import render_catalog


def random_record(i: int, arch: str, variant: str) -> ProductRecord:
    base = record(i, arch, variant)
    digest = secrets.token_hex(32)

    def file(published: PublishedFile, name: str) -> PublishedFile:
        prefix = published.path.rsplit("/", 1)[0]
        return dataclasses.replace(published, path=f"{prefix}/{name}-{digest}", sha256=secrets.token_hex(32))

    return dataclasses.replace(
        base,
        fingerprint=secrets.token_hex(32),
        metadata=file(base.metadata, "incus"),
        disk=file(base.disk, "disk"),
        unified_sha256=secrets.token_hex(32),
    )


def without_gzip(body: bytes, compresslevel: int = 6, mtime: int = 0) -> bytes:
    return body


def timed(index: bytes, images: bytes, repeat: int, compress: bool) -> Sample:
    seconds = []
    for _ in range(repeat):
        with mock.patch.object(snapshot.gzip, "compress", snapshot.gzip.compress if compress else without_gzip):
            started = time.perf_counter()
            snapshot.parse_catalog(index, images)
            seconds.append(time.perf_counter() - started)
    return Sample.of(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="100,1000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output")
    args = parser.parse_args()
    rows = []
    for count in (int(v) for v in args.versions.split(",")):
        records = [random_record(i, arch, variant) for i in range(count) for arch in ARCHES for variant in VARIANTS]
        index, images = render_catalog(records, VARIANTS)
        baseline = timed(index, images, args.repeat, compress=False)
        measured = timed(index, images, args.repeat, compress=True)
        zipped = len(snapshot.gzip.compress(images, compresslevel=snapshot.GZIP_LEVEL, mtime=0))
        products = len(records)
        rows.append(
            Row(
                f"catalog change, {count} versions ({products} products): parse + gzip vs parse",
                f"{measured.median * 1000:.0f} ms",
                f"{baseline.median * 1000:.0f} ms",
                f"{measured.median / baseline.median:.2f}×",
            )
        )
        rows.append(
            Row(
                f"images.json bytes, {count} versions: gzip vs identity",
                f"{zipped / 2**20:.2f} MiB",
                f"{len(images) / 2**20:.2f} MiB",
                f"{zipped / len(images):.2f}×",
            )
        )
    text = print_table("serve/: gzip of the catalog documents, once per catalog change", rows)
    append_output(args.output, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

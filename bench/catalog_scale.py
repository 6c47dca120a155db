"""How the catalog scales: rendering and rebuilding it at 100 and 1,000 Talos versions × 2 arches
× 3 variants (600 and 6,000 product records), on a directory store and on S3 (moto's server over
real HTTP), with the store requests each rebuild makes.

Baseline (same run): `json.dumps` of the rendered images.json document, the serialisation any
renderer has to pay; the ratio says how much the alias assignment and product rendering add.
Rebuilds: the first (no record cache), an unchanged one (images.json byte-identical, no write),
and one after a new version was published (6 new records: only those are read).

    .venv/bin/python bench/catalog_scale.py [--versions 100,1000] [--repeat 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, append_output, print_table
from bench.s3_upload import MOTO_ENV, start_moto
from bench.stats import Sample
from talos_pipeline.core.catalog import rebuild_catalog
from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.records import ProductRecord, PublishedFile
from talos_pipeline.core.simplestreams import render_catalog
from talos_pipeline.core.stores import DirectoryStore, Store
from talos_pipeline.core.stores.s3 import S3Store
from talos_pipeline.core.variants import VANILLA_SCHEMATIC

ARCHES = ("amd64", "arm64")
VARIANTS = ["nocloud", "metal", "storage"]


def version_tag(i: int) -> str:
    return f"v1.{10 + i // 25}.{i % 25}"


def record(i: int, arch: str, variant: str) -> ProductRecord:
    tag = version_tag(i)
    digest = f"{i:08x}{ARCHES.index(arch):04x}{VARIANTS.index(variant):04x}".ljust(64, "0")
    prefix = f"images/{tag}/{arch}/{variant}/"
    return ProductRecord(
        version=tag,
        arch=arch,
        variant=variant,
        platform="metal" if variant == "metal" else "nocloud",
        schematic=VANILLA_SCHEMATIC,
        serial=f"2025{1 + i // 28 % 12:02d}{1 + i % 28:02d}_12:00",
        published_at=f"2025-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}T12:00:00Z",
        prerelease=False,
        fingerprint=digest,
        metadata=PublishedFile(f"{prefix}incus-{digest}.tar.xz", digest, 412),
        disk=PublishedFile(f"{prefix}disk-{digest}.qcow2", digest, 200_278_016),
        unified_sha256=digest,
        unified_size=200_280_064,
        disk_mode="mirror",
        upstream_path=f"image/{VANILLA_SCHEMATIC}/{tag}/nocloud-{arch}.qcow2",
        signing="none",
    )


def records_for(versions: range) -> list[ProductRecord]:
    return [record(i, arch, variant) for i in versions for arch in ARCHES for variant in VARIANTS]


def time_render(records: list[ProductRecord], repeat: int) -> tuple[Sample, Sample]:
    def render() -> float:
        started = time.perf_counter()
        render_catalog(records, VARIANTS)
        return time.perf_counter() - started

    images = json.loads(render_catalog(records, VARIANTS)[1])

    def serialise() -> float:
        started = time.perf_counter()
        json.dumps(images, sort_keys=True, separators=(",", ":"))
        return time.perf_counter() - started

    return Sample.measure(repeat, render), Sample.measure(repeat, serialise)


class Counting:
    """Counts the store operations a rebuild makes (S3: the HTTP requests boto3 sends)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()
        if isinstance(store, S3Store):
            store.s3.meta.events.register("before-call.s3.*", self._s3_call)
        else:
            for name in ("stat", "read_bytes", "read_with_etag", "put_bytes", "put_if", "list_info", "list_keys"):
                setattr(store, name, self._wrap(name, getattr(store, name)))

    def _s3_call(self, event_name: str, **_: object) -> None:
        self.calls[event_name.rsplit(".", 1)[-1]] += 1

    def _wrap(self, name, method):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted

    def take(self) -> str:
        text = ", ".join(f"{n} {op}" for op, n in sorted(self.calls.items())) or "none"
        total = sum(self.calls.values())
        self.calls.clear()
        return f"{total} ({text})"


def rebuild_rows(label: str, store: Store, versions: int) -> list[Row]:
    counting = Counting(store)
    for r in records_for(range(versions)):
        store.put_bytes(r.image.record_key, r.to_json())
    counting.take()
    rows = []

    def rebuild(what: str) -> bytes:
        started = time.perf_counter()
        result = rebuild_catalog(store, VARIANTS)
        seconds = time.perf_counter() - started
        rows.append(Row(f"{label}, {versions * 6:,} records: {what}", f"{seconds:.2f} s", counting.take(), "-"))
        return result.images

    first = rebuild("first rebuild (no record cache)")
    unchanged = rebuild("unchanged rebuild")
    assert unchanged == first == store.read_bytes(IMAGES_KEY), "an unchanged rebuild must leave images.json as it was"
    for r in records_for(range(versions, versions + 1)):
        store.put_bytes(r.image.record_key, r.to_json())
    counting.take()
    rebuild("after one new version (6 new records)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="100,1000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output")
    args = parser.parse_args()
    counts = [int(v) for v in args.versions.split(",")]
    rows = []
    for versions in counts:
        render, serialise = time_render(records_for(range(versions)), args.repeat)
        rows.append(
            Row(
                f"render {versions:,} versions × 2 arches × 3 variants ({versions * 6:,} records)",
                render.show("{:.3f}", " s"),
                f"json.dumps of the document {serialise.show('{:.3f}', ' s')}",
                f"{render.ratio_to(serialise):.1f}×",
            )
        )
    workdir = Path(tempfile.mkdtemp(prefix="talos-catalog-bench-"))
    os.environ.update(MOTO_ENV)
    moto, url = start_moto(workdir)
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        for versions in counts:
            rows += rebuild_rows("directory store", DirectoryStore(workdir / f"dir-{versions}"), versions)
            s3 = S3Store(f"catalog-bench-{versions}")
            s3.s3.create_bucket(Bucket=s3.bucket)
            rows += rebuild_rows("S3 store (moto)", s3, versions)
    finally:
        moto.terminate()
        moto.wait()
    append_output(args.output, print_table("Catalog at scale (render and rebuild)", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

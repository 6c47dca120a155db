"""A small, streaming writer of real qcow2 (version 3) disk images.

The simulator serves these as the factory's ``*.qcow2`` downloads, so they must be images that
``qemu-img check`` accepts and ``qemu-img info`` describes (format ``qcow2``, the requested virtual
size), while staying cheap to produce and fully deterministic: the same arguments always give a
byte-identical file.

Layout (every piece cluster-aligned, all offsets computed before anything is written)::

    cluster 0            header (104 bytes, then the end-of-extensions marker)
    L1 table             l1_clusters
    refcount table       refcount_table_clusters
    refcount blocks      refcount_block_count (16-bit refcounts, every used cluster = 1)
    L2 tables            one per C/8 data clusters
    data clusters        guest clusters 0..n-1, in order, filled with seeded pseudo-random bytes

The payload is a stream derived from the seed, drawn in 1 MiB chunks so only a few chunks are ever
in memory; a helper thread writes while the next chunk is generated. Two streams exist (`Payload`):

* ``SEEDED_RANDOM``: ``random.Random(int.from_bytes(seed, "big")).randbytes(data_size)`` (chunks
  that are multiples of 4 bytes give the same stream as one call); about 150 MB/s, used for the
  small default images, whose bytes must not change;
* ``AES_CTR``: the AES-256-CTR keystream with the 32-byte seed as key and a zero counter block;
  gigabytes per second, used for production-size images.

Guest offset ``i`` of the disk holds byte ``i`` of that stream for ``i < data_size``; the rest of the
last data cluster is zero; everything above is unallocated (reads as zeros).
"""

from __future__ import annotations

import queue
import random
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["CHUNK_SIZE", "Payload", "Qcow2Layout", "expected_guest_bytes", "plan_qcow2", "write_qcow2"]

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER_LENGTH = 104  # v3 header without the optional compression-type byte
REFCOUNT_ORDER = 4  # 16-bit refcounts (qemu's default)
OFLAG_COPIED = 1 << 63  # "refcount is exactly 1": qemu-img check insists on it for L1/L2 entries
MIB = 1024 * 1024
DEFAULT_MIN_VIRTUAL_SIZE = 64 * MIB
# Random bytes are drawn in chunks of this size (a multiple of 4: the stream does not depend on it).
CHUNK_SIZE = 1 * MIB
# Below this much data, write inline; above it, overlap generation (holds the GIL) with writing.
PIPELINE_THRESHOLD = 8 * MIB


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Qcow2Layout:
    """Every offset and count of an image, computed before writing."""

    cluster_bits: int
    virtual_size: int
    data_size: int
    data_clusters: int
    l1_size: int  # entries
    l1_offset: int
    l1_clusters: int
    refcount_table_offset: int
    refcount_table_clusters: int
    refcount_blocks_offset: int
    refcount_block_count: int
    l2_offset: int
    l2_count: int
    data_offset: int
    total_clusters: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def file_size(self) -> int:
        return self.total_clusters * self.cluster_size


def _default_virtual_size(data_size: int) -> int:
    return max(DEFAULT_MIN_VIRTUAL_SIZE, _ceil_div(data_size, MIB) * MIB)


def plan_qcow2(*, data_size: int, virtual_size: int | None = None, cluster_bits: int = 16) -> Qcow2Layout:
    """Compute the layout of an image; raises ``ValueError`` on impossible arguments."""
    if not isinstance(cluster_bits, int) or not 9 <= cluster_bits <= 21:
        raise ValueError(f"cluster_bits must be an integer between 9 and 21 (qemu's range), got {cluster_bits!r}")
    if not isinstance(data_size, int) or data_size < 0:
        raise ValueError(f"data_size must be a non-negative integer, got {data_size!r}")
    cluster = 1 << cluster_bits
    data_clusters = _ceil_div(data_size, cluster)
    if virtual_size is None:
        virtual_size = _default_virtual_size(data_size)
    if not isinstance(virtual_size, int) or virtual_size <= 0 or virtual_size % 512:
        raise ValueError(f"virtual_size must be a positive multiple of 512, got {virtual_size!r}")
    if virtual_size < data_clusters * cluster:
        raise ValueError(
            f"virtual_size {virtual_size} is smaller than the data it must hold "
            f"({data_clusters} clusters of {cluster} bytes); pass a larger virtual_size or leave it out"
        )
    l2_entries = cluster // 8
    guest_clusters = _ceil_div(virtual_size, cluster)
    l1_size = _ceil_div(guest_clusters, l2_entries)
    l1_clusters = max(1, _ceil_div(l1_size * 8, cluster))
    l2_count = _ceil_div(data_clusters, l2_entries)
    refcounts_per_block = cluster * 8 // (1 << REFCOUNT_ORDER)

    # Refcount blocks must count themselves and the refcount table: iterate to the fixed point.
    rb_count, rt_clusters = 1, 1
    while True:
        total = 1 + l1_clusters + rt_clusters + rb_count + l2_count + data_clusters
        need_rb = _ceil_div(total, refcounts_per_block)
        need_rt = max(1, _ceil_div(need_rb * 8, cluster))
        if need_rb == rb_count and need_rt == rt_clusters:
            break
        rb_count, rt_clusters = max(rb_count, need_rb), max(rt_clusters, need_rt)

    l1_offset = cluster
    rt_offset = l1_offset + l1_clusters * cluster
    rb_offset = rt_offset + rt_clusters * cluster
    l2_offset = rb_offset + rb_count * cluster
    data_offset = l2_offset + l2_count * cluster
    return Qcow2Layout(
        cluster_bits=cluster_bits,
        virtual_size=virtual_size,
        data_size=data_size,
        data_clusters=data_clusters,
        l1_size=l1_size,
        l1_offset=l1_offset,
        l1_clusters=l1_clusters,
        refcount_table_offset=rt_offset,
        refcount_table_clusters=rt_clusters,
        refcount_blocks_offset=rb_offset,
        refcount_block_count=rb_count,
        l2_offset=l2_offset,
        l2_count=l2_count,
        data_offset=data_offset,
        total_clusters=total,
    )


def _header(layout: Qcow2Layout) -> bytes:
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        MAGIC,
        VERSION,
        0,  # backing_file_offset
        0,  # backing_file_size
        layout.cluster_bits,
        layout.virtual_size,
        0,  # crypt_method
        layout.l1_size,
        layout.l1_offset,
        layout.refcount_table_offset,
        layout.refcount_table_clusters,
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        REFCOUNT_ORDER,
        HEADER_LENGTH,
    )
    assert len(header) == HEADER_LENGTH
    # Header extensions follow; a zero type/length pair ends them. The cluster's zero padding
    # already is that marker, written explicitly for clarity.
    header += struct.pack(">II", 0, 0)
    return header.ljust(layout.cluster_size, b"\0")


def _write_padded(out: BinaryIO, data: bytes, size: int) -> int:
    out.write(data)
    if size > len(data):
        out.write(bytes(size - len(data)))
    return size


class Payload(StrEnum):
    SEEDED_RANDOM = "seeded-random"
    AES_CTR = "aes-ctr"


def _payload_chunks(payload: Payload, seed: bytes, size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``payload``'s stream for ``seed``, in chunks of at most `CHUNK_SIZE`."""
    if not isinstance(seed, (bytes, bytearray)) or not seed:
        raise ValueError("seed must be non-empty bytes")
    if payload is Payload.AES_CTR:
        if len(seed) != 32:
            raise ValueError(f"the aes-ctr payload needs a 32-byte seed (an AES-256 key), got {len(seed)} bytes")
        keystream = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(16))).encryptor()
        zeros = memoryview(bytes(CHUNK_SIZE))

        def encrypt_zeros(n: int) -> bytes:
            return keystream.update(zeros[:n])

        return _chunks(encrypt_zeros, size)
    return _chunks(random.Random(int.from_bytes(seed, "big")).randbytes, size)


def _chunks(next_chunk: Callable[[int], bytes], size: int) -> Iterator[bytes]:
    remaining = size
    while remaining:
        n = min(CHUNK_SIZE, remaining)
        yield next_chunk(n)
        remaining -= n


def write_qcow2(
    out: BinaryIO,
    *,
    data_size: int,
    seed: bytes,
    virtual_size: int | None = None,
    cluster_bits: int = 16,
    payload: Payload = Payload.SEEDED_RANDOM,
) -> int:
    """Write a qcow2 v3 image to ``out`` (a binary file object at position 0); return its size.

    ``data_size`` bytes of ``payload``'s stream for ``seed`` fill the first guest clusters (rounded
    up to whole clusters, zero-padded). ``virtual_size`` defaults to ``max(64 MiB, data_size rounded
    up to a MiB)``. Same arguments, same bytes.
    """
    layout = plan_qcow2(data_size=data_size, virtual_size=virtual_size, cluster_bits=cluster_bits)
    chunks = _payload_chunks(Payload(payload), seed, layout.data_size)
    cluster = layout.cluster_size
    l2_entries = cluster // 8
    written = 0

    written += _write_padded(out, _header(layout), cluster)

    # L1: entry j points at L2 table j (only tables that map data exist).
    l1 = struct.pack(
        f">{layout.l2_count}Q", *((layout.l2_offset + j * cluster) | OFLAG_COPIED for j in range(layout.l2_count))
    )
    written += _write_padded(out, l1, layout.l1_clusters * cluster)

    # Refcount table: entry k points at refcount block k.
    rt = struct.pack(
        f">{layout.refcount_block_count}Q",
        *(layout.refcount_blocks_offset + k * cluster for k in range(layout.refcount_block_count)),
    )
    written += _write_padded(out, rt, layout.refcount_table_clusters * cluster)

    # Refcount blocks: every cluster of the file is used exactly once.
    per_block = cluster // 2
    remaining = layout.total_clusters
    for _ in range(layout.refcount_block_count):
        used = min(per_block, remaining)
        remaining -= used
        written += _write_padded(out, b"\x00\x01" * used, cluster)

    # L2 tables: guest cluster i -> data cluster i.
    for j in range(layout.l2_count):
        first = j * l2_entries
        count = min(l2_entries, layout.data_clusters - first)
        base = layout.data_offset + first * cluster
        table = struct.pack(f">{count}Q", *((base + i * cluster) | OFLAG_COPIED for i in range(count)))
        written += _write_padded(out, table, cluster)

    # Data: the seeded stream in chunks, then zeros to the end of the last cluster.
    written += _write_stream(out, chunks, layout.data_size)
    tail = layout.data_clusters * cluster - layout.data_size
    if tail:
        out.write(bytes(tail))
        written += tail

    assert written == layout.file_size, (written, layout.file_size)
    return written


def _write_stream(out: BinaryIO, chunks: Iterator[bytes], size: int) -> int:
    if size < PIPELINE_THRESHOLD:
        for chunk in chunks:
            out.write(chunk)
        return size

    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
    errors: list[BaseException] = []

    def writer() -> None:
        while (chunk := pending.get()) is not None:
            if not errors:
                try:
                    out.write(chunk)
                except BaseException as exc:  # handed to the caller below
                    errors.append(exc)

    thread = threading.Thread(target=writer, name="qcow2-writer", daemon=True)
    thread.start()
    try:
        for chunk in chunks:
            if errors:
                break
            pending.put(chunk)
    finally:
        pending.put(None)
        thread.join()
    if errors:
        raise errors[0]
    return size


def expected_guest_bytes(seed: bytes, data_size: int, payload: Payload = Payload.SEEDED_RANDOM) -> bytes:
    """The first ``data_size`` guest bytes of an image written with ``seed`` (for tests; in memory)."""
    return b"".join(_payload_chunks(Payload(payload), seed, data_size))

"""The disk images the simulated factory serves: generated once per image generation, kept on disk.

An image is named by `ImageKey` (schematic, version, platform, arch). Its bytes depend on the key
and on its *generation*: `ImageCache.drift` bumps it, as when the real factory rebuilds an image
and the same URL starts serving other bytes (docs/talos-upstream.md, "Byte stability"). Files are
written to a temporary name and renamed, so concurrent first requests generate once and a reused
``cache_dir`` never serves a partial file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from .qcow2 import Payload, write_qcow2

__all__ = [
    "DEFAULT_RECIPE",
    "PRODUCTION_RECIPE",
    "VANILLA_SIZES",
    "FixedSize",
    "ImageCache",
    "ImageFile",
    "ImageKey",
    "ImageRecipe",
    "ImageSizes",
    "RealisticSizes",
    "normalize_version",
]

MIB = 1024 * 1024
#: vanilla qcow2 sizes on disk for Talos 1.10-1.13 (docs/talos-upstream.md, "Disk images")
VANILLA_SIZES = {"amd64": 191 * MIB, "arm64": 86 * MIB}
#: how far one version's image strays from `VANILLA_SIZES` (either way)
VERSION_SPREAD = 0.03


def normalize_version(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"


class ImageKey(NamedTuple):
    schematic: str
    version: str  # always with the leading "v"
    platform: str
    arch: str

    @property
    def filename(self) -> str:
        return f"{self.platform}-{self.arch}.qcow2"


class ImageFile(NamedTuple):
    key: ImageKey
    path: Path
    size: int
    token: str  # names the file under /cdn/


@dataclass(frozen=True)
class ImageRecipe:
    """How image files are laid out; ``tag`` is part of every file name, so a change never reuses old files."""

    tag: str
    cluster_bits: int = 16
    min_virtual_size: int | None = None  # None: qcow2.py's default
    payload: Payload = Payload.SEEDED_RANDOM

    def virtual_size(self, data_size: int) -> int | None:
        if self.min_virtual_size is None:
            return None
        return max(self.min_virtual_size, -(-data_size // MIB) * MIB)


DEFAULT_RECIPE = ImageRecipe(tag="q1")
# 8 KiB clusters and a virtual disk of at least 1246 MiB (the Talos imager's smallest raw disk), like
# the factory's images; the AES-CTR stream makes 191 MiB cost a fraction of a second.
PRODUCTION_RECIPE = ImageRecipe(tag="p1", cluster_bits=13, min_virtual_size=1246 * MIB, payload=Payload.AES_CTR)


class ImageSizes(Protocol):
    def data_size(self, key: ImageKey, extensions: int) -> int:
        """Bytes of content in the image (the qcow2 file adds its metadata); ``extensions``: bytes they add."""
        ...


@dataclass(frozen=True)
class FixedSize:
    """Every image the same size, whatever its schematic."""

    size: int

    def data_size(self, key: ImageKey, extensions: int) -> int:
        return self.size


@dataclass(frozen=True)
class RealisticSizes:
    """`VANILLA_SIZES` per arch, a few percent apart per version, plus extensions, times ``scale``.

    ``scale`` 0.01 makes a vanilla amd64 image about 2 MiB.
    """

    scale: float = 1.0

    def data_size(self, key: ImageKey, extensions: int) -> int:
        digest = hashlib.sha256(f"{key.version}/{key.arch}".encode()).digest()
        spread = (int.from_bytes(digest[:4], "big") / 0xFFFFFFFF * 2 - 1) * VERSION_SPREAD
        return max(1, round((VANILLA_SIZES[key.arch] * (1 + spread) + extensions) * self.scale))


def image_seed(key: ImageKey, generation: int) -> bytes:
    return hashlib.sha256(f"{key.schematic}/{key.version}/{key.platform}-{key.arch}/{generation}".encode()).digest()


class ImageCache:
    def __init__(self, cache_dir: str | os.PathLike[str] | None, recipe: ImageRecipe = DEFAULT_RECIPE) -> None:
        self.recipe = recipe
        self._given_dir = Path(cache_dir) if cache_dir is not None else None
        self._temp_dir: Path | None = None
        self._lock = threading.Lock()
        self._generations: dict[ImageKey, int] = {}
        self._file_locks: dict[str, threading.Lock] = {}
        self._cdn: dict[str, ImageFile] = {}

    @property
    def cache_dir(self) -> Path:
        """The given directory (kept), or a temporary one created on first use and removed by `close`."""
        with self._lock:
            if self._given_dir is not None:
                self._given_dir.mkdir(parents=True, exist_ok=True)
                return self._given_dir
            if self._temp_dir is None:
                self._temp_dir = Path(tempfile.mkdtemp(prefix="talos-upstream-sim-"))
            return self._temp_dir

    def generation(self, key: ImageKey) -> int:
        with self._lock:
            return self._generations.get(key, 0)

    def drift(self, key: ImageKey) -> int:
        """Later requests for ``key`` get other bytes of the same size; returns the new generation."""
        with self._lock:
            self._generations[key] = self._generations.get(key, 0) + 1
            return self._generations[key]

    def seed(self, key: ImageKey, generation: int | None = None) -> bytes:
        return image_seed(key, self.generation(key) if generation is None else generation)

    def ensure(self, key: ImageKey, data_size: int) -> ImageFile:
        """The current generation's file for ``key`` with ``data_size`` bytes of content, generated if needed."""
        seed = self.seed(key)
        name = f"{self.recipe.tag}-{seed.hex()}-{data_size}.qcow2"
        with self._lock:
            lock = self._file_locks.setdefault(name, threading.Lock())
        path = self.cache_dir / name
        with lock:
            if not path.exists():
                tmp = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        write_qcow2(
                            f,
                            data_size=data_size,
                            seed=seed,
                            virtual_size=self.recipe.virtual_size(data_size),
                            cluster_bits=self.recipe.cluster_bits,
                            payload=self.recipe.payload,
                        )
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        image = ImageFile(key, path, path.stat().st_size, hashlib.sha256(name.encode()).hexdigest()[:32])
        with self._lock:
            self._cdn[image.token] = image
        return image

    def cdn_file(self, token: str) -> ImageFile | None:
        """The file a /cdn/<token>/ URL handed out earlier names, if any."""
        with self._lock:
            return self._cdn.get(token)

    def close(self) -> None:
        """Forget CDN tokens; remove the cache directory if it was a temporary one."""
        with self._lock:
            temp, self._temp_dir = self._temp_dir, None
            self._cdn.clear()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

"""What a 404 of direct URL import says: what exists instead, so the user can fix the URL."""

from __future__ import annotations

from talos_pipeline.core.variants import ARCHES

from .snapshot import Snapshot


def explain_missing(snapshot: Snapshot, name: list[str], arch: str) -> str:
    arches = snapshot.arches()
    if arch not in arches:
        known = ", ".join(arches) or "none yet"
        hint = f" ({arch!r} is not an architecture: use {' or '.join(ARCHES)})" if arch not in ARCHES else ""
        return f"nothing is published for architecture {arch!r}{hint}; published architectures: {known}"
    versions = snapshot.versions_for(arch)
    version = name[0]
    if (version, arch) not in {(v, a) for (v, _var, a) in snapshot.by_triple}:
        return (
            f"Talos {version} is not published for {arch}. Published versions for {arch} (newest first): "
            f"{', '.join(versions)}. Also: latest, vMAJOR.MINOR (e.g. /talos/latest/{arch})"
        )
    variants = snapshot.variants_for(version, arch)
    return (
        f"variant {name[-1]!r} of Talos {version} is not published for {arch}; "
        f"published variants: {', '.join(variants)} (e.g. /talos/{version}/{variants[0]}/{arch})"
    )

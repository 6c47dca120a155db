"""The pipeline's side of a request: accepting it into the build, concluding it from the runs.

`accept` turns a queued request into a building one: the schematic is registered with the factory
(idempotent), the versions it is built for are chosen (the newest `TALOS_SELF_SERVICE_VERSIONS`
stable versions of the catalog that offer every extension it asks for), and its variant joins the
self-service set the pipeline builds (`book.VARIANTS_KEY`). `conclude` turns a building request
into a published one (with the versions and aliases the catalog now has for it) or a failed one
(with the runs' own error messages), once every run has ended. `follow` says which self-service
variants a new release is published with. The Dagster sensors that call these only add the runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import InputError, UpstreamError
from ..images import IMAGES_KEY
from ..schematics import VariantResolver, save_schematic_facts, unavailable_extensions
from ..simplestreams import CatalogFormatError, CatalogImage, read_images
from ..stores import ObjectMissing, Store
from ..upstream import FactoryClient
from ..variants import Variant
from ..versions import TalosVersion, parse_timestamp
from .book import (
    SelfServiceRequest,
    SelfServiceVariant,
    Status,
    add_variant,
    read_variant_set,
    target_versions,
    update_request,
)

Log = Callable[[str], None]
PATIENCE_SECONDS = 3600


def catalog_images(store: Store) -> list[CatalogImage]:
    """The images the catalog in the store names (none when there is no readable catalog)."""
    try:
        return read_images(store.read_bytes(IMAGES_KEY)).images
    except (ObjectMissing, CatalogFormatError):
        return []


@dataclass(frozen=True)
class Pickup:
    """What accepting requests needs: the store, the factory, the configuration."""

    store: Store
    factory: FactoryClient
    configured: list[Variant]
    arches: list[str]
    versions: int

    def fail(self, request: SelfServiceRequest, reason: str) -> SelfServiceRequest | None:
        return update_request(
            self.store, request.id, lambda r: r.moved(Status.FAILED, reason=reason) if r.pending else None
        )

    def accept(self, request: SelfServiceRequest, catalog: list[CatalogImage]) -> SelfServiceRequest | None:
        """Queued → building (or failed, with the reason). When the factory cannot answer, the
        `UpstreamError` is raised and the request stays queued for the next tick, for up to
        `PATIENCE_SECONDS`; then it fails with that error."""
        spec = request.spec
        if spec.name in {v.name for v in self.configured}:
            return self.fail(request, f"name {spec.name!r} is now a configured variant of this server")
        targets = target_versions({image.version for image in catalog}, self.versions)
        if not targets:
            return self.fail(request, "no stable Talos version is published here yet to build it for")
        try:
            schematic_id = self.factory.register_schematic(spec.schematic_bytes())
            resolver = VariantResolver(self.factory)
            offered = {version: resolver.offered(version) for version in targets}
        except InputError as exc:
            return self.fail(request, str(exc))
        except UpstreamError as exc:
            if time.time() - parse_timestamp(request.created_at).timestamp() < PATIENCE_SECONDS:
                raise
            return self.fail(request, f"{exc} (the Image Factory has not answered for over an hour)")
        versions, skipped = [], []
        for version in targets:
            missing = unavailable_extensions(spec.extensions, offered[version])
            if missing:
                skipped.append(f"{version} ({', '.join(missing)})")
            else:
                versions.append(version)
        if not versions:
            return self.fail(request, f"the Image Factory does not offer every extension for {', '.join(skipped)}")
        wanted = SelfServiceVariant(
            spec.name, spec.platform, schematic_id, spec.extensions, spec.kernel_args, request.id
        )
        held = add_variant(self.store, wanted)
        if (held.platform, held.schematic_id) != (wanted.platform, wanted.schematic_id):
            return self.fail(request, f"name {spec.name!r} was taken by request {held.request_id} meanwhile")
        save_schematic_facts(self.store, schematic_id, spec.extensions)
        note = f"not built for {', '.join(skipped)}: extensions missing there" if skipped else None
        return update_request(
            self.store,
            request.id,
            lambda r: r.moved(
                Status.BUILDING, schematic_id=schematic_id, versions=tuple(versions), arches=tuple(self.arches),
                reason=note,
            ) if r.status is Status.QUEUED else None,
        )  # fmt: skip


def images_of(request: SelfServiceRequest) -> list[tuple[str, str]]:
    """The (version, arch) runs a building request waits for."""
    return [(version, arch) for version in request.versions for arch in request.arches]


def conclude(
    store: Store,
    request: SelfServiceRequest,
    outcomes: Mapping[tuple[str, str], str | None],
    catalog: list[CatalogImage],
) -> SelfServiceRequest | None:
    """Building → published or failed once every run has ended (`outcomes`: (version, arch) →
    None when its run succeeded, else its error). Published waits until the catalog names the
    images; None: nothing to record yet."""
    if set(outcomes) != set(images_of(request)):
        return None
    failures = {key: error for key, error in outcomes.items() if error is not None}
    if len(failures) == len(outcomes):
        reason = "; ".join(f"{v} {a}: {error}" for (v, a), error in sorted(failures.items()))
        return update_request(store, request.id, lambda r: r.moved(Status.FAILED, reason=reason) if r.pending else None)
    mine = [image for image in catalog if image.variant == request.name]
    listed = {(image.version, image.arch) for image in mine}
    if not all(key in listed for key in outcomes if key not in failures):
        return None
    versions = sorted({image.version for image in mine}, key=TalosVersion.parse, reverse=True)
    aliases = sorted({alias for image in mine for alias in image.aliases}, key=lambda a: (a.count("/"), a))
    partial = "; ".join(f"{v} {a} failed: {error}" for (v, a), error in sorted(failures.items()))
    return update_request(
        store,
        request.id,
        lambda r: (
            r.moved(Status.PUBLISHED, versions=tuple(versions), aliases=tuple(aliases), reason=partial or r.reason)
            if r.pending
            else None
        ),
    )


def follow(store: Store, factory: FactoryClient, versions: Iterable[str], log: Log) -> dict[str, list[str]]:
    """Version → the self-service variants to publish it with (those whose extensions it offers);
    stable versions only, like the requests themselves."""
    variants = read_variant_set(store)
    if not variants:
        return {}
    resolver = VariantResolver(factory)
    plan = {}
    for version in versions:
        if TalosVersion.parse(version).is_prerelease:
            continue
        names = []
        for variant in variants.values():
            missing = unavailable_extensions(variant.extensions, resolver.offered(version))
            if missing:
                log(f"self-service variant {variant.name!r} is not published for {version}: lacks {', '.join(missing)}")
            else:
                names.append(variant.name)
        if names:
            plan[version] = sorted(names)
    return plan


def self_service_variants(store: Store, names: Iterable[str]) -> list[Variant]:
    """The self-service variants among `names`, as variants a run can build."""
    variants = read_variant_set(store)
    return [variants[name].variant() for name in names if name in variants]

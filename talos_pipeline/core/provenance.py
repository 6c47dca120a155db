"""Provenance attestations: what each published file was made from, as an in-toto statement.

For every metadata tarball and disk the signing step writes an in-toto Statement v1 with a SLSA
Provenance v1 predicate (`https://slsa.dev/provenance/v1`), signed as a DSSE envelope in a
Sigstore bundle by the same signer as the files, next to the file as
`<file>.intoto.sigstore.json`. It names the file's sha256 as the subject; the Talos release
(tag, `published_at`), the Image Factory URL the disk came from and its sha256, the schematic
(id, and the document for custom schematics), the factory's `/versions` answer the release was
checked against, the disk mode; and the builder (the GitHub Actions workflow and run, or the
host and the talos-pipeline version). Field by field: docs/provenance.md.

A statement holds no wall-clock time, and an existing attestation whose facts (`Provenance`)
still hold is kept as it is (`same_facts`), like the bundles: republishing an unchanged image
rewrites nothing. `talos-pipeline verify --provenance` reads statements back with `read_statement`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from .errors import SigningError
from .images import ImageRef
from .releases import ReleaseFacts

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:talos-pipeline:buildtype:incus-image:v1"
"""What the build is (docs/provenance.md describes it and the parameters below)."""
RELEASE = "talos-release"
DISK = "image-factory-disk"
VERSIONS = "image-factory-versions"
SCHEMATIC = "image-factory-schematic"
FILES = ("metadata", "disk")


@dataclass(frozen=True)
class Builder:
    """Who produced an attestation: `runDetails.builder.id`, its version, the run."""

    id: str
    version: str
    invocation: str | None = None

    @classmethod
    def current(cls, environ: Mapping[str, str] = os.environ) -> Builder:
        """In GitHub Actions the workflow (`GITHUB_WORKFLOW_REF`, the identity Fulcio certifies)
        and the run's URL; elsewhere this host."""
        ours = _talos_pipeline_version()
        server, repository, run = (environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
        if environ.get("GITHUB_ACTIONS") == "true" and server and repository and run:
            run_url = f"{server.rstrip('/')}/{repository}/actions/runs/{run}"
            workflow = environ.get("GITHUB_WORKFLOW_REF")
            return cls(f"{server.rstrip('/')}/{workflow}" if workflow else run_url, ours, run_url)
        return cls(f"urn:talos-pipeline:host:{socket.gethostname()}", ours)


def _talos_pipeline_version() -> str:
    try:
        return package_version("talos-pipeline")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """The facts an attestation states about one file; equal facts mean the attestation can stay."""

    file: str
    """`metadata` or `disk`."""
    path: str
    sha256: str
    version: str
    arch: str
    variant: str
    platform: str
    schematic: str
    disk_mode: str
    upstream_url: str
    disk_sha256: str
    published_at: str
    schematic_sha256: str | None


@dataclass(frozen=True)
class Evidence:
    """What the build checked or fetched besides the disk: kept as it was when an attestation stays."""

    factory_versions_url: str
    factory_versions: tuple[str, ...]
    schematic_document: str | None


def statement(facts: Provenance, evidence: Evidence, release: ReleaseFacts, builder: Builder) -> bytes:
    """The in-toto statement for one file: compact, key-sorted JSON with no clock in it."""
    dependencies: list[dict[str, Any]] = [
        {
            "name": RELEASE,
            "uri": release.html_url or f"https://github.com/siderolabs/talos/releases/tag/{facts.version}",
            "annotations": {"tag": facts.version, "publishedAt": facts.published_at, "prerelease": release.prerelease},
        },
        {"name": DISK, "uri": facts.upstream_url, "digest": {"sha256": facts.disk_sha256}},
    ]
    if evidence.factory_versions_url:
        dependencies.append(
            _content(
                VERSIONS, evidence.factory_versions_url, "application/json", versions_bytes(evidence.factory_versions)
            )
        )
    if evidence.schematic_document is not None:
        factory = evidence.factory_versions_url.removesuffix("/versions")
        dependencies.append(
            _content(
                SCHEMATIC,
                f"{factory}/schematics/{facts.schematic}",
                "application/yaml",
                evidence.schematic_document.encode(),
            )
        )
    run: dict[str, Any] = {"builder": {"id": builder.id, "version": {"talos-pipeline": builder.version}}}
    if builder.invocation:
        run["metadata"] = {"invocationId": builder.invocation}
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": facts.path.rsplit("/", 1)[-1], "digest": {"sha256": facts.sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external_parameters(facts),
                "resolvedDependencies": dependencies,
            },
            "runDetails": run,
        },
    }
    return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()


def external_parameters(facts: Provenance) -> dict[str, str]:
    """`buildDefinition.externalParameters`: what the build was asked to make."""
    return {
        "file": facts.file,
        "path": facts.path,
        "talosVersion": facts.version,
        "arch": facts.arch,
        "variant": facts.variant,
        "platform": facts.platform,
        "schematic": facts.schematic,
        "diskMode": facts.disk_mode,
    }


def versions_bytes(versions: tuple[str, ...]) -> bytes:
    """The factory's `/versions` list as recorded: compact JSON, in the factory's order."""
    return json.dumps(list(versions), separators=(",", ":")).encode()


def _content(name: str, uri: str, media_type: str, data: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "uri": uri,
        "mediaType": media_type,
        "digest": {"sha256": hashlib.sha256(data).hexdigest()},
        "content": base64.b64encode(data).decode(),
    }


@dataclass(frozen=True)
class Statement:
    """A statement read back: its facts, what it names as evidence, who built it."""

    facts: Provenance
    evidence: Evidence
    builder: Builder


def read_statement(data: bytes) -> Statement:
    """Parse a statement this project wrote; `SigningError` saying what is wrong otherwise."""
    try:
        body = json.loads(data)
        if body.get("_type") != STATEMENT_TYPE or body.get("predicateType") != PREDICATE_TYPE:
            raise ValueError(f"not an in-toto v1 statement with a {PREDICATE_TYPE} predicate")
        definition = body["predicate"]["buildDefinition"]
        if definition.get("buildType") != BUILD_TYPE:
            raise ValueError(f"buildType {definition.get('buildType')!r} is not {BUILD_TYPE}")
        parameters = definition["externalParameters"]
        dependencies = {d["name"]: d for d in definition.get("resolvedDependencies", [])}
        (subject,) = body["subject"]
        release, disk = dependencies[RELEASE], dependencies[DISK]
        versions = _decoded(dependencies.get(VERSIONS))
        schematic = _decoded(dependencies.get(SCHEMATIC))
        facts = Provenance(
            file=str(parameters["file"]),
            path=str(parameters["path"]),
            sha256=str(subject["digest"]["sha256"]),
            version=str(parameters["talosVersion"]),
            arch=str(parameters["arch"]),
            variant=str(parameters["variant"]),
            platform=str(parameters["platform"]),
            schematic=str(parameters["schematic"]),
            disk_mode=str(parameters["diskMode"]),
            upstream_url=str(disk["uri"]),
            disk_sha256=str(disk["digest"]["sha256"]),
            published_at=str(release["annotations"]["publishedAt"]),
            schematic_sha256=None if schematic is None else hashlib.sha256(schematic).hexdigest(),
        )
        evidence = Evidence(
            factory_versions_url=str((dependencies.get(VERSIONS) or {}).get("uri", "")),
            factory_versions=tuple(json.loads(versions)) if versions is not None else (),
            schematic_document=None if schematic is None else schematic.decode(),
        )
        run = body["predicate"]["runDetails"]
        builder = Builder(
            id=str(run["builder"]["id"]),
            version=str((run["builder"].get("version") or {}).get("talos-pipeline", "")),
            invocation=(run.get("metadata") or {}).get("invocationId"),
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise SigningError(f"the attestation's statement is not the provenance this pipeline writes: {exc!r}") from None
    return Statement(facts, evidence, builder)


def _decoded(dependency: dict[str, Any] | None) -> bytes | None:
    """A dependency's recorded content, refused when it does not match its own digest."""
    if dependency is None:
        return None
    data = base64.b64decode(dependency["content"], validate=True)
    if hashlib.sha256(data).hexdigest() != dependency["digest"]["sha256"]:
        raise ValueError(f"{dependency['name']}: the recorded content does not match its sha256")
    return data


def image_provenance(
    image: ImageRef,
    release: ReleaseFacts,
    file: str,
    path: str,
    sha256: str,
    *,
    disk_sha256: str,
    upstream_url: str,
    disk_mode: str,
    schematic_document: str | None,
) -> Provenance:
    """The facts of one file of `image` (`file` is `metadata` or `disk`)."""
    return Provenance(
        file=file,
        path=path,
        sha256=sha256,
        version=image.version,
        arch=image.arch,
        variant=image.variant.name,
        platform=image.variant.platform,
        schematic=image.variant.schematic,
        disk_mode=disk_mode,
        upstream_url=upstream_url,
        disk_sha256=disk_sha256,
        published_at=release.published_at,
        schematic_sha256=None
        if schematic_document is None
        else hashlib.sha256(schematic_document.encode()).hexdigest(),
    )

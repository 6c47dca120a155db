"""Whether a well-formed request is accepted: its name, its token's pending requests, its extensions.

`admit` needs only what the store says (the requests and the self-service variants), so `serve/`
runs it before it asks the factory anything: a request refused here costs the factory nothing.
`check_offered` then compares the extensions with the factory's lists for the versions the request
would be built for (`book.target_versions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..schematics import unavailable_extensions
from .book import SelfServiceRequest, SelfServiceVariant, Status
from .spec import RequestRejected, RequestSpec


@dataclass(frozen=True)
class Admission:
    """The rules besides the request's shape: names the configuration owns, pending requests per token."""

    configured: frozenset[str]
    pending_limit: int

    def admit(
        self,
        spec: RequestSpec,
        requester: str,
        requests: Iterable[SelfServiceRequest],
        variants: Mapping[str, SelfServiceVariant],
    ) -> SelfServiceRequest | None:
        """The live request for the same image, to answer with instead of a new one; None when a new
        request may be created. Raises `RequestRejected` (409 name taken, 429 too many pending)."""
        if spec.name in self.configured:
            raise RequestRejected(
                409, f"name {spec.name!r} is a variant this server is configured with; choose another name"
            )
        live = [r for r in requests if r.status is not Status.FAILED]
        same = [r for r in live if r.spec.same_image(spec)]
        if same:
            return next((r for r in same if r.name == spec.name), same[0])
        holder = variants.get(spec.name)
        if holder is not None and not _same_variant(holder, spec):
            raise RequestRejected(409, f"name {spec.name!r} is taken by another self-service variant; choose another")
        owner = next((r for r in live if r.name == spec.name), None)
        if owner is not None:
            raise RequestRejected(
                409, f"name {spec.name!r} is taken by request {owner.id} ({owner.status}); choose another name"
            )
        pending = [r for r in live if r.requester == requester and r.pending]
        if len(pending) >= self.pending_limit:
            raise RequestRejected(
                429,
                f"this token has {len(pending)} requests queued or building (at most {self.pending_limit}); "
                "wait until one is published or failed",
            )
        return None


def _same_variant(variant: SelfServiceVariant, spec: RequestSpec) -> bool:
    return (variant.platform, variant.extensions, variant.kernel_args) == (
        spec.platform,
        spec.extensions,
        spec.kernel_args,
    )


def check_offered(spec: RequestSpec, offered: Mapping[str, Iterable[str]]) -> None:
    """Every extension of `spec` is offered for every version in `offered` (version → names);
    else 422 naming the extension and the versions that lack it."""
    lists = {version: list(names) for version, names in offered.items()}
    problems = []
    for extension in spec.extensions:
        lacking = [v for v, names in lists.items() if unavailable_extensions([extension], names)]
        if not lacking:
            continue
        if len(lacking) == len(lists):
            problems.append(
                f"{extension!r} is not an official extension the Image Factory offers for {', '.join(lacking)}"
            )
        else:
            problems.append(f"{extension!r} is not offered for Talos {', '.join(lacking)}")
    if problems:
        targets = ", ".join(lists)
        raise RequestRejected(
            422, "; ".join(problems) + f" (this request would be built for {targets}); take it out of the request"
        )

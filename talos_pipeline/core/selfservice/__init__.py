"""Self-service requests: users ask `serve/` for a variant with official extensions, the pipeline
builds it (docs/self-service.md).

`spec.py` checks what a request may ask for; `book.py` keeps requests and the self-service
variants in the store; `admission.py` decides whether a request is accepted; `pickup.py` is the
pipeline's side (accept into the build, conclude from the runs, follow new releases).
"""

from __future__ import annotations

from .admission import Admission, check_offered
from .book import (
    PENDING,
    REQUESTS_PREFIX,
    VARIANTS_KEY,
    RequestBook,
    SelfServiceRequest,
    SelfServiceVariant,
    Status,
    create_request,
    read_request,
    read_variant_set,
    target_versions,
    token_fingerprint,
)
from .pickup import Pickup, catalog_images, conclude, follow, images_of, self_service_variants
from .spec import MAX_BODY_BYTES, RequestRejected, RequestSpec, parse_form_request, parse_json_request

__all__ = [
    "MAX_BODY_BYTES",
    "PENDING",
    "REQUESTS_PREFIX",
    "VARIANTS_KEY",
    "Admission",
    "Pickup",
    "RequestBook",
    "RequestRejected",
    "RequestSpec",
    "SelfServiceRequest",
    "SelfServiceVariant",
    "Status",
    "catalog_images",
    "check_offered",
    "conclude",
    "create_request",
    "follow",
    "images_of",
    "parse_form_request",
    "parse_json_request",
    "read_request",
    "read_variant_set",
    "self_service_variants",
    "target_versions",
    "token_fingerprint",
]

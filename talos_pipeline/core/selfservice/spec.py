"""What a self-service request may ask for, checked before anything else sees it.

A request names a variant (`name`), a platform (`nocloud` or `metal`) and a schematic that may ask
for official system extensions and extra kernel arguments, nothing else: no overlays, no Secure
Boot, no `meta` values (docs/self-service.md). It comes as JSON (the contract in DESIGN.md, the
schematic being the factory's own document, docs/talos-upstream.md "Schematics") or as the
fields of the page's HTML form. Either way it becomes a `RequestSpec` whose schematic is in one
canonical form (extensions sorted and unique), so two requests for the same image compare equal
and the factory is asked to register exactly one document for it.

Every rule here is local: nothing in this module talks to the factory or the store.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..variants import ARCHES, INCUS_ARCHITECTURE, PLATFORMS

MAX_BODY_BYTES = 16 * 1024
MAX_EXTENSIONS = 16
MAX_KERNEL_ARGS = 16
MAX_KERNEL_ARG_LENGTH = 128

NAME_RULE = "1 to 32 of a-z, 0-9 and '-', starting with a letter"
_NAME = re.compile(r"^[a-z0-9-]{1,32}$")
# Names an alias or an Incus image name would confuse with something else (`talos/v1.12.0/amd64`
# is what Incus makes of the alias `talos/v1.12.0` for amd64).
RESERVED_NAMES = frozenset({*PLATFORMS, *ARCHES, *INCUS_ARCHITECTURE.values(), "latest", "default"})
_EXTENSION = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}$")
_KERNEL_ARG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:=/+@-]*$")
_SCHEMATIC_FIELDS = {"customization"}
_CUSTOMIZATION_FIELDS = {"systemExtensions", "extraKernelArgs"}
_EXTENSION_FIELDS = {"officialExtensions"}
_JSON_FIELDS = {"name", "platform", "schematic"}
_FORM_FIELDS = {"token", "name", "platform", "extension", "extensions", "kernel_args"}


class RequestRejected(InputError):
    """A request that cannot be accepted; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _bad(message: str) -> RequestRejected:
    return RequestRejected(400, message)


@dataclass(frozen=True)
class RequestSpec:
    """One requested variant: its name, platform and (canonical) schematic."""

    name: str
    platform: str
    extensions: tuple[str, ...] = ()
    kernel_args: tuple[str, ...] = ()

    def schematic(self) -> dict[str, Any]:
        """The factory's schematic document for this variant (what `POST /schematics` receives)."""
        customization: dict[str, Any] = {}
        if self.kernel_args:
            customization["extraKernelArgs"] = list(self.kernel_args)
        if self.extensions:
            customization["systemExtensions"] = {"officialExtensions": list(self.extensions)}
        return {"customization": customization}

    def schematic_bytes(self) -> bytes:
        """The schematic as JSON (the factory reads YAML, of which JSON is a part)."""
        return json.dumps(self.schematic(), sort_keys=True).encode()

    def same_image(self, other: RequestSpec) -> bool:
        """Whether both ask for the same platform and schematic (names aside)."""
        return (self.platform, self.extensions, self.kernel_args) == (
            other.platform,
            other.extensions,
            other.kernel_args,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "schematic": self.schematic()}


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or not name[0].isalpha():
        raise _bad(f"name {name!r} is not a variant name: use {NAME_RULE} (for example 'storage')")
    if name in RESERVED_NAMES:
        raise RequestRejected(
            409, f"name {name!r} is reserved (it would read as a platform, an architecture or an alias); choose another"
        )
    return name


def check_platform(platform: object) -> str:
    if platform not in PLATFORMS:
        raise _bad(f"platform {platform!r} is not offered here: use {' or '.join(PLATFORMS)}")
    return str(platform)


def check_extensions(names: list[object]) -> tuple[str, ...]:
    for name in names:
        if not isinstance(name, str) or not _EXTENSION.match(name):
            raise _bad(f"extension {name!r} is not an official extension name like siderolabs/iscsi-tools")
    unique = sorted({str(name) for name in names})
    if len(unique) > MAX_EXTENSIONS:
        raise _bad(f"{len(unique)} extensions asked for; at most {MAX_EXTENSIONS} per request")
    return tuple(unique)


def check_kernel_args(args: list[object]) -> tuple[str, ...]:
    if len(args) > MAX_KERNEL_ARGS:
        raise _bad(f"{len(args)} extra kernel arguments; at most {MAX_KERNEL_ARGS} per request")
    for arg in args:
        if not isinstance(arg, str) or len(arg) > MAX_KERNEL_ARG_LENGTH or not _KERNEL_ARG.match(arg):
            raise _bad(
                f"extra kernel argument {arg!r} is not allowed: up to {MAX_KERNEL_ARG_LENGTH} characters of "
                "letters, digits and _.,:=/+@- (for example console=ttyS0,115200)"
            )
    return tuple(str(arg) for arg in args)


def _spec(name: object, platform: object, extensions: list[object], kernel_args: list[object]) -> RequestSpec:
    spec = RequestSpec(
        name=check_name(name),
        platform=check_platform(platform),
        extensions=check_extensions(extensions),
        kernel_args=check_kernel_args(kernel_args),
    )
    if not spec.extensions and not spec.kernel_args:
        raise _bad(
            "the request asks for no extension and no kernel argument: the vanilla images are already "
            "published (talos/<version>/nocloud, talos/<version>/metal)"
        )
    return spec


def _unknown(fields: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(fields) - allowed)
    if extra:
        raise _bad(
            f"{where} field {extra[0]!r} is not available through self-service requests; allowed: "
            f"{', '.join(sorted(allowed))}"
        )


def _object(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where} must be an object")
    return value


def _list(value: object, where: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(f"{where} must be a list")
    return value


def check_size(body: bytes) -> bytes:
    if len(body) > MAX_BODY_BYTES:
        raise RequestRejected(413, f"the request body has {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    return body


def parse_json_request(body: bytes) -> RequestSpec:
    """`{"name", "platform", "schematic": {"customization": {...}}}` (DESIGN.md's contract)."""
    try:
        document = json.loads(check_size(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"the request body is not JSON ({exc})") from None
    document = _object(document, "the request body")
    _unknown(document, _JSON_FIELDS, "request")
    schematic = _object(document.get("schematic"), "schematic")
    _unknown(schematic, _SCHEMATIC_FIELDS, "schematic")
    customization = _object(schematic.get("customization"), "schematic.customization")
    _unknown(customization, _CUSTOMIZATION_FIELDS, "schematic.customization")
    system = _object(customization.get("systemExtensions"), "systemExtensions")
    _unknown(system, _EXTENSION_FIELDS, "schematic.customization.systemExtensions")
    return _spec(
        document.get("name"),
        document.get("platform", "nocloud"),
        _list(system.get("officialExtensions"), "officialExtensions"),
        _list(customization.get("extraKernelArgs"), "extraKernelArgs"),
    )


def parse_form_request(body: bytes) -> tuple[RequestSpec, str | None]:
    """The page's form (`application/x-www-form-urlencoded`): the spec and the `token` field.

    `extension` may repeat (the form's checkboxes); `extensions` and `kernel_args` are text with
    names separated by commas or white space."""
    try:
        pairs = urllib.parse.parse_qsl(check_size(body).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise _bad("the form data is not valid UTF-8 form encoding") from None
    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        fields.setdefault(key, []).append(value)
    _unknown(fields, _FORM_FIELDS, "form")
    words = [w for text in fields.get("extensions", []) for w in re.split(r"[\s,]+", text) if w]
    extensions: list[object] = [*fields.get("extension", []), *words]
    kernel_args: list[object] = [w for text in fields.get("kernel_args", []) for w in text.split() if w]
    spec = _spec(
        _single(fields, "name"),
        _single(fields, "platform") or "nocloud",
        extensions,
        kernel_args,
    )
    token = _single(fields, "token")
    return spec, token or None


def form_token(body: bytes) -> str | None:
    """Only the `token` field of form data: checked before anything else of the form is read."""
    try:
        values = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True).get("token", [])
    except (UnicodeDecodeError, ValueError):
        return None
    return values[0].strip() or None if len(values) == 1 else None


def _single(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name, [])
    if len(values) > 1:
        raise _bad(f"form field {name!r} is given {len(values)} times")
    return values[0].strip() if values else ""


def spec_from_dict(document: dict[str, Any]) -> RequestSpec:
    """A spec stored by this module (`RequestSpec.to_dict`), checked again like any input."""
    return parse_json_request(json.dumps(document).encode())

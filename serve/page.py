"""The human page at `/` (and a request's status page), rendered on the server from the catalog.

Plain HTML and one small inline style sheet, no script: the Content-Security-Policy allows nothing
else (the style by its hash). Every value comes from the catalog or the store and is escaped where
it is written, whatever checked it before. The commands are the ones docs/incus-simplestreams.md
shows to work with the real client: `--vm -c security.secureboot=false` (Talos images need it), the
control-plane sizes, and for `nocloud` images the `talos-nocloud` profile that carries the
`cidata` disk (a `-d cidata,...` override alone cannot add a device).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from talos_pipeline.core.selfservice import SelfServiceRequest, Status
from talos_pipeline.core.simplestreams import CatalogImage
from talos_pipeline.core.versions import TalosVersion

REMOTE = "talos"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
SIZES = "-c limits.cpu=2 -c limits.memory=4GiB -d root,size=20GiB"
STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:78rem;padding:0 1rem 3rem;color:#1b1f24}"
    "h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #d0d7de}"
    "table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.3rem .5rem;"
    "border-bottom:1px solid #eaeef2;vertical-align:top}th{background:#f6f8fa}"
    "pre{background:#f6f8fa;padding:.5rem .7rem;margin:.3rem 0;white-space:pre-wrap;word-break:break-all}"
    "code{font:13px ui-monospace,monospace;user-select:all}td code{user-select:text}"
    "details pre code,section>pre code{user-select:all}summary{cursor:pointer;color:#0969da}"
    "tr.commands td{padding-top:0}tr[data-product] td{border-bottom:0}"
    "form{display:grid;gap:.6rem;max-width:44rem}fieldset{border:1px solid #d0d7de}"
    "label.ext{display:inline-block;min-width:20rem}.muted{color:#57606a}.failed{color:#cf222e}"
    ".published{color:#1a7f37}"
)
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = (
    ("cache-control", "no-cache"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
HTML = "text/html; charset=utf-8"


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def code(command: str) -> str:
    return f"<pre><code>{e(command)}</code></pre>"


@dataclass(frozen=True)
class SelfServiceView:
    """What the page shows of self-service when it is on."""

    versions: Sequence[str]
    arches: Sequence[str]
    extensions: Sequence[str] | None
    """The official extensions every target version offers (None: the factory could not be asked)."""
    recent: Sequence[SelfServiceRequest]
    pending_limit: int


@dataclass(frozen=True)
class PageView:
    base: str
    images: Sequence[CatalogImage]
    extensions: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Schematic id → the official extensions it asks for (unknown ids: "see schematic")."""
    written_at: float | None = None
    self_service: SelfServiceView | None = None


def _date(serial: str) -> str:
    return f"{serial[0:4]}-{serial[4:6]}-{serial[6:8]}" if len(serial) >= 8 else serial


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _signed(image: CatalogImage) -> str:
    if image.metadata.signature is None or image.disk.signature is None:
        return "no"
    return {"sigstore": "yes (Sigstore keyless)", "key": "yes (key)"}.get(image.signing, "yes")


def launch_command(source: str, platform: str) -> str:
    """`incus launch` of a Talos image (`source`: remote:alias or a local alias); nocloud images
    get their machine configuration through the talos-nocloud profile's cidata disk."""
    if platform == "nocloud":
        return (
            f"incus launch {source} node1 --vm --profile default --profile talos-nocloud "
            f'-c security.secureboot=false {SIZES} -c cloud-init.user-data="$(cat controlplane.yaml)"'
        )
    return f"incus launch {source} node1 --vm -c security.secureboot=false {SIZES}"


def import_command(base: str, image: CatalogImage) -> str:
    return (
        f"incus image import {base}/talos/{image.version}/{image.variant}/{image.arch} "
        f"--alias talos-{image.version}-{image.variant}-{image.arch}"
    )


def verify_commands(base: str, image: CatalogImage) -> list[str]:
    disk = image.disk
    if disk.signature is None or image.proxied:
        return []
    name = disk.path.rsplit("/", 1)[-1]
    fetch = f"curl -fsSLO {base}/{disk.path} -O {base}/{disk.signature}"
    if image.signing == "sigstore":
        check = (
            f"cosign verify-blob --bundle {name}.sigstore.json --certificate-identity-regexp "
            f"'^https://github.com/ORG/REPO/' --certificate-oidc-issuer {GITHUB_ISSUER} {name}"
        )
    else:
        check = f"cosign verify-blob --bundle {name}.sigstore.json --key signing-key.pub --insecure-ignore-tlog {name}"
    return [fetch, check]


def schematic_and_platform(image: CatalogImage) -> tuple[str | None, str | None]:
    """From the factory path the catalog gives every image: `image/<schematic>/<v>/<platform>-<arch>.qcow2`."""
    if image.factory_path is None:
        return None, None
    _image, schematic, _version, name = image.factory_path.split("/")
    return schematic, name.rsplit("-", 1)[0]


def _image_rows(view: PageView, images: Iterable[CatalogImage]) -> str:
    rows = []
    for image in images:
        schematic, platform = schematic_and_platform(image)
        extensions = view.extensions.get(schematic) if schematic else None
        shown = ", ".join(extensions) if extensions else ("none" if extensions is not None else "see schematic")
        source = f"{REMOTE}:talos/{image.version}/{image.variant}/{image.arch}"
        commands = [
            launch_command(source, platform or "metal"),
            import_command(view.base, image),
            *verify_commands(view.base, image),
        ]
        rows.append(
            f'<tr id="{e(image.product)}" data-product="{e(image.product)}">'
            f"<td>{e(image.version)}</td><td>{e(image.arch)}</td><td>{e(image.variant)}</td>"
            f"<td>{e(shown)}</td><td>{e(_size(image.disk.size))}</td>"
            f'<td><code title="{e(image.fingerprint)}">{e(image.fingerprint[:12])}</code></td>'
            f"<td>{e(_signed(image))}</td><td>{e(_date(image.serial))}</td></tr>"
            f'<tr class="commands" data-commands="{e(image.product)}"><td colspan="8"><details><summary>commands for '
            f"{e(image.version)} {e(image.arch)} {e(image.variant)}</summary>{''.join(code(c) for c in commands)}"
            "</details></td></tr>"
        )
    return "".join(rows)


def _sorted(images: Iterable[CatalogImage]) -> list[CatalogImage]:
    """Newest version first; within a version by arch and variant."""
    by_name = sorted(images, key=lambda i: (i.arch, i.variant))
    return sorted(by_name, key=lambda i: TalosVersion.parse(i.version), reverse=True)


def _request_form(base: str, view: SelfServiceView) -> str:
    if view.extensions is None:
        choices = (
            '<label>Official extensions (comma-separated) <input name="extensions" '
            'placeholder="siderolabs/iscsi-tools, siderolabs/util-linux-tools" size="60"></label>'
        )
    else:
        boxes = "".join(
            f'<label class="ext"><input type="checkbox" name="extension" value="{e(name)}"> {e(name)}</label> '
            for name in view.extensions
        )
        choices = f"<fieldset><legend>Official extensions</legend>{boxes}</fieldset>"
    example = json.dumps(
        {
            "name": "storage",
            "platform": "nocloud",
            "schematic": {
                "customization": {
                    "systemExtensions": {
                        "officialExtensions": ["siderolabs/iscsi-tools", "siderolabs/util-linux-tools"]
                    }
                }
            },
        }
    )
    curl = (
        f'curl -fsS -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" '
        f"-d '{example}' {base}/requests"
    )
    return (
        '<section id="request"><h2>Request a variant</h2>'
        f"<p>A variant with official system extensions is built for the newest stable versions here "
        f"({e(', '.join(view.versions) or 'none yet')}) on {e(', '.join(view.arches))}, then for every new "
        f"release. Its images get the aliases <code>talos/&lt;version&gt;/&lt;name&gt;</code>, "
        f"<code>talos/vX.Y/&lt;name&gt;</code> and <code>talos/latest/&lt;name&gt;</code>. "
        f"A token may have {e(view.pending_limit)} requests pending.</p>"
        '<form method="post" action="/requests">'
        '<label>Token <input type="password" name="token" required autocomplete="off"></label>'
        '<label>Name <input name="name" required maxlength="32" pattern="[a-z][a-z0-9\\-]{0,31}" '
        'placeholder="storage"></label>'
        '<fieldset><legend>Platform</legend><label><input type="radio" name="platform" value="nocloud" checked> '
        'nocloud</label> <label><input type="radio" name="platform" value="metal"> metal</label></fieldset>'
        f"{choices}"
        '<label>Extra kernel arguments (space-separated) <input name="kernel_args" size="60"></label>'
        '<button type="submit">Request</button></form>'
        f"<p>The same with curl:</p>{code(curl)}"
        f"{_recent(view.recent)}</section>"
    )


def _recent(requests: Sequence[SelfServiceRequest]) -> str:
    if not requests:
        return "<h3>Recent requests</h3><p class=muted>none yet</p>"
    rows = "".join(
        f'<tr><td><a href="/requests/{e(r.id)}">{e(r.name)}</a></td>'
        f'<td class="{e(r.status)}">{e(r.status)}</td><td>{e(", ".join(r.spec.extensions) or "-")}</td>'
        f"<td>{e(', '.join(r.versions) or '-')}</td><td>{e(r.created_at)}</td></tr>"
        for r in requests
    )
    return (
        "<h3>Recent requests</h3><table><thead><tr><th>name</th><th>status</th><th>extensions</th>"
        f"<th>versions</th><th>requested</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _layout(title: str, body: str, refresh: int | None = None) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{e(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
    ).encode()


def render_page(view: PageView) -> bytes:
    images = _sorted(view.images)
    versions = sorted({i.version for i in images}, key=TalosVersion.parse, reverse=True)
    updated = datetime.fromtimestamp(view.written_at, UTC).strftime("%Y-%m-%d %H:%M UTC") if view.written_at else "-"
    latest = f"{REMOTE}:talos/latest"
    start = (
        '<section id="start"><h2>Use these images with Incus</h2>'
        f"{code(f'incus remote add {REMOTE} {view.base} --protocol simplestreams --public')}"
        "<p>Talos images boot without Secure Boot and need a control-plane size (2 CPUs, 2 GiB or more):</p>"
        f"{code(f'incus launch {latest} node1 --vm -c security.secureboot=false {SIZES}')}"
        "<p>Zero-touch configuration for <code>nocloud</code> images: Talos reads its machine configuration "
        "from the <code>cidata</code> volume Incus builds from <code>cloud-init.user-data</code>. Create once "
        "a profile that carries that disk (the per-image commands below use it):</p>"
        f"{code('incus profile create talos-nocloud')}"
        f"{code('incus profile device add talos-nocloud cidata disk source=cloud-init:config')}"
        "<p><code>metal</code> images wait in maintenance mode for <code>talosctl apply-config --insecure</code>. "
        f'The catalog itself: <a href="/streams/v1/images.json">streams/v1/images.json</a>.</p></section>'
    )
    table = (
        f'<section id="images"><h2>Images</h2><p class="muted">{len(images)} images of {len(versions)} versions; '
        f"catalog updated {e(updated)}</p><table><thead><tr><th>version</th><th>arch</th><th>variant</th>"
        "<th>extensions</th><th>size</th><th>fingerprint</th><th>signed</th><th>date</th>"
        f"</tr></thead><tbody>{_image_rows(view, images)}</tbody></table></section>"
    )
    verify = (
        '<section id="verify"><h2>Verify signatures</h2>'
        "<p>Incus checks every file's sha256 and the image fingerprint itself. Signed images also carry a "
        "Sigstore bundle next to each file (<code>X.sigstore.json</code>); the commands in each image's "
        "row download the disk and its bundle and check them with cosign 2.4 or later (key mode: the "
        "publisher's <code>signing-key.pub</code>; keyless: the publisher's workflow identity).</p>"
        "<p>Operators re-check the whole store (files, sizes, hashes, fingerprints and every bundle):</p>"
        f"{code('talos-pipeline verify --key signing-key.pub')}</section>"
    )
    requests = _request_form(view.base, view.self_service) if view.self_service is not None else ""
    header = "<h1>Talos Linux images for Incus</h1>"
    return _layout("Talos Linux images for Incus", header + start + table + requests + verify)


def render_request(request: SelfServiceRequest, base: str) -> bytes:
    """A request's status for people (the form's answer); refreshes itself while pending. Once
    published it says how to launch it: straight from the catalog, or, for a daemon that fetched
    this server's index within the last hour (incusd keeps it that long, docs/incus-simplestreams.md),
    by direct import first."""
    facts = [
        ("status", str(request.status)),
        ("platform", request.spec.platform),
        ("extensions", ", ".join(request.spec.extensions) or "-"),
        ("kernel arguments", " ".join(request.spec.kernel_args) or "-"),
        ("schematic", request.schematic_id or "-"),
        ("versions", ", ".join(request.versions) or "-"),
        ("aliases", ", ".join(request.aliases) or "-"),
        ("reason", request.reason or "-"),
        ("requested", request.created_at),
        ("updated", request.updated_at),
    ]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    pending = request.status in (Status.QUEUED, Status.BUILDING)
    note = ""
    if pending:
        note = "<p class=muted>This page refreshes every 5 seconds until the request is published or failed.</p>"
    elif request.status is Status.PUBLISHED and request.versions:
        platform, newest, local = request.spec.platform, request.versions[0], f"talos-{request.name}"
        imports = "".join(
            code(f"incus image import {base}/talos/{newest}/{request.name}/{arch} --alias {local}")
            for arch in request.arches
        )
        note = (
            '<p>Launch the newest one (the commands on the <a href="/">page</a> set things up):</p>'
            f"{code(launch_command(f'{REMOTE}:talos/latest/{request.name}', platform))}"
            "<p>An Incus daemon that read this server's index within the last hour keeps that older index "
            "for up to an hour. Until then, import the image directly (the line for your host's "
            f"architecture) and launch it from there:</p>{imports}{code(launch_command(local, platform))}"
        )
    body = (
        f"<h1>Request {e(request.name)}</h1><table>{rows}</table>{note}"
        f'<p><a href="/">all images</a> · <a href="/requests/{e(request.id)}?format=json">as JSON</a></p>'
    )
    return _layout(f"Request {request.name}: {request.status}", body, refresh=5 if pending else None)


def render_error(status: int, message: str) -> bytes:
    body = f'<h1>Request refused ({status})</h1><p class="failed">{e(message)}</p><p><a href="/#request">back</a></p>'
    return _layout("Request refused", body)

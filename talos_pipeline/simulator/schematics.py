"""Image Factory schematics: parse a POSTed body, validate it, compute its id.

The factory decodes the body strictly into its ``Schematic`` type (unknown fields are errors),
re-marshals it with Go's yaml.v3 (4-space indent, struct field order, empty optional fields
dropped) and takes the sha256 of that canonical YAML as the id. This module mirrors that for the
fields that exist, so ids match the real factory for ordinary schematics:
``customization: {}`` -> ``376567988ad3...`` (vanilla) and the qemu-guest-agent schematic ->
``ce4c980550dd...`` (docs/talos-upstream.md, "Schematics").

Stdlib only, so YAML support is a small subset: block mappings and sequences, single-line flow
collections (``{}``, ``[a, b]``, ``{k: v}``), plain and quoted scalars, comments. JSON bodies are
parsed as JSON. Anything else is rejected with a message saying what is unsupported.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

__all__ = [
    "VANILLA_SCHEMATIC_YAML",
    "SchematicError",
    "canonical_schematic",
    "official_extensions",
    "parse_yaml",
    "schematic_id",
]

VANILLA_SCHEMATIC_YAML = "customization: {}\n"


class SchematicError(ValueError):
    """The body is not a valid schematic; the message is what the factory answers (400)."""


# --------------------------------------------------------------------------- schema
# (yaml name, kind, omitempty); kinds: "str", "int", "bool", "any", [item kind], or a nested schema.
_META = ("schematic.MetaValue", [("key", "int", False), ("value", "str", False)])
_CUSTOMIZATION = (
    "schematic.Customization",
    [
        ("embeddedMachineConfiguration", "str", True),
        ("extraKernelArgs", ["str"], True),
        ("meta", [_META], True),
        ("systemExtensions", ("schematic.SystemExtensions", [("officialExtensions", ["str"], True)]), True),
        ("bootloader", "str", True),
        (
            "secureboot",
            (
                "schematic.SecureBootCustomization",
                [("enrollKeys", "str", True), ("includeWellKnownCertificates", "bool", True)],
            ),
            True,
        ),
        ("diskImage", ("schematic.DiskImage", [("sectorSize", "int", True)]), True),
    ],
)
_OVERLAY = ("schematic.Overlay", [("image", "str", False), ("name", "str", False), ("options", "any", True)])
_SCHEMATIC = ("schematic.Schematic", [("overlay", _OVERLAY, True), ("customization", _CUSTOMIZATION, False)])


def _is_empty(value: Any) -> bool:
    """Go's omitempty: zero scalars, empty lists/maps, structs whose fields are all zero."""
    if isinstance(value, dict):
        return all(_is_empty(v) for v in value.values())
    return value is None or value == "" or value == 0 or value is False or value == []


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Validate ``value`` against ``kind``; return the canonical (ordered, omitempty) form."""
    if isinstance(kind, tuple):
        type_name, fields = kind
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _unmarshal_error(where, value, type_name)
        known = {name for name, _, _ in fields}
        for key in value:
            if key not in known:
                raise SchematicError(f"yaml: unmarshal errors:\n  field {key} not found in type {type_name}")
        out: dict[str, Any] = {}
        for name, sub, omitempty in fields:
            converted = _convert(value.get(name), sub, name)
            if omitempty and _is_empty(converted):
                continue
            out[name] = converted
        return out
    if isinstance(kind, list):
        if value is None:
            return []
        if not isinstance(value, list):
            raise _unmarshal_error(where, value, "a list")
        return [_convert(item, kind[0], where) for item in value]
    if kind == "any":
        return value
    if value is None:
        return {"str": "", "int": 0, "bool": False}[kind]
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise _unmarshal_error(where, value, "string")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _unmarshal_error(where, value, "an integer")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _unmarshal_error(where, value, "bool")
        return value
    raise AssertionError(kind)


def _unmarshal_error(where: str, value: Any, target: str) -> SchematicError:
    prefix = f"{where}: " if where else ""
    return SchematicError(f"yaml: unmarshal errors:\n  {prefix}cannot unmarshal {_yaml_type(value)} into {target}")


def _yaml_type(value: Any) -> str:
    if isinstance(value, dict):
        return "!!map"
    if isinstance(value, list):
        return "!!seq"
    if isinstance(value, bool):
        return f"!!bool `{str(value).lower()}`"
    if isinstance(value, int):
        return f"!!int `{value}`"
    if isinstance(value, float):
        return f"!!float `{value}`"
    return f"!!str `{value}`"


# --------------------------------------------------------------------------- emitter (yaml.v3 style)
_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./=@+,-]*(?: [A-Za-z0-9_./=@+,-]+)*$")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if text == "" or not isinstance(_resolve_plain(text), str):
        return json.dumps(text)  # would read back as another type: double-quote
    if _PLAIN_SAFE.match(text):
        return text
    if "\n" in text or any(ord(c) < 32 for c in text):
        return json.dumps(text)
    return "'" + text.replace("'", "''") + "'"


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        keys = value.keys() if not getattr(value, "_sorted", False) else sorted(value)
        for key in keys:
            item = value[key]
            if (isinstance(item, dict) and item) or (isinstance(item, list) and item):
                lines.append(f"{pad}{_scalar(key)}:")
                _emit(item, indent + 4, lines)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                first = sub[0][indent + 2 :]
                lines.append(f"{pad}- {first}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _scalar(value))


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


class _SortedDict(dict[Any, Any]):
    _sorted = True


def _sort_free_maps(value: Any) -> Any:
    """Go maps (overlay options) marshal with sorted keys."""
    if isinstance(value, dict):
        return _SortedDict({k: _sort_free_maps(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_sort_free_maps(v) for v in value]
    return value


def to_yaml(value: dict[str, Any]) -> str:
    if not value:
        return "{}\n"
    lines: list[str] = []
    _emit(value, 0, lines)
    return "\n".join(lines) + "\n"


def canonical_schematic(body: bytes | str) -> str:
    """Parse, validate and re-marshal a schematic; raise `SchematicError` (-> 400) if invalid."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SchematicError(f"schematic is not UTF-8 text: {exc}") from None
    if not body.strip():
        raise SchematicError("EOF")
    try:
        document = json.loads(body)
    except ValueError:
        try:
            document = parse_yaml(body)
        except _YamlError as exc:
            raise SchematicError(f"yaml: {exc}") from None
    if document is None:
        raise SchematicError("EOF")
    if not isinstance(document, dict):
        raise _unmarshal_error("", document, "schematic.Schematic")
    canonical = _convert(document, _SCHEMATIC, "schematic")
    if "overlay" in canonical and "options" in canonical["overlay"]:
        canonical["overlay"]["options"] = _sort_free_maps(canonical["overlay"]["options"])
    return to_yaml(canonical)


def schematic_id(canonical_yaml: str) -> str:
    return hashlib.sha256(canonical_yaml.encode("utf-8")).hexdigest()


def official_extensions(canonical_yaml: str) -> tuple[str, ...]:
    """``customization.systemExtensions.officialExtensions`` of a canonical schematic."""
    document = parse_yaml(canonical_yaml) or {}
    customization = document.get("customization") or {}
    return tuple((customization.get("systemExtensions") or {}).get("officialExtensions") or ())


# --------------------------------------------------------------------------- YAML subset parser
class _YamlError(ValueError):
    pass


_INT_RE = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_HEX_RE = re.compile(r"^0x[0-9a-fA-F]+$")
_OCT_RE = re.compile(r"^0o[0-7]+$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _resolve_plain(text: str) -> Any:
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT_RE.match(text):
        return int(text)
    if _HEX_RE.match(text):
        return int(text, 16)
    if _OCT_RE.match(text):
        return int(text[2:], 8)
    if _FLOAT_RE.match(text) and any(c.isdigit() for c in text):
        return float(text)
    return text


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"" and (i == 0 or line[i - 1] in " \t:[{,-"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _find_colon(text: str) -> int:
    """Index of the mapping ``:`` in a block line (outside quotes/flow), or -1."""
    quote = None
    depth = 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"" and (i == 0 or text[i - 1] in " [{,"):
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == ":" and depth == 0 and (i + 1 == len(text) or text[i + 1] in " \t"):
            return i
    return -1


class _Flow:
    def __init__(self, text: str, line: int) -> None:
        self.text, self.pos, self.line = text, 0, line

    def error(self, what: str) -> _YamlError:
        return _YamlError(f"line {self.line}: {what}")

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def value(self, in_flow: bool) -> Any:
        self.ws()
        if self.pos >= len(self.text):
            if in_flow:
                raise self.error("unterminated flow collection (multi-line flow style is not supported)")
            return None
        ch = self.text[self.pos]
        if ch == "{":
            return self.mapping()
        if ch == "[":
            return self.sequence()
        if ch in "'\"":
            return self.quoted()
        if ch in "|>":
            raise self.error("block scalars (| and >) are not supported by this simulator; use a quoted string")
        if ch in "&*!":
            raise self.error("anchors, aliases and tags are not supported by this simulator")
        start = self.pos
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if in_flow and (c in ",]}" or (c == ":" and self._colon_ends())):
                break
            self.pos += 1
        return _resolve_plain(self.text[start : self.pos].strip())

    def _colon_ends(self) -> bool:
        nxt = self.text[self.pos + 1 : self.pos + 2]
        return nxt in ("", " ", "\t", ",", "]", "}")

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        if quote == "'":
            out = []
            while True:
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise self.error("unterminated single-quoted string")
                out.append(self.text[self.pos : end])
                self.pos = end + 1
                if self.text[self.pos : self.pos + 1] == "'":
                    out.append("'")
                    self.pos += 1
                    continue
                return "".join(out)
        start = self.pos - 1
        i = self.pos
        while i < len(self.text):
            if self.text[i] == "\\":
                i += 2
                continue
            if self.text[i] == '"':
                try:
                    value: str = json.loads(self.text[start : i + 1])
                except ValueError:
                    raise self.error("unsupported escape in double-quoted string") from None
                self.pos = i + 1
                return value
            i += 1
        raise self.error("unterminated double-quoted string")

    def mapping(self) -> dict[Any, Any]:
        self.pos += 1
        out: dict[Any, Any] = {}
        while True:
            self.ws()
            if self.text[self.pos : self.pos + 1] == "}":
                self.pos += 1
                return out
            key = self.value(True)
            self.ws()
            if self.text[self.pos : self.pos + 1] == ":":
                self.pos += 1
                value = self.value(True)
            else:
                value = None
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise self.error("unsupported mapping key")
            if key in out:
                raise self.error(f"mapping key {key!r} already defined")
            out[key] = value
            self.ws()
            c = self.text[self.pos : self.pos + 1]
            if c == ",":
                self.pos += 1
            elif c != "}":
                raise self.error("expected ',' or '}' in flow mapping (multi-line flow style is not supported)")

    def sequence(self) -> list[Any]:
        self.pos += 1
        out: list[Any] = []
        while True:
            self.ws()
            if self.text[self.pos : self.pos + 1] == "]":
                self.pos += 1
                return out
            out.append(self.value(True))
            self.ws()
            c = self.text[self.pos : self.pos + 1]
            if c == ",":
                self.pos += 1
            elif c != "]":
                raise self.error("expected ',' or ']' in flow sequence (multi-line flow style is not supported)")


def _inline_value(text: str, line: int) -> Any:
    flow = _Flow(text, line)
    value = flow.value(False)
    flow.ws()
    if flow.pos != len(text):
        raise flow.error(f"unexpected text after value: {text[flow.pos :]!r}")
    return value


def parse_yaml(text: str) -> Any:
    """Parse the YAML subset described in the module docstring."""
    lines: list[list[Any]] = []  # [indent, content, line number]
    for number, raw in enumerate(text.splitlines(), start=1):
        content = _strip_comment(raw).rstrip()
        if not content.strip():
            continue
        body = content.lstrip(" ")
        indent = len(content) - len(body)
        if body.startswith("\t"):
            raise _YamlError(f"line {number}: found a tab character where an indentation space is expected")
        if indent == 0 and body in ("---", "..."):
            if body == "..." or lines:
                if body == "---" and lines:
                    raise _YamlError(f"line {number}: multiple documents are not supported")
                break
            continue
        lines.append([indent, body, number])
    if not lines:
        return None
    value, pos = _block(lines, 0, lines[0][0])
    if pos != len(lines):
        raise _YamlError(f"line {lines[pos][2]}: did not find expected key (bad indentation?)")
    return value


def _is_seq_item(body: str) -> bool:
    return body == "-" or body.startswith("- ")


def _block(lines: list[list[Any]], i: int, indent: int) -> tuple[Any, int]:
    body = lines[i][1]
    if _is_seq_item(body):
        return _sequence(lines, i, indent)
    if _find_colon(body) >= 0:
        return _mapping(lines, i, indent)
    value = _inline_value(body, lines[i][2])
    return value, i + 1


def _nested(lines: list[list[Any]], i: int, indent: int, allow_same_indent_seq: bool) -> tuple[Any, int]:
    """The block value that follows a ``key:`` or ``-`` with nothing after it on the line."""
    if i < len(lines):
        nxt_indent, nxt_body, _ = lines[i]
        if nxt_indent > indent:
            return _block(lines, i, nxt_indent)
        if allow_same_indent_seq and nxt_indent == indent and _is_seq_item(nxt_body):
            return _sequence(lines, i, indent)
    return None, i


def _mapping(lines: list[list[Any]], i: int, indent: int) -> tuple[dict[Any, Any], int]:
    out: dict[Any, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not _is_seq_item(lines[i][1]):
        _, body, number = lines[i]
        colon = _find_colon(body)
        if colon < 0:
            raise _YamlError(f"line {number}: could not find expected ':'")
        key = _inline_value(body[:colon].strip(), number)
        if isinstance(key, (dict, list)) or key is None:
            raise _YamlError(f"line {number}: unsupported mapping key")
        if key in out:
            raise _YamlError(f'line {number}: mapping key "{key}" already defined')
        rest = body[colon + 1 :].strip()
        if rest:
            out[key], i = _inline_value(rest, number), i + 1
        else:
            out[key], i = _nested(lines, i + 1, indent, allow_same_indent_seq=True)
    if i < len(lines) and lines[i][0] > indent:
        raise _YamlError(f"line {lines[i][2]}: mapping values are not allowed in this context (bad indentation?)")
    return out, i


def _sequence(lines: list[list[Any]], i: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and _is_seq_item(lines[i][1]):
        _, body, number = lines[i]
        rest = body[1:].lstrip(" ")
        if not rest:
            value, i = _nested(lines, i + 1, indent, allow_same_indent_seq=False)
            out.append(value)
            continue
        offset = len(body) - len(rest)
        if _is_seq_item(rest) or _find_colon(rest) >= 0:
            # "- key: value" / "- - item": the rest is a block node at a deeper indent.
            lines[i] = [indent + offset, rest, number]
            value, i = _block(lines, i, indent + offset)
            out.append(value)
        else:
            out.append(_inline_value(rest, number))
            i += 1
    if i < len(lines) and lines[i][0] > indent:
        raise _YamlError(f"line {lines[i][2]}: bad indentation of a sequence entry")
    return out, i

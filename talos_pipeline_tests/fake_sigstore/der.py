"""The few DER encodings the fake needs (length prefixes, UTF8String, OCTET STRING)."""

from __future__ import annotations


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + der_length(len(value)) + value


def der_utf8_string(text: str) -> bytes:
    """ASN.1 UTF8String: how Fulcio encodes the `.1.8`+ certificate extensions."""
    return der_tlv(0x0C, text.encode("utf-8"))


def der_octet_string(value: bytes) -> bytes:
    return der_tlv(0x04, value)

"""Packet header fields a feature can be bound to, with their widths as a data plane sees them.

A feature bound to a header field is read straight from the parsed header; an unbound feature is
carried in the Homunculus feature header (a fixed layout after UDP on a configured port), which is
how a tabular dataset is replayed through a switch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeaderField:
    """One header field: the header it lives in, its P4 field name and its width in bits."""

    header: str
    field: str
    width: int

    @property
    def qualified(self) -> str:
        return f"{self.header}.{self.field}"


HEADER_FIELDS: dict[str, HeaderField] = {
    f.qualified: f
    for f in (
        HeaderField("ipv4", "diffserv", 8),
        HeaderField("ipv4", "total_len", 16),
        HeaderField("ipv4", "identification", 16),
        HeaderField("ipv4", "frag_offset", 13),
        HeaderField("ipv4", "ttl", 8),
        HeaderField("ipv4", "protocol", 8),
        HeaderField("tcp", "src_port", 16),
        HeaderField("tcp", "dst_port", 16),
        HeaderField("tcp", "data_offset", 4),
        HeaderField("tcp", "flags", 8),
        HeaderField("tcp", "window", 16),
        HeaderField("udp", "src_port", 16),
        HeaderField("udp", "dst_port", 16),
        HeaderField("udp", "length", 16),
        HeaderField("l4", "src_port", 16),  # TCP or UDP source port, 0 for other protocols
        HeaderField("l4", "dst_port", 16),
        # The service side of a conversation, whichever direction the packet goes: the smaller
        # of the two TCP/UDP ports (servers listen on the low, well-known ports; clients use
        # ephemeral ones), and the larger one; 0 for other protocols.
        HeaderField("l4", "server_port", 16),
        HeaderField("l4", "client_port", 16),
    )
}


def lookup_header_field(name: str) -> HeaderField:
    """Return the header field called `name` (e.g. ``ipv4.ttl``) or raise KeyError listing them."""
    try:
        return HEADER_FIELDS[name]
    except KeyError:
        known = ", ".join(sorted(HEADER_FIELDS))
        raise KeyError(f"unknown header field '{name}'; known fields: {known}") from None

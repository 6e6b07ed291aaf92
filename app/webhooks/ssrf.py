"""Which addresses an outbound webhook may never reach (unless an operator allows it).

Checked on every address a host resolves to, at delivery time, and the connection then goes
to the address that was checked, so a DNS answer that changes in between (rebinding) cannot
redirect it. ``forbidden`` is pure: tests exercise it without opening any socket.
"""

from __future__ import annotations

import ipaddress

# Cloud metadata services reachable from instances (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba).
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# Carrier-grade NAT: not "private" to the ipaddress module, but never a public endpoint.
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def forbidden(address: str) -> str | None:
    """Why ``address`` may not be called (``None`` when it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return forbidden(str(mapped))
    if ip in METADATA:
        return "cloud metadata address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED):
        return "private address"
    # Deprecated site-local fec0::/10 (RFC 3879): still routed inside some networks, yet
    # Python 3.11 counts it as global.
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "private address"
    if ip.is_reserved or not ip.is_global:
        return "reserved address"
    return None

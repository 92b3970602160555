"""Which IP addresses count as public: the one rule for image fetching and webhook targets.

A request that traceguard makes on behalf of a log (an image URL) or of a config file (a webhook)
must not reach the machine itself, the private network or the cloud's metadata service unless
the user allowed it. Python's ``is_global`` misses IPv6 forms that carry an IPv4 address a
gateway may translate to (NAT64, 6to4, Teredo, IPv4-compatible): those are judged by the IPv4
address inside.
"""

from __future__ import annotations

import ipaddress

__all__ = ["METADATA_ADDRESSES", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes that carry an IPv4 address in their last 32 bits and that a gateway may
# translate to it: NAT64 (RFC 6052 well-known and RFC 8215 local-use) and the deprecated
# IPv4-compatible form. Python calls these global, whatever IPv4 address they embed.
_IPV4_EMBEDDING = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud instance-metadata services (AWS/GCP/Azure, AWS IPv6, Alibaba): never a webhook."""


def is_public_address(address: IPAddress) -> bool:
    """True for a global unicast address that embeds no non-public IPv4 address."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address.is_site_local:  # fec0::/10: deprecated, yet still routed inside some networks
        return False
    embedded = [address.ipv4_mapped, address.sixtofour]
    if address.teredo is not None:
        embedded.extend(address.teredo)
    if any(address in network for network in _IPV4_EMBEDDING):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(inner is None or is_public_address(inner) for inner in embedded)

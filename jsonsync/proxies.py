"""
Behind a reverse proxy: from peers listed in C{trusted_proxies}, the
C{Forwarded} (RFC 7239) or C{X-Forwarded-For/-Proto/-Host} headers give the
client's address, and the scheme and host of the URLs the server writes.
Anyone else's forwarded headers are ignored: a client could otherwise
choose the address in the logs and the host of the links it is sent.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
_SCHEMES = ("http", "https")


@lru_cache(maxsize=8)
def networks(trusted: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted if entry.strip())


def check_setting(trusted) -> list[str]:
    """Problems with a C{trusted_proxies} value (for configuration errors)."""
    problems = []
    for entry in trusted:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            problems.append(f"trusted_proxies: {entry!r} is not an address or a network")
    return problems


def _address(value: str):
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]  # IPv4 with a port
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(address, nets) -> bool:
    return address is not None and any(address in net for net in nets)


def _forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 elements, nearest the client first."""
    elements = []
    for element in value.split(","):
        pairs = {}
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep:
                pairs[name.strip().lower()] = val.strip().strip('"')
        elements.append(pairs)
    return elements


def resolve(peer: str | None, headers: dict[str, str], trusted: tuple[str, ...], family: str = "x-forwarded"):
    """
    C{(client, scheme, host)} for a request from C{peer}: each None when
    the request does not come from a trusted proxy, or its headers do not
    say (or say something malformed).

    Only the header family the operator names (C{trusted_proxy_headers})
    is read: a proxy passes on untouched the headers it does not set, so a
    client could otherwise send the other family itself. Scheme and host
    are those the nearest trusted proxy wrote: the last C{Forwarded}
    element, the last value of a list (a proxy appends its own after what
    the client sent).
    """
    nets = networks(trusted)
    peer_address = _address(peer or "")
    if not nets or not _trusted(peer_address, nets):
        return None, None, None
    if family == "forwarded":
        elements = _forwarded(headers.get("forwarded") or "")
        hops = [e.get("for", "") for e in elements]
        last = elements[-1] if elements else {}
        proto, host = last.get("proto"), last.get("host")
    else:
        xff = headers.get("x-forwarded-for")
        hops = [h for h in xff.split(",")] if xff else []
        proto = (headers.get("x-forwarded-proto") or "").split(",")[-1].strip() or None
        host = (headers.get("x-forwarded-host") or "").split(",")[-1].strip() or None
    # The client is the nearest hop that is not a trusted proxy: the hops a
    # trusted proxy appended are true, what comes before may be forged.
    client = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not _trusted(address, nets):
            break
    scheme = proto.lower() if proto and proto.lower() in _SCHEMES else None
    host = host if host and _HOST.match(host) else None
    return client, scheme, host

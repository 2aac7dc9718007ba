"""Addresses and names of this box."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Sequence

from cspd.command import CommandRunner
from cspd.errors import CommandError

log = logging.getLogger("cspd.netinfo")


def parse_ip_addr_json(output: str) -> list[tuple[str, str]]:
    """Return (interface, address) pairs from ``ip -j addr show`` output."""
    pairs = []
    for link in json.loads(output or "[]"):
        for info in link.get("addr_info", []):
            address = info.get("local")
            if address:
                pairs.append((link.get("ifname", ""), address))
    return pairs


async def local_addresses(runner: CommandRunner) -> list[str]:
    """Return every address assigned to an interface of this box."""
    try:
        result = await runner.run(["ip", "-j", "addr", "show"], timeout=10)
    except CommandError as err:
        log.warning("listing local addresses with ip failed: %s", err)
        return ["127.0.0.1", "::1"]
    return [address for _, address in parse_ip_addr_json(result.stdout)]


def default_portals(addresses: list[str]) -> list[str]:
    """Pick the portal addresses used when the configuration lists none.

    Global unicast addresses qualify; loopback and link-local ones do not,
    since initiators on other machines cannot reach them. A box with no such
    address falls back to 127.0.0.1 so that local tests still work.
    """
    portals = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.is_loopback or address.is_link_local or address.is_multicast:
            continue
        portals.append(text)
    return portals or ["127.0.0.1"]


def own_names(addresses: list[str], extra: Sequence[str] = ()) -> frozenset[str]:
    """Return the lower-case names and addresses that ``array_ip`` may carry.

    ``extra`` are names from the configuration (``api.array_names``).
    """
    names = {"localhost", "127.0.0.1", "::1"}
    names.update(a.lower() for a in addresses)
    names.update(n.lower() for n in extra)
    hostname = socket.gethostname()
    names.add(hostname.lower())
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    return frozenset(names)

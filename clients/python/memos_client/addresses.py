"""The daemon addresses a client may dial: one, or several members of a cluster, parsed with clear errors."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from memos_client.errors import InvalidArgument
from memos_mip.defaults import client_socket_path

# gRPC's own name schemes a client may pass through as they are (unix sockets, abstract ones, DNS).
_SCHEMES = ("unix:", "unix-abstract:", "dns:")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)")
_FORMS = "unix:/path/to.sock, an absolute socket path, or host:port"


def resolve_targets(addr: str | Sequence[str] | None = None, source: str = "the address") -> list[str]:
    """The gRPC targets to dial, in order: from `addr` (one address, several separated by commas, or a
    list; `source` names it in errors), else $MEMOS_ADDR (the same), else the default socket.
    InvalidArgument names a bad entry and where it came from."""
    if addr is None or (isinstance(addr, str) and not addr):
        env = os.environ.get("MEMOS_ADDR")
        if not env:
            return [f"unix:{client_socket_path()}"]
        return parse_addresses(env, "$MEMOS_ADDR")
    return parse_addresses(addr, source)


def parse_addresses(value: str | Sequence[str], source: str = "the address") -> list[str]:
    """Targets from "a,b,c" or a list of addresses; `source` names where they came from in errors."""
    if isinstance(value, str):
        entries = value.split(",")
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        entries = list(value)
        if any("," in v for v in entries):
            raise InvalidArgument(f"{source}: give one address per list item, not {_shown(next(v for v in entries if ',' in v))}")
    else:
        raise InvalidArgument(f"{source} must be a string or a list of strings, not {type(value).__name__}")
    if not entries:
        raise InvalidArgument(f"{source} is an empty list; give {_FORMS}")
    targets: list[str] = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}, entry {i} of {len(entries)}" if len(entries) > 1 else source
        target = parse_address(entry.strip(), where)
        if target in targets:
            raise InvalidArgument(f"{where}: {_shown(entry.strip())} is listed twice")
        targets.append(target)
    return targets


def parse_address(entry: str, where: str = "the address") -> str:
    """One address as a gRPC target: unix:PATH, a bare absolute path (a Unix socket), or host:port."""
    if not entry:
        raise InvalidArgument(f"{where} is empty; separate addresses with single commas, each {_FORMS}")
    if any(c.isspace() for c in entry):
        raise InvalidArgument(f"{where}: {_shown(entry)} contains a space")
    if entry.startswith("/"):
        return f"unix:{entry}"
    for scheme in _SCHEMES:
        if entry.startswith(scheme):
            if not entry[len(scheme):].strip("/"):
                raise InvalidArgument(f"{where}: {_shown(entry)} names no socket path after {scheme}")
            return entry
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", entry)
    if scheme:
        raise InvalidArgument(f"{where}: unknown scheme {scheme.group(1)}:// in {_shown(entry)}; give {_FORMS}")
    host, colon, port = entry.rpartition(":")
    if not colon or not host:
        raise InvalidArgument(f"{where}: {_shown(entry)} has no port; give {_FORMS}")
    if not _HOST.fullmatch(host):
        raise InvalidArgument(f"{where}: {_shown(host)} is not a host name or IP address (IPv6 goes in brackets:"
                              " [::1]:7777)")
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise InvalidArgument(f"{where}: the port of {_shown(entry)} must be a number from 1 to 65535")
    return entry


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")

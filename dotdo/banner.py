"""What ``dotdo serve`` prints when it is up (one process or a parent of workers)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from dotdo.auth import Tokens
from dotdo.storage.options import Durability


def url(scheme: str, sockname: tuple[Any, ...]) -> str:
    """``scheme://host:port`` of a bound socket's address (IPv6 hosts in brackets)."""
    host, port = sockname[0], sockname[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def print_banner(
    out: TextIO,
    namespaces: Iterable[str],
    http_urls: Iterable[str],
    rpc_urls: Iterable[str],
    *,
    tokens: Tokens,
    host: str,
    data_dir: Path,
    durability: Durability,
    read_only: bool = False,
    workers: int = 1,
) -> None:
    with_workers = f" with {workers} workers" if workers > 1 else ""
    print(f"dotdo serving {', '.join(namespaces)}{with_workers}", file=out)
    secured = " (token required)" if tokens.client is not None else ""
    for address in http_urls:
        print(f"  http: {address}{secured}", file=out)
    for address in rpc_urls:
        print(f"  rpc:  {address}{secured}", file=out)
    if tokens.admin is not None:
        print("  admin: /_admin routes need the admin token", file=out)
    elif tokens.client is not None:
        print("  admin: /_admin routes closed (no admin token)", file=out)
    if read_only:
        print(f"  data: {data_dir} (read-only: reads are served, writes get 503 StorageReadOnly, alarms wait)", file=out)
    else:
        print(f"  data: {data_dir} (durability {durability.value})", file=out)
    if tokens.client is None and not _loopback(host):
        print(
            f"  warning: listening on {host} without a token: anyone who can reach this "
            "address can call every actor (set DOTDO_TOKEN and DOTDO_ADMIN_TOKEN)",
            file=out,
        )
    print("  stop: Ctrl-C", file=out, flush=True)


def _loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"

"""What ``dotdo serve`` prints when it is up (one process or a parent of workers)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from storage.database import Durability


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
    token: bool,
    data_dir: Path,
    durability: Durability,
    workers: int = 1,
) -> None:
    with_workers = f" with {workers} workers" if workers > 1 else ""
    print(f"dotdo serving {', '.join(namespaces)}{with_workers}", file=out)
    for address in http_urls:
        print(f"  http: {address}", file=out)
    secured = " (token required)" if token else ""
    for address in rpc_urls:
        print(f"  rpc:  {address}{secured}", file=out)
    print(f"  data: {data_dir} (durability {durability.value})", file=out)
    print("  stop: Ctrl-C", file=out, flush=True)

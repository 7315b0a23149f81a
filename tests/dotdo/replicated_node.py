"""``python tests/dotdo/replicated_node.py [--replicas N] [--ack A] serve ...``: ``dotdo``
with a cluster node's replication turned on, for the fault tests of replicated storage
(replication has no command-line option of its own until it is complete: repair of a
returning node and the status of copies come next)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


def main() -> None:
    args = sys.argv[1:]
    settings: dict[str, Any] = {}
    for name, convert in (("--replicas", int), ("--ack", str)):
        if name in args:
            at = args.index(name)
            settings[name[2:]] = convert(args[at + 1])
            del args[at : at + 2]
    import dotdo.server
    from dotdo.cli import main as dotdo_main

    run = dotdo.server.run

    def replicated(kinds: Any, options: Any, **kwargs: Any) -> None:
        run(kinds, dataclasses.replace(options, **settings), **kwargs)

    dotdo.server.run = replicated  # what `dotdo serve` calls, with the settings above
    dotdo_main(args)


if __name__ == "__main__":
    main()

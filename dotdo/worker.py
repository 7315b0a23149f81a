"""One worker process of ``dotdo serve --workers N`` (started by the parent, which
writes its ``WorkerSpec`` on stdin; see ``dotdo.workers``)."""

from __future__ import annotations

import signal
import sys

from dotdo.loader import load_kinds
from dotdo.logs import configure
from dotdo.server import quiet_libraries, run
from dotdo.workers import read_spec
from dotdo.storage.errors import DotdoError


def main() -> int:
    # Ctrl-C reaches the whole process group: the parent turns it into a SIGTERM for
    # each worker, so a worker never stops before the parent knows it should.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = read_spec(sys.stdin.buffer)
    except DotdoError as exc:
        print(f"dotdo worker: {exc}", file=sys.stderr)
        return 2
    configure(spec.log_level, spec.options.log_format, worker=spec.index)
    quiet_libraries()
    try:
        kinds = load_kinds(spec.sources)
        if spec.kind_names is not None:
            by_name = {kind.__qualname__: kind for kind in kinds}
            missing = [name for name in spec.kind_names if name not in by_name]
            if missing:
                raise DotdoError(f"{', '.join(missing)} not found in {', '.join(spec.sources)}")
            kinds = [by_name[name] for name in spec.kind_names]
        run(kinds, spec.options, worker=spec)
    except (DotdoError, OSError) as exc:
        print(f"dotdo worker {spec.index}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

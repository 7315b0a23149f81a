"""The ``dotdo`` command."""

import sys


def main() -> None:
    print("dotdo: no commands yet", file=sys.stderr)
    sys.exit(2)

"""``python -m dotdo``: the same as the ``dotdo`` command."""

from dotdo.cli import main

main()

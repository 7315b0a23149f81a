"""One actor's private SQLite database, through apsw. Synchronous: no trio, no sockets.

This package is internal to dotdo and re-exports nothing: import a name from the module
that defines it (``dotdo.storage.database``, ``dotdo.storage.errors``...), or a public
name from ``dotdo``. So ``import dotdo.storage.options`` costs that module alone.
"""

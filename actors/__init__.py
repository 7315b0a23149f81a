"""The actor programming model: the ``DO`` base class (``base``), its method rules
(``methods``) and the example kinds (``examples``).

This package re-exports nothing, so that importing one of its modules costs that module
alone; the public names (``DO``, ``rpc``...) are exported by ``dotdo``.
"""

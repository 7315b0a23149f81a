"""How ``dotdo serve`` logs: as text for people (the default) or as JSON lines for
machines (``--log-format json``: one object a line with ``time``, ``level``,
``logger``, ``message``, the ``worker`` with several, and ``exception`` when one was
logged), and the access log (``--access-log``: a line per HTTP request and WebSocket
upgrade, on the ``dotdo.access`` logger, whatever ``--log-level`` says)."""

from __future__ import annotations

import datetime as dt
import json
import logging

ACCESS_LOGGER = "dotdo.access"
ACCESS_FORMAT = '%(h)s "%(m)s %(Uq)s HTTP/%(H)s" %(s)s %(b)s %(D)sus'
"""hypercorn's atoms: the client, the request line (method, path and query, protocol),
the status, the body's bytes, the time taken in microseconds."""
FORMATS = ("text", "json")


class JsonLines(logging.Formatter):
    """A record as one line of JSON (see the module)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            line["worker"] = self._worker
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, log_format: str = "text", worker: int | None = None) -> None:
    """Set the process's logging up: ``level`` (a logging level's name), ``log_format``
    (``text`` or ``json``), ``worker`` (its index, with several)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines(worker))
    else:
        tag = "" if worker is None else f"w{worker} "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def access_logger() -> logging.Logger:
    """The access log's logger: at INFO, so that ``--access-log`` is heard with any
    ``--log-level``."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    return logger

"""``dotdo.toml``: the options a project always passes to ``dotdo serve``, in a file.

``dotdo serve`` reads ``dotdo.toml`` in the directory it runs in when there is one (or
the file ``--config PATH`` names). Its ``[serve]`` table holds serve's options by their
long names, with dashes or underscores, as TOML values; what the command line says
wins::

    [serve]
    modules = ["app.py"]
    workers = 2
    data = "var/dotdo"
    idle-timeout = "2m"
    history = "7d"
    access-log = true
    env = { REGION = "eu" }

The table stands for the command line it spells out, and serve's own parser reads
it: each value goes through the same checks as on the command line (a duration is
``"2m"`` or ``120``, a flag ``true``); an unknown option or a bad value stops the
server before it starts, naming the file and the option.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

FILE = "dotdo.toml"
TABLE = "serve"


class ConfigError(Exception):
    """The file cannot be used (the message names it and what is wrong)."""


def serve_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The defaults the ``[serve]`` table of ``path`` gives ``parser`` (serve's): the
    table is turned into the command line it stands for and parsed by ``parser``, so
    each value is converted and checked as its option would be.

    Raises:
        ConfigError: The file is not TOML, has no usable table, names an unknown
            option, or gives a bad value.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(document) - {TABLE}
    if unknown:
        raise ConfigError(f"{path}: unknown table {sorted(unknown)[0]!r} (only [{TABLE}] is read)")
    table = document.get(TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table of options")
    words: list[str] = []
    for key, value in table.items():
        try:
            words += _words(key, value)
        except TypeError as exc:
            raise ConfigError(f"{path}: [{TABLE}] {key}: {exc}") from None
    exits, parser.exit_on_error = parser.exit_on_error, False
    try:
        given, extra = parser.parse_known_args(words)
        base, _ = parser.parse_known_args([])
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{path}: [{TABLE}] {exc}") from None
    finally:
        parser.exit_on_error = exits
    if extra:
        option = next((word for word in extra if word.startswith("--")), extra[0])
        raise ConfigError(f"{path}: unknown option {option.lstrip('-').split('=')[0]!r} in [{TABLE}] (see dotdo serve --help)")
    return {dest: value for dest, value in vars(given).items() if value != getattr(base, dest)}


def _words(key: str, value: Any) -> list[str]:
    """The command-line words of one option of the table."""
    if key == "modules":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("must be a list of module names or paths")
        return list(value)
    option = "--" + key.replace("_", "-")
    if key == "env":
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            raise TypeError("must be a table of KEY = value")
        return [word for k, v in value.items() for word in ("--env", f"{k}={_text(v)}")]
    if isinstance(value, bool):
        return [option] if value else []  # a flag (false: the default); another option says it wants a value
    if isinstance(value, (dict, list)):
        raise TypeError(f"must be a single value, not {value!r}")
    return [f"{option}={_text(value)}"]  # one word: a flag given a value is refused, never taken for a module


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)

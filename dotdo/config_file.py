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

Each value goes through the same checks as on the command line (a duration is
``"2m"`` or ``120``); an unknown option or a bad value stops the server before it
starts, naming the file and the option.
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
    """The defaults the ``[serve]`` table of ``path`` gives ``parser`` (serve's), each
    converted and checked as its command-line option would be.

    Raises:
        ConfigError: The file is not TOML, has no usable table, names an unknown
            option, or gives a bad value.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    table = document.get(TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table of options")
    unknown = set(document) - {TABLE}
    if unknown:
        raise ConfigError(f"{path}: unknown table {sorted(unknown)[0]!r} (only [{TABLE}] is read)")
    # argparse lists a parser's options only in this attribute (it has no public way).
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise ConfigError(f"{path}: unknown option {key!r} in [{TABLE}] (known: {known})")
        try:
            defaults[dest] = _converted(action, value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: [{TABLE}] {key}: {exc}") from None
    return defaults


def _converted(action: argparse.Action, value: Any) -> Any:
    if action.nargs == 0:  # a flag (store_true: const True)
        if not isinstance(value, bool):
            raise TypeError(f"must be true or false, not {value!r}")
        return value if action.const is True else not value
    if action.dest == "env":
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            raise TypeError("must be a table of KEY = value")
        return [(str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()]
    if action.nargs in ("*", "+"):
        if not isinstance(value, list):
            raise TypeError(f"must be a list, not {value!r}")
        return [_one(action, item) for item in value]
    return _one(action, value)


def _one(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, (dict, list)):
        raise TypeError(f"must be a single value, not {value!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    converted = action.type(text) if callable(action.type) else text  # type: ignore[operator]
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}, not {value!r}")
    return converted

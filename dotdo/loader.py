"""Find the actor kinds to serve in modules named on the command line."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from dotdo.actors.base import DO
from dotdo.storage.errors import DotdoError


def load_module(spec: str) -> ModuleType:
    """Import a module by dotted name, or a ``.py`` file by path.

    Raises:
        DotdoError: The module cannot be found or fails to import (with the reason).
    """
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise DotdoError(f"no such file: {spec}")
        name = f"dotdo_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise DotdoError(f"cannot import {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise DotdoError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from exc
        return module
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise DotdoError(f"no module named {spec!r} ({exc})") from exc
    except Exception as exc:
        raise DotdoError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from exc


def kinds_in(module: ModuleType) -> list[type[DO]]:
    """Every ``DO`` subclass reachable as a name in ``module``, in definition order."""
    found: list[type[DO]] = []
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, DO) and value is not DO and value not in found:
            found.append(value)
    return found


def load_kinds(specs: list[str]) -> list[type[DO]]:
    """The kinds in every module of ``specs``.

    Raises:
        DotdoError: A module fails to import or holds no ``DO`` subclass.
    """
    kinds: list[type[DO]] = []
    for spec in specs:
        found = kinds_in(load_module(spec))
        if not found:
            raise DotdoError(f"{spec} defines no actor kind (no subclass of dotdo.DO)")
        kinds.extend(k for k in found if k not in kinds)
    return kinds

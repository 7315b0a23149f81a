"""The project's sources as the tests see them: the repository's root, and each import
package with the folder it is installed from (pyproject.toml's ``package-dir``)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def package_dirs() -> dict[str, Path]:
    """Each package with a folder of its own and that folder: ``dotdo`` in ``dotdo/``,
    ``dotdo.storage`` in ``storage/``..."""
    return {package: ROOT / folder for package, folder in pyproject()["tool"]["setuptools"]["package-dir"].items()}


def modules(under: str = "dotdo") -> Iterator[tuple[str, Path]]:
    """Every module of the sources in package ``under``: its name as installed and its file."""
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts[:-1]) if parts[-1] == "__init__" else (package, *parts))
            if name == under or name.startswith(under + "."):
                yield name, path

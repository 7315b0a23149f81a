"""Which checkout's code a benchmark runs: this one, or the one given by ``--vs DIR``.

A process runs a checkout's code when the checkout is first on its ``sys.path``, except
for the packages the checkout maps into dotdo's namespace (its pyproject.toml's
``[tool.setuptools.package-dir]``: ``dotdo.runtime`` is the folder ``runtime/``). An
editable install resolves those to the checkout it was made from, whichever checkout
is first on the path; so ``install`` puts a finder ahead of it that maps them to the
folders of the checkout asked for. A checkout without that table (the layout before
issue 18, with top-level ``actors``, ``runtime``, ``storage``) needs only the path.

In a subprocess, ``env`` does the same: the checkout is first on ``PYTHONPATH``, and
ahead of it ``checkout_site/``, whose ``sitecustomize`` calls ``install`` when
``BENCH_CHECKOUT`` names a checkout; the worker processes that ``dotdo serve`` starts
inherit both. ``verify`` asks a subprocess where it finds dotdo and the supervisor,
and stops the benchmark when either is not inside the checkout.

This module uses the standard library only: ``sitecustomize`` loads it before anything
else is importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SITE = HERE / "checkout_site"
VARIABLE = "BENCH_CHECKOUT"


def packages(tree: Path) -> dict[str, Path]:
    """The packages ``tree`` places under other names, each with its folder (empty for
    a checkout whose packages are its top-level folders)."""
    try:
        with open(tree / "pyproject.toml", "rb") as file:
            config = tomllib.load(file)
    except FileNotFoundError:
        return {}
    mapping = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {name: tree / folder for name, folder in mapping.items() if name}


def supervisor_module(tree: Path) -> str:
    """Where ``tree`` defines the Supervisor: ``dotdo.runtime.supervisor``, or
    ``runtime.supervisor`` in the layout before issue 18."""
    return "dotdo.runtime.supervisor" if "dotdo.runtime" in packages(tree) else "runtime.supervisor"


class CheckoutFinder:
    """Finds the packages of one checkout's ``package-dir`` table in its folders."""

    def __init__(self, folders: Mapping[str, Path]) -> None:
        self.folders = dict(folders)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None  # a submodule: found in its package's __path__, the checkout's folder
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def install(tree: Path) -> None:
    """Make this process import ``tree``'s code: first on ``sys.path``, and its mapped
    packages found in its folders ahead of any editable install."""
    tree = tree.resolve()
    sys.path.insert(0, str(tree))
    folders = packages(tree)
    if folders:
        sys.meta_path.insert(0, CheckoutFinder(folders))


def env(tree: Path, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment of a subprocess that runs ``tree``'s code (and of the processes
    it starts); run it with ``cwd=tree`` so that ``python -m`` puts nothing else first."""
    tree = tree.resolve()
    path = [str(SITE), str(tree), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
    return {**base, "PYTHONPATH": os.pathsep.join(path), VARIABLE: str(tree)}


def verify(tree: Path) -> None:
    """Stop the benchmark unless a subprocess under ``env(tree)`` imports dotdo and the
    Supervisor from inside ``tree``."""
    tree = tree.resolve()
    probe = (
        "import importlib, json, sys; "
        "print(json.dumps([importlib.import_module(name).__file__ for name in sys.argv[1:]]))"
    )
    names = ["dotdo", supervisor_module(tree)]
    done = subprocess.run(
        [sys.executable, "-c", probe, *names], capture_output=True, text=True, cwd=tree, env=env(tree)
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: cannot import {', '.join(names)}:\n{done.stderr}")
    for name, file in zip(names, json.loads(done.stdout.splitlines()[-1])):
        if not Path(file).resolve().is_relative_to(tree):
            raise SystemExit(f"{tree}: {name} is imported from {file}, not from the checkout")

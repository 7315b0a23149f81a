"""The architecture's rules, read from the source tree (dotdo/, actors/, runtime/,
storage/) with ``ast``: nothing is imported, so a broken rule is found before it runs.

(a) The layers are imported by their installed names only (``dotdo.storage``...): a
    top-level ``storage``, ``runtime`` or ``actors`` exists only in a checkout, and a
    user's own ``storage.py`` would be found instead.
(b) Dependencies point one way, ``dotdo -> actors -> runtime -> storage``: storage
    imports nothing of dotdo but dotdo.storage, and neither trio, starlette, hypercorn nor
    httpx; runtime imports of dotdo only dotdo.runtime and dotdo.storage; actors import of
    dotdo only dotdo.actors, dotdo.runtime and dotdo.storage.
(c) The turn core (dotdo.runtime.core) imports nothing of the services, the placement,
    the transport or the supervisor: they are built on it and register hooks with it.
    Imports under ``if TYPE_CHECKING:`` count too: a type named is a dependency, and a
    cycle that only the type checker sees is still a cycle.
(d) No module uses another module's private names: no ``from x import _name``, and no
    ``obj._name`` where ``obj`` is not ``self`` or ``cls`` and ``_name`` is not defined
    in the same module (as a function or method, a class attribute, a ``self._name``
    assignment or a ``__slots__`` entry). Dunders and the NamedTuple API (``_replace``,
    ``_make``, ``_asdict``, ``_fields``) are public.

Every rule counts all imports of a module: at the top, inside functions, and under
``TYPE_CHECKING``. Each test fails listing every violation, one a line.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.sources import ROOT, modules

NAMEDTUPLE_API = {"_replace", "_make", "_asdict", "_fields", "_field_defaults"}
IO_FRAMEWORKS = ("trio", "starlette", "hypercorn", "httpx")


@dataclass(frozen=True)
class Import:
    """One module named by an import statement of a source module."""

    module: str  # the importing module, as installed
    path: Path
    line: int
    target: str  # the imported module, absolute: a name imported from a module counts as that module
    typing_only: bool  # under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        where = " (under TYPE_CHECKING)" if self.typing_only else ""
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module} imports {self.target}{where}"


def within(name: str, *packages: str) -> bool:
    """Whether module ``name`` is one of ``packages`` or inside one."""
    return any(name == package or name.startswith(package + ".") for package in packages)


@functools.cache
def sources() -> dict[str, tuple[Path, ast.Module]]:
    return {name: (path, ast.parse(path.read_text(), str(path))) for name, path in modules()}


def imports() -> Iterator[Import]:
    """Every import of every source module, relative ones resolved."""
    known = set(sources())
    for module, (path, tree) in sources().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for statement in node.body
            for inner in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, path, node.lineno, alias.name, id(node) in typing_only)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in known else base
                    yield Import(module, path, node.lineno, target, id(node) in typing_only)


def violations(rule: str, found: list[str]) -> str:
    """The assertion message: the rule, then each violation (``path:line: what``) in order."""

    def order(line: str) -> tuple[str, int, str]:
        path, number, what = line.split(":", 2)
        return path, int(number), what

    lines = sorted(set(found), key=order)
    return f"{len(lines)} violation(s) of {rule}:\n" + "\n".join(lines)


def test_a_no_top_level_layer_is_imported() -> None:
    found = [str(i) for i in imports() if i.target.split(".")[0] in ("storage", "runtime", "actors")]
    assert not found, violations("(a) layers imported by their installed names", found)


def dependency_breaks() -> Iterator[str]:
    for i in imports():
        if within(i.module, "dotdo.storage"):
            broken = (within(i.target, "dotdo") and not within(i.target, "dotdo.storage")) or within(i.target, *IO_FRAMEWORKS)
        elif within(i.module, "dotdo.runtime"):
            broken = within(i.target, "dotdo") and not within(i.target, "dotdo.runtime", "dotdo.storage")
        elif within(i.module, "dotdo.actors"):
            broken = within(i.target, "dotdo") and not within(i.target, "dotdo.actors", "dotdo.runtime", "dotdo.storage")
        else:
            broken = False
        if broken:
            yield str(i)


def test_b_dependencies_point_one_way() -> None:
    found = list(dependency_breaks())
    assert not found, violations("(b) dotdo -> actors -> runtime -> storage", found)


def test_c_the_turn_core_imports_nothing_built_on_it() -> None:
    above = ("dotdo.runtime.services", "dotdo.runtime.placement", "dotdo.runtime.transport", "dotdo.runtime.supervisor")
    found = [str(i) for i in imports() if within(i.module, "dotdo.runtime.core") and within(i.target, *above)]
    assert not found, violations("(c) the turn core imports no service, placement, transport or supervisor", found)


def defined_privately(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions and methods, class attributes,
    ``self._name`` assignments and ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets: list[ast.expr] = []
                if isinstance(statement, ast.Assign):
                    targets = statement.targets
                elif isinstance(statement, ast.AnnAssign):
                    targets = [statement.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                        if target.id == "__slots__" and statement.value is not None:
                            names.update(slot for slot in _strings(statement.value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                    names.add(target.attr)
    return {name for name in names if name.startswith("_")}


def _strings(node: ast.expr) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _strings(element)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in NAMEDTUPLE_API


def private_uses() -> Iterator[str]:
    for module, (path, tree) in sources().items():
        own = defined_privately(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if is_private(alias.name):
                        yield f"{where}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}"
            elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own:
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                yield f"{where}:{node.lineno}: {ast.unparse(node)[:100]}"


def test_d_no_module_uses_another_modules_private_names() -> None:
    found = list(private_uses())
    assert not found, violations("(d) private names stay in their module", found)

"""Finding actor kinds in modules named on the command line (``dotdo.loader``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dotdo import DO, DotdoError
from dotdo.loader import kinds_in, load_kinds, load_module

USER_MODULE = '''
from dotdo import DO


class Helper:
    pass


class Greeter(DO):
    async def hello(self, name: str) -> str:
        return f"hello {name}"


class Farewell(DO):
    async def bye(self) -> str:
        return "bye"


Alias = Greeter
'''


@pytest.fixture(autouse=True)
def restore_import_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The loader adds to sys.path and sys.modules: undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("dotdo_user_", "loader_probe_")):
            del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_file_by_path(tmp_path: Path) -> None:
    module = load_module(str(write(tmp_path / "loader_probe_file.py", USER_MODULE)))
    assert module.__name__ == "dotdo_user_loader_probe_file"
    assert sys.modules[module.__name__] is module
    assert [k.__name__ for k in kinds_in(module)] == ["Greeter", "Farewell"]  # definition order, no duplicates
    assert str(tmp_path) in sys.path  # its siblings can be imported


def test_a_file_importing_a_sibling(tmp_path: Path) -> None:
    write(tmp_path / "loader_probe_sibling.py", "VALUE = 'from the sibling'\n")
    path = write(
        tmp_path / "loader_probe_main.py",
        "from loader_probe_sibling import VALUE\nfrom dotdo import DO\n\nclass Uses(DO):\n    value = VALUE\n",
    )
    [kind] = load_kinds([str(path)])
    assert kind.value == "from the sibling"  # type: ignore[attr-defined]


def test_a_dotted_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [k.__name__ for k in load_kinds(["dotdo.actors.examples"])] == ["ChatRoom", "Counter", "Customer", "Order"]
    package = tmp_path / "loader_probe_pkg"
    package.mkdir()
    write(package / "__init__.py", "")
    write(package / "kinds.py", USER_MODULE)
    monkeypatch.chdir(tmp_path)  # dotted names are also looked up in the working folder
    assert [k.__name__ for k in load_kinds(["loader_probe_pkg.kinds"])] == ["Greeter", "Farewell"]


def test_several_modules_without_duplicates(tmp_path: Path) -> None:
    path = str(write(tmp_path / "loader_probe_dup.py", "from dotdo.actors.examples import Counter\n"))
    kinds = load_kinds(["dotdo.actors.examples", path])
    assert [k.__name__ for k in kinds] == ["ChatRoom", "Counter", "Customer", "Order"]


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DotdoError, match="no such file: .*missing.py"):
        load_module(str(tmp_path / "missing.py"))


def test_a_missing_module() -> None:
    with pytest.raises(DotdoError, match="no module named 'loader_probe_nowhere'"):
        load_module("loader_probe_nowhere")


def test_a_file_that_fails_to_import(tmp_path: Path) -> None:
    path = write(tmp_path / "loader_probe_broken.py", "raise RuntimeError('broken on purpose')\n")
    with pytest.raises(DotdoError, match="importing .*loader_probe_broken.py failed: RuntimeError: broken on purpose"):
        load_module(str(path))
    assert "dotdo_user_loader_probe_broken" not in sys.modules


def test_a_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "loader_probe_syntax.py", "def (:\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DotdoError, match="importing loader_probe_syntax failed: SyntaxError"):
        load_module("loader_probe_syntax")


def test_a_module_without_kinds(tmp_path: Path) -> None:
    path = str(write(tmp_path / "loader_probe_empty.py", "from dotdo import DO\nx = 1\n"))
    with pytest.raises(DotdoError, match="defines no actor kind"):
        load_kinds([path])


def test_kinds_in_ignores_do_itself() -> None:
    import types

    module = types.ModuleType("loader_probe_synthetic")
    module.DO = DO  # type: ignore[attr-defined]
    module.number = 3  # type: ignore[attr-defined]
    assert kinds_in(module) == []

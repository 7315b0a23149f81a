"""A fresh installation, as a new user makes it: ``pip install`` of this repository into a
new virtual environment, then an app of the user's own served with the environment's
``dotdo`` command; and an editable installation, as a developer makes it.

It lives at the top of tests/ because it tests the distribution (pyproject.toml: which
packages go where), not one package. The environments see the system's site-packages, so
the dependencies already installed are reused and pip installs this project alone
(``--no-deps``). Where the interpreter can build the project itself (setuptools >= 68,
with wheel or setuptools >= 70.1) pip builds without isolation and nothing is fetched;
elsewhere pip fetches the two build requirements pyproject.toml names from the index, as
a user's pip does. When an environment cannot be made, the test skips, except under CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.dotdo.serving import dotdo, dotdo_serve, stop
from tests.sources import ROOT, modules, package_dirs, pyproject

VERSION = pyproject()["project"]["version"]
INSTALL_TIMEOUT = 120

# A user's app whose own modules are named like dotdo's layers: with the layers
# installed at the top of site-packages, one of the two shadowed the other
# (``AttributeError: module 'storage' has no attribute 'BUCKET'``).
APP = {
    "storage.py": "BUCKET = 1\n",
    "runtime.py": "def name() -> str:\n    return 'the user runtime'\n",
    "actors.py": "GREETING = 'hello'\n",
    "app.py": textwrap.dedent(
        """
        import actors
        import runtime
        import storage
        from dotdo import DO


        class Greeter(DO):
            async def greet(self, who: str) -> dict:
                count = (self.storage.get("count") or 0) + 1
                self.storage.put("count", count)
                text = f"{actors.GREETING}, {who}"
                return {"text": text, "bucket": storage.BUCKET, "runtime": runtime.name(), "count": count}
        """
    ),
}

# What the user's modules and dotdo's layers resolve to, seen from the app's folder.
_RESOLVED = """
import json, app, actors, runtime, storage
import dotdo, dotdo.actors.base, dotdo.runtime.supervisor, dotdo.storage.database
print(json.dumps({
    "app": app.__file__, "storage": storage.__file__, "runtime": runtime.__file__,
    "actors": actors.__file__, "bucket": storage.BUCKET, "is_do": issubclass(app.Greeter, dotdo.DO),
    "dotdo": dotdo.__file__, "dotdo.storage": dotdo.storage.database.__file__,
    "dotdo.runtime": dotdo.runtime.supervisor.__file__, "dotdo.actors": dotdo.actors.base.__file__,
}))
"""

# Run at the checkout's root with no editable installation anywhere (this machine's own
# is hidden): the quick start's ``python -m dotdo serve`` after ``pip install .``.
_AT_THE_ROOT = """
import json, sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
import dotdo, dotdo.actors.examples, dotdo.runtime.supervisor, dotdo.storage.database
print(json.dumps({
    "dotdo": dotdo.__file__, "dotdo.storage": dotdo.storage.database.__file__,
    "dotdo.runtime": dotdo.runtime.supervisor.__file__, "dotdo.actors": dotdo.actors.examples.__file__,
}))
"""


class Environment:
    """A virtual environment over the system's site-packages, with this project
    installed in it: from ``source``, or editable from the repository."""

    def __init__(self, where: Path, *, source: Path | None = None) -> None:
        self.python = where / "bin" / "python"
        self.dotdo = where / "bin" / "dotdo"
        _make_venv(where)
        command = [str(self.python), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
        if self._builds_without_isolation():
            command.append("--no-build-isolation")
        command += ["-e", str(ROOT)] if source is None else [str(source)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=where, env=_clean(), timeout=INSTALL_TIMEOUT)
        assert done.returncode == 0, done.stdout + done.stderr
        self.site_packages = Path(self.run("import sysconfig; print(sysconfig.get_path('purelib'))", cwd=where).strip())

    def _builds_without_isolation(self) -> bool:
        probe = (
            "import importlib.util, setuptools\n"
            "major, minor = (int(part) for part in setuptools.__version__.split('.')[:2])\n"
            "print((major, minor) >= (68, 0) and ((major, minor) >= (70, 1) or bool(importlib.util.find_spec('wheel'))))"
        )
        done = subprocess.run([str(self.python), "-c", probe], capture_output=True, text=True, env=_clean(), timeout=30)
        return done.stdout.strip() == "True"

    def run(self, code: str, *, cwd: Path) -> str:
        """What the environment's python prints running ``code`` in ``cwd``."""
        done = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, cwd=cwd, env=_clean(), timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def top_level(self) -> set[str]:
        """What this project put at the top of site-packages (the environment starts empty)."""
        return {entry.name for entry in self.site_packages.iterdir() if entry.name != "__pycache__"}


def _clean() -> dict[str, str]:
    """This environment without what would import dotdo from elsewhere than the installation."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("DOTDO_")}


def _make_venv(where: Path) -> None:
    """A virtual environment in ``where`` over the system's site-packages (and its pip);
    when none can be made, the test skips, or fails under CI."""
    command = [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        failure = None if done.returncode == 0 else done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = repr(exc)
    if failure is not None:
        message = f"cannot make a virtual environment: {failure}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def checkout(where: Path) -> Path:
    """A copy of what building the project reads, as a fresh clone has it: a build in
    the repository itself would leave build/ there, and a later build would ship what
    build/ still holds of modules since renamed."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, where / name)
    for folder in {path.relative_to(ROOT) for path in package_dirs().values()}:
        shutil.copytree(ROOT / folder, where / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return where


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    source = checkout(tmp_path_factory.mktemp("checkout"))
    return Environment(tmp_path_factory.mktemp("venv-regular"), source=source)


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    return Environment(tmp_path_factory.mktemp("venv-editable"))


def make_app(folder: Path) -> Path:
    folder.mkdir()
    for name, text in APP.items():
        (folder / name).write_text(text)
    return folder


def test_an_installation_puts_only_dotdo_in_site_packages(installed: Environment) -> None:
    assert installed.top_level() == {"dotdo", f"dotdo-{VERSION}.dist-info"}
    # Every module of the four source folders, and nothing else, under dotdo/.
    sources = {name for name, _ in modules()}
    shipped = {
        ".".join(path.relative_to(installed.site_packages).with_suffix("").parts).removesuffix(".__init__")
        for path in (installed.site_packages / "dotdo").rglob("*.py")
    }
    assert shipped == sources
    for package in ("dotdo", "dotdo/actors", "dotdo/runtime", "dotdo/storage"):
        assert (installed.site_packages / package / "py.typed").is_file(), package
    assert installed.dotdo.is_file()


async def test_a_users_app_with_its_own_storage_module_is_served(
    installed: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path / "app")
    resolved = json.loads(installed.run(_RESOLVED, cwd=app))
    assert {k: resolved[k] for k in ("app", "storage", "runtime", "actors")} == {
        k: str(app / f"{k}.py") for k in ("app", "storage", "runtime", "actors")
    }
    assert resolved["bucket"] == 1 and resolved["is_do"]
    for layer in ("dotdo", "dotdo.storage", "dotdo.runtime", "dotdo.actors"):
        assert Path(resolved[layer]).is_relative_to(installed.site_packages / "dotdo"), (layer, resolved[layer])

    for name in ("PYTHONPATH", "PYTHONHOME"):  # the helpers pass this environment on
        monkeypatch.delenv(name, raising=False)
    program = (str(installed.dotdo),)
    async with dotdo_serve(app, "app.py", "--data", str(tmp_path / "data"), program=program) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            response = await client.post("/_rpc/Greeter/alice/greet", json={"args": ["http"]})
        assert response.status_code == 200, response.text
        expected = {"bucket": 1, "runtime": "the user runtime"}
        assert response.json()["result"] == {"text": "hello, http", "count": 1, **expected}
        done = await dotdo("call", "Greeter", "alice", "greet", "cli", "--url", served.url, cwd=app, program=program)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"text": "hello, cli", "count": 2, **expected}
        assert await stop(served, signal.SIGINT) == 0
    assert "Traceback" not in served.errors()


def test_a_process_started_at_the_checkout_s_root_runs_the_checkout(installed: Environment) -> None:
    """``python -m dotdo`` (or pytest) at the root imports the checkout's ``dotdo/``
    before the installation's; its layers are then found beside it, not half in the
    installation and half missing."""
    resolved = json.loads(installed.run(_AT_THE_ROOT, cwd=ROOT))
    assert resolved == {
        "dotdo": str(ROOT / "dotdo" / "__init__.py"),
        "dotdo.storage": str(ROOT / "storage" / "database.py"),
        "dotdo.runtime": str(ROOT / "runtime" / "supervisor.py"),
        "dotdo.actors": str(ROOT / "actors" / "examples.py"),
    }


def test_an_editable_installation_maps_the_layers_inside_dotdo(editable: Environment, tmp_path: Path) -> None:
    assert not {"actors", "runtime", "storage"} & editable.top_level()
    app = make_app(tmp_path / "app")
    resolved = json.loads(editable.run(_RESOLVED, cwd=app))
    assert resolved["storage"] == str(app / "storage.py") and resolved["bucket"] == 1
    assert resolved["dotdo"] == str(ROOT / "dotdo" / "__init__.py")
    for layer, folder in (("dotdo.storage", "storage"), ("dotdo.runtime", "runtime"), ("dotdo.actors", "actors")):
        assert Path(resolved[layer]).is_relative_to(ROOT / folder), (layer, resolved[layer])
    # The repository's root is not on the path: its folders are no top-level packages.
    found = editable.run("import importlib.util as u; print([u.find_spec(n) for n in ('actors', 'runtime', 'storage')])", cwd=tmp_path)
    assert found.strip() == "[None, None, None]"


def test_the_license_file_is_the_declared_license() -> None:
    project = pyproject()["project"]
    declared = project["license"]["text"]
    assert (ROOT / "LICENSE").read_text().splitlines()[0] == f"{declared} License"
    assert f"License :: OSI Approved :: {declared} License" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"] and (ROOT / "dotdo" / "py.typed").exists()


_TYPED = '''
from dotdo import DO, S


class Customer(DO):
    async def notify(self, message: str) -> int:
        return 1


async def main() -> None:
    size: int = await S.get(Customer, "alice").notify("hi")
    await S.get(Customer, "alice").notify(123)
    await S.get(Customer, "alice").notfy("hi")
'''


def test_a_type_checker_holds_typed_stubs_to_the_actor_class(installed: Environment, tmp_path: Path) -> None:
    """``S.get(Customer, name)`` is typed as the class: mypy (over the installed,
    ``py.typed`` package) accepts the right call and reports the wrong argument and the
    misspelt method, on their lines."""
    (tmp_path / "typed_app.py").write_text(_TYPED)
    command = [str(installed.python), "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "typed_app.py"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=_clean(), timeout=300)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["12", "13"], done.stdout + done.stderr
    assert 'incompatible type "int"; expected "str"' in errors[0] and '"Customer" has no attribute "notfy"' in errors[1]

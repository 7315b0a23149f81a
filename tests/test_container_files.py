"""The container files: ``Dockerfile``, ``.dockerignore`` and ``compose.yaml`` (a
3-node cluster over one etcd).

No Docker daemon runs where the tests run, so the files are read, not built: the
Dockerfile by a small parser of its own (instructions, line continuations, the exec
form), compose.yaml with PyYAML. What can run without Docker does: the image's command
is served from a fresh installation (test_install's environment), its health check
passes against it, and SIGTERM stops it with 0.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.dotdo.serving import dotdo_serve, environment, stop
from tests.sources import ROOT, package_dirs, pyproject
from tests.test_install import Environment, installed  # noqa: F401 (a fixture)

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"

UID = 10001
HTTP_PORT = 8787
RPC_PORT = 8788
HEALTH_TIMEOUT = 30


# -- the Dockerfile, read by hand ------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    args: str  # the rest, continuations joined
    line: int  # where it starts (1-based)


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions: comment lines (parser directives included) and
    blank lines dropped, a line ending in a backslash joined with the next (comment
    lines inside a continuation are dropped too, as Docker does)."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"
    return found


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """``--name=value`` flags at the start of ``args``, and what follows them."""
    flags: dict[str, str] = {}
    rest = args
    while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s+", rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    return flags, rest.strip()


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD (or HEALTHCHECK CMD, COPY...)."""
    assert args.startswith("["), f"not the exec form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and value and all(isinstance(item, str) for item in value), args
    return value


@dataclass
class Stage:
    base: str
    name: str | None
    body: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.body if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [found] = self.all(keyword)
        return found


def stages() -> list[Stage]:
    found: list[Stage] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            _, rest = split_flags(instruction.args)
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), instruction
            found.append(Stage(words[0], name, []))
        else:
            assert found, f"{instruction.keyword} before any FROM"
            found[-1].body.append(instruction)
    assert found, "no FROM"
    return found


def final_stage() -> Stage:
    return stages()[-1]


def image_command() -> list[str]:
    return exec_form(final_stage().one("CMD").args)


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command (its options dropped); only the exec form: the test runs it."""
    _, rest = split_flags(final_stage().one("HEALTHCHECK").args)
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", rest
    return exec_form(command.strip())


def copy_sources() -> Iterator[tuple[Instruction, str]]:
    """Every COPY/ADD source taken from the build context (not ``--from`` a stage)."""
    for stage in stages():
        for instruction in stage.body:
            if instruction.keyword not in ("COPY", "ADD"):
                continue
            flags, rest = split_flags(instruction.args)
            if "from" in flags:
                continue
            words = exec_form(rest) if rest.startswith("[") else shlex.split(rest)
            assert len(words) >= 2, instruction
            for source in words[:-1]:
                yield instruction, source


# -- .dockerignore ---------------------------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` (cleaned) names ``path`` or one of the folders above it.
    fnmatch's ``*`` crosses ``/`` where Docker's does not: this errs toward ignoring."""
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        prefix = "/".join(parts[:end])
        if fnmatch.fnmatchcase(prefix, pattern):
            return True
        if pattern.startswith("**/"):
            tails = ("/".join(parts[begin:end]) for begin in range(end))
            if any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails):
                return True
    return False


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (relative, with ``/``): the last
    matching pattern decides, ``!`` takes back."""
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = pattern.removeprefix("!").strip().strip("/")
        if cleaned and _matches(cleaned, path):
            result = not negated
    return result


# -- compose.yaml ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    with COMPOSE.open() as file:
        return yaml.safe_load(file)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` (the last one, as argparse takes)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name:
            assert i + 1 < len(args), f"{name} has no value"
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def seconds(duration: str | int) -> float:
    """A compose duration (``60s``, ``1m30s``, ``90``) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def nodes() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if command_of(s)[:2] == ["dotdo", "serve"]}


def named_volume(mount: str | dict[str, Any], target: str) -> str | None:
    """The named volume mounted at ``target`` by ``mount`` (short or long syntax)."""
    if isinstance(mount, dict):
        return mount.get("source") if mount.get("type", "volume") == "volume" and mount.get("target") == target else None
    source, _, rest = mount.partition(":")
    return source if rest.split(":")[0] == target and not source.startswith((".", "/", "~")) else None


def published(port: str | int | dict[str, Any]) -> tuple[int, int]:
    """(host port, container port) of a published port."""
    if isinstance(port, dict):
        return int(port["published"]), int(port["target"])
    *_, host, container = str(port).split(":")
    return int(host), int(container.split("/")[0])


# -- the Dockerfile --------------------------------------------------------------------


def test_every_stage_is_a_slim_official_python_of_a_pinned_minor_version() -> None:
    names = {stage.name for stage in stages() if stage.name}
    for stage in stages():
        if stage.base in names:
            continue
        match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?", stage.base)
        assert match, f"{stage.base}: not python:X.Y-slim"
        # The image's Python is one the project supports.
        required = re.fullmatch(r">=\s*(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
        assert required, "requires-python is no longer a plain >=X.Y: update this test"
        version = (int(match[1]), int(match[2]))
        assert version >= (int(required[1]), int(required[2])), stage.base


def test_the_image_runs_as_an_unprivileged_user() -> None:
    stage = final_stage()
    users = stage.all("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1]
    assert user.line < stage.one("CMD").line
    name, _, group = user.args.partition(":")
    if not name.isdigit():  # a name: the uid useradd gives it
        runs = " ".join(i.args for i in stage.all("RUN"))
        assert re.search(rf"useradd\b[^;&|]*--uid {UID}\b[^;&|]*\b{re.escape(name)}\b", runs), user
    else:
        assert int(name) == UID, user
    assert not group or group in ("dotdo", str(UID)), user
    runs = " ".join(i.args for i in stage.all("RUN"))
    assert re.search(rf"groupadd\b[^;&|]*--gid {UID}\b[^;&|]*\bdotdo\b", runs)
    assert re.search(rf"useradd\b[^;&|]*--uid {UID}\b[^;&|]*\bdotdo\b", runs)


def test_data_is_a_volume_the_user_owns() -> None:
    stage = final_stage()
    [volume] = stage.all("VOLUME")
    declared = exec_form(volume.args) if volume.args.startswith("[") else volume.args.split()
    assert "/data" in declared
    chowns = [i for i in stage.all("RUN") if re.search(rf"chown\s+(-R\s+)?(dotdo|{UID})(:(dotdo|{UID}))?\s+/data\b", i.args)]
    # Owned before VOLUME: what a new named volume copies from the image.
    assert chowns and chowns[0].line < volume.line
    assert stage.all("WORKDIR")


def test_it_exposes_both_ports_and_checks_its_health_over_http() -> None:
    exposed = {word.split("/")[0] for i in final_stage().all("EXPOSE") for word in i.args.split()}
    assert {str(HTTP_PORT), str(RPC_PORT)} <= exposed
    health = healthcheck_command()
    assert health[0] in ("python", "python3") and health[1] == "-c"
    assert f"http://127.0.0.1:{HTTP_PORT}/_health" in health[2] and "urllib" in health[2]


def test_the_command_is_dotdo_serve_on_every_interface_with_data_in_the_volume() -> None:
    command = image_command()
    assert command[:2] == ["dotdo", "serve"]
    assert option(command, "--host") == "0.0.0.0" and option(command, "--data") == "/data"
    assert not final_stage().all("ENTRYPOINT"), "compose.yaml's commands replace CMD alone"


def test_pip_installs_without_a_cache() -> None:
    installs = [i for stage in stages() for i in stage.all("RUN") if "pip install" in i.args]
    assert installs
    for install in installs:
        assert "--no-cache-dir" in install.args, install


def test_every_copied_source_exists_and_is_in_the_build_context() -> None:
    patterns = ignore_patterns()
    copied: set[Path] = set()
    for instruction, source in copy_sources():
        matches = sorted(ROOT.glob(source.rstrip("/"))) if any(c in source for c in "*?[") else [ROOT / source]
        assert matches and all(m.exists() for m in matches), f"line {instruction.line}: {source} is not in the repository"
        for match in matches:
            relative = match.relative_to(ROOT).as_posix()
            assert not ignored(relative, patterns), f"line {instruction.line}: .dockerignore leaves out {relative}"
            if match.is_dir():
                for file in match.rglob("*"):
                    if file.is_file() and (file.suffix == ".py" or file.name == "py.typed"):
                        inner = file.relative_to(ROOT).as_posix()
                        assert not ignored(inner, patterns), f".dockerignore leaves out {inner}"
            copied.add(match.resolve())
    # What building reads: pyproject.toml, its readme, every package-dir folder.
    needed = {ROOT / "pyproject.toml", ROOT / pyproject()["project"]["readme"], *package_dirs().values()}
    assert {path.resolve() for path in needed} <= copied


def test_the_build_context_leaves_out_local_state() -> None:
    patterns = ignore_patterns()
    for path in (".git", ".venv", "dotdo/__pycache__", "storage/x.pyc", "dotdo.egg-info", "dotdo-data",
                 ".pytest_cache", ".hypothesis", ".mypy_cache", ".benchmarks"):  # fmt: skip
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "dotdo/cli.py", "runtime/supervisor.py"):
        assert not ignored(path, patterns), path


def test_the_ignore_matcher_follows_docker() -> None:
    assert ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert ignored("__pycache__", ["**/__pycache__"])
    assert ignored(".git/HEAD", [".git"])
    assert not ignored("keep.md", ["*.md", "!keep.md"])
    assert ignored("other.md", ["*.md", "!keep.md"])
    assert not ignored("dotdo/cli.py", ["/dotdo-data/"])


# -- compose.yaml ----------------------------------------------------------------------


def test_etcd_is_the_official_image_at_a_pinned_release() -> None:
    etcd = compose()["services"]["etcd"]
    image, _, tag = etcd["image"].partition(":")
    assert image == "quay.io/coreos/etcd"
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"{etcd['image']}: not a release tag (latest and no tag are not pinned)"
    assert tuple(int(n) for n in match.groups()) >= (3, 5, 0)


def test_etcd_listens_for_the_nodes_keeps_its_data_and_is_health_checked() -> None:
    spec = compose()
    etcd = spec["services"]["etcd"]
    command = command_of(etcd)
    assert "0.0.0.0:2379" in (option(command, "--listen-client-urls") or "")
    assert option(command, "--advertise-client-urls") == "http://etcd:2379"
    data_dir = option(command, "--data-dir")
    assert data_dir
    [volume] = [v for m in etcd.get("volumes", []) if (v := named_volume(m, data_dir))]
    assert volume in spec["volumes"]
    test = etcd["healthcheck"]["test"]
    words = shlex.split(test) if isinstance(test, str) else test
    assert words[0] in ("CMD", "CMD-SHELL") and "etcdctl" in words[1] and words[-2:] == ["endpoint", "health"]
    assert not etcd.get("ports"), "etcd is for the nodes alone: not published"


def test_three_dotdo_nodes_join_the_cluster_each_under_its_own_name() -> None:
    found = nodes()
    assert len(found) == 3, sorted(found)
    names = set()
    for service, spec in found.items():
        command = command_of(spec)
        cluster = option(command, "--cluster")
        assert cluster, service
        for url in cluster.split(","):
            host = re.fullmatch(r"http://([a-z0-9-]+):2379", url)
            assert host and host[1] in compose()["services"], (service, url)
        names.add(option(command, "--node"))
        assert option(command, "--advertise") == f"{service}:{RPC_PORT}", service
        # The image's command, with the cluster's flags after it.
        assert command[: len(image_command())] == image_command(), service
        assert option(command, "--port") in (None, str(HTTP_PORT)) and option(command, "--rpc-port") in (None, str(RPC_PORT))
    assert len(names) == 3 and None not in names


def test_every_node_is_given_the_secret_and_waits_for_a_healthy_etcd() -> None:
    for service, spec in nodes().items():
        secret = environment_of(spec).get("DOTDO_CLUSTER_SECRET")
        assert secret and secret.startswith("${DOTDO_CLUSTER_SECRET"), service
        assert re.fullmatch(r"\$\{DOTDO_CLUSTER_SECRET:?\?.*\}", secret), f"{service}: the secret is not required"
        depends = spec["depends_on"]
        assert isinstance(depends, dict) and depends["etcd"]["condition"] == "service_healthy", service
        assert spec.get("restart") == "unless-stopped", service
        assert seconds(spec["stop_grace_period"]) >= 30, f"{service}: too little time to drain"


def test_the_cli_takes_every_node_s_command_and_the_nodes_may_drain_in_full() -> None:
    """Once ``dotdo serve`` has the cluster flags: each command parses, and docker waits
    for the whole drain before it kills (the drain, then the shutdown grace)."""
    from dotdo.cli import build_parser

    parser = build_parser(["serve"])
    if not hasattr(parser.parse_args(["serve"]), "cluster"):
        pytest.skip("dotdo serve has no --cluster yet")
    for service, spec in nodes().items():
        try:
            args = parser.parse_args(command_of(spec)[1:])
        except SystemExit as exc:
            pytest.fail(f"{service}: dotdo serve refuses its command (exit {exc.code})")
        needed = getattr(args, "drain_timeout", 0.0) + args.shutdown_grace
        grace = seconds(spec["stop_grace_period"])
        assert grace >= needed, f"{service}: docker kills it after {grace:g}s; stopping may take {needed:g}s"


def test_every_node_is_built_from_the_dockerfile() -> None:
    for service, spec in nodes().items():
        build = spec.get("build")
        build = {"context": build} if isinstance(build, str) else build
        assert isinstance(build, dict), f"{service}: not built here"
        dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, service


def test_every_node_keeps_its_data_in_a_volume_of_its_own() -> None:
    spec = compose()
    volumes = []
    for service, node in nodes().items():
        [volume] = [v for m in node.get("volumes", []) if (v := named_volume(m, "/data"))]
        assert volume in spec["volumes"], service
        volumes.append(volume)
    assert len(set(volumes)) == 3


def test_only_the_nodes_http_ports_are_published_each_on_its_own_host_port() -> None:
    spec = compose()
    hosts = []
    for service, node in spec["services"].items():
        ports = [published(port) for port in node.get("ports", [])]
        if service not in nodes():
            assert not ports, service
            continue
        assert [container for _, container in ports] == [HTTP_PORT], service
        hosts.extend(host for host, _ in ports)
    assert len(hosts) == 3 and len(set(hosts)) == 3


# -- the image's command, run from a fresh installation --------------------------------


def with_options(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with each option in ``values`` set to its value (replaced, or added)."""
    result = list(args)
    for name, value in values.items():
        if name in result:
            result[result.index(name) + 1] = value
        else:
            result += [name, value]
    return result


async def _health(command: list[str]) -> int:
    with trio.fail_after(HEALTH_TIMEOUT):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False, env=environment())
    return done.returncode


async def test_the_image_command_serves_passes_its_healthcheck_and_stops_on_sigterm(
    installed: Environment,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Dockerfile's CMD and HEALTHCHECK as the image runs them, but from a fresh
    installation of the project and as the current user: 127.0.0.1 and a free port
    instead of 0.0.0.0:8787, a temporary folder instead of /data."""
    for name in ("PYTHONPATH", "PYTHONHOME"):  # the helpers pass this environment on
        monkeypatch.delenv(name, raising=False)
    command = image_command()
    assert command[:2] == ["dotdo", "serve"]
    # dotdo_serve puts "serve --port 0" first: the command's own --port, if any, is set to 0.
    args = with_options(command[2:], {"--host": "127.0.0.1", "--data": str(tmp_path / "data")})
    if "--port" in args:
        args = with_options(args, {"--port": "0"})
    workdir = tmp_path / "app"
    workdir.mkdir()

    health = healthcheck_command()
    target = f"http://127.0.0.1:{HTTP_PORT}/_health"
    assert health[0] in ("python", "python3") and target in health[2]

    async with dotdo_serve(workdir, *args, program=(str(installed.dotdo),)) as served:
        port = int(served.url.rsplit(":", 1)[1])
        check = [str(installed.python), *(word.replace(target, f"http://127.0.0.1:{port}/_health") for word in health[1:])]
        assert await _health(check) == 0, served.errors()
        assert (tmp_path / "data").is_dir()
        assert await stop(served, signal.SIGTERM) == 0, served.errors()
    assert "Traceback" not in served.errors()
    # The check does check: with the server gone it fails.
    assert await _health(check) != 0

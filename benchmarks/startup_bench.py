"""Start-up benchmark: the wall time of the ``dotdo`` client commands, from exec to exit,
against ``python -c pass`` (the interpreter's own start-up, site-packages and all) in the
same run.

Rows:

- ``dotdo --help``: the console script and argument parsing alone.
- ``dotdo call`` to a closed port: a client command's start-up. This is the row that
  measures start-up honestly: the connection is refused at once (loopback), so what is
  left is the imports, the parsing and the exit.
- ``dotdo call``, ``dotdo alarms`` and ``dotdo branches`` (a lifecycle command, read
  only) against a server this benchmark starts (``dotdo serve``, one worker, a temporary
  data directory, its actor warmed up first): the start-up plus one request.

The commands run in turn (the baseline, then each command, for ``--runs`` rounds), so a
drift of the machine's speed is shared by all; a ratio is the median over the rounds of
the command's time over the baseline's in the same round. Each command runs once first,
not counted. The children cache their bytecode (in a temporary PYTHONPYCACHEPREFIX, with
PYTHONDONTWRITEBYTECODE unset), as an installed package has it compiled.

    python benchmarks/startup_bench.py [--runs 30] [--dotdo PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT = 30.0


def environment(pycache: Path) -> dict[str, str]:
    """This environment with bytecode cached under ``pycache`` and no DOTDO_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTDO_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(dotdo: str, workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """``dotdo serve`` on a free port until the block ends; its HTTP URL."""
    out = workdir / "serve.out"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [dotdo, "serve", "--port", "0", "--workers", "1", "--data", str(workdir / "data")],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "stop: Ctrl-C" not in out.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"dotdo serve did not start:\n{out.read_text()}")
            time.sleep(0.05)
        [url] = [line.split("http: ", 1)[1].split()[0] for line in out.read_text().splitlines() if "http: " in line]
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(argv: list[str], env: dict[str, str], expected: int) -> float:
    """Seconds from starting ``argv`` to its exit; it must exit with ``expected``."""
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(argv)} exited with {done.returncode}, not {expected}: {done.stderr.decode()}")
    return elapsed


def measure(commands: dict[str, tuple[list[str], int]], env: dict[str, str], runs: int) -> dict[str, list[float]]:
    """Each command's times over ``runs`` rounds (the first entry is the baseline)."""
    for argv, expected in commands.values():
        run(argv, env, expected)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, expected) in commands.items():
            times[name].append(run(argv, env, expected))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="rounds of every command (default: 30)")
    parser.add_argument(
        "--dotdo",
        default=shutil.which("dotdo", path=str(Path(sys.executable).parent)) or shutil.which("dotdo"),
        help="the console script to time (default: the one beside this interpreter, else on PATH); "
        "the baseline is this interpreter",
    )
    args = parser.parse_args()
    if not args.dotdo:
        raise SystemExit("no dotdo command found: install the package, or give --dotdo")
    dotdo = args.dotdo
    with tempfile.TemporaryDirectory(prefix="dotdo-startup-") as tmp:
        workdir = Path(tmp)
        env = environment(workdir / "pycache")
        closed = f"http://127.0.0.1:{closed_port()}"
        with served(dotdo, workdir, env) as url:
            request = urllib.request.Request(f"{url}/_rpc/Counter/bench/increment", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=30):
                pass
            commands = {
                "python -c pass": ([sys.executable, "-c", "pass"], 0),
                "dotdo --help": ([dotdo, "--help"], 0),
                "dotdo call, closed port": ([dotdo, "call", "Counter", "bench", "get", "--url", closed], 2),
                "dotdo call, server": ([dotdo, "call", "Counter", "bench", "get", "--url", url], 0),
                "dotdo alarms, server": ([dotdo, "alarms", "--url", url], 0),
                "dotdo branches, server": ([dotdo, "branches", "Counter", "bench", "--url", url], 0),
            }
            times = measure(commands, env, args.runs)
    baseline = times["python -c pass"]
    print(f"{args.runs} rounds; {sys.executable}; {dotdo}")
    print(f"{'command':<26} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'x python -c pass':>17}")
    for name, values in times.items():
        ratio = statistics.median(value / base for value, base in zip(values, baseline))
        print(
            f"{name:<26} {statistics.median(values) * 1e3:>10.1f} {min(values) * 1e3:>8.1f} "
            f"{max(values) * 1e3:>8.1f} {ratio:>17.2f}"
        )


if __name__ == "__main__":
    main()

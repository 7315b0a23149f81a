"""A headless Chromium for the tests of pages (driven by Playwright in a process of its
own: its sync API, away from the tests' trio loop).

The browser is Debian's ``chromium`` (``$DOTDO_CHROMIUM`` if set). Where it is missing,
under CI (``CI=true``, as root, with apt-get) it is installed here, since CI's clean
machine has only Python and pip; elsewhere the test skips, saying how to get it. A
browser test never skips silently in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

INSTALL_TIMEOUT = 600
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
"""Chromium's flags here: no sandbox (tests may run as root), and none of its own
traffic (a closed network refuses it, many connections at a time)."""


def find_chromium() -> str:
    """The Chromium binary to run; skips the test (installs it, or fails, under CI)."""
    configured = os.environ.get("DOTDO_CHROMIUM")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"DOTDO_CHROMIUM={configured} is not an executable file", pytrace=False)
        return configured
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    ci = os.environ.get("CI") == "true"
    if ci and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install("chromium")
        found = shutil.which("chromium")
        if found:
            return found
    reason = "no chromium: install Debian's chromium (apt-get install chromium) or set DOTDO_CHROMIUM"
    if ci:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", package]
    if subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
        done = subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
        if done.returncode != 0:
            pytest.fail(f"apt-get install {package} failed: {done.stderr.decode()[-2000:]}", pytrace=False)

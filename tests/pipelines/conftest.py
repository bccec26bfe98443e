"""Fixtures of the pipeline tests: a headless Chromium to render reports."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _install() -> str | None:
    """Install Debian's chromium when running as root; the reason when it cannot be."""
    if os.geteuid() != 0:
        return f"{CHROMIUM} is missing and installing it needs root"
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"apt-get install chromium failed: {exc}"
    return None if Path(CHROMIUM).exists() else f"{CHROMIUM} still missing after install"


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """``render(html, screenshot=None, size=(1280, 4000))``: headless Chromium on a local HTML
    file; writes the screenshot when given and returns the rendered DOM. Skips the test with
    the reason when Chromium is missing and cannot be installed."""
    if not Path(CHROMIUM).exists():
        why = _install()
        if why:
            pytest.skip(why)
    profile = tmp_path_factory.mktemp("chromium-profile")

    def render(html: Path, screenshot: Path | None = None,
               size: tuple[int, int] = (1280, 4000)) -> str:
        base = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}"]
        shot = [f"--screenshot={screenshot}"] if screenshot is not None else []
        return subprocess.run([*base, *shot, "--dump-dom", Path(html).resolve().as_uri()],
                              capture_output=True, text=True, timeout=180, check=True).stdout

    return render

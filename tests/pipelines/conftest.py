"""Fixtures of the pipeline tests: a headless Chromium to render reports."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from debian_tools import install_debian

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """``render(html, screenshot=None, size=(1280, 4000))``: headless Chromium on a local HTML
    file; writes the screenshot when given and returns the rendered DOM. Skips the test with
    the reason when Chromium is missing and cannot be installed."""
    why = install_debian("chromium", CHROMIUM)
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

"""Debian packages the tests need (chromium, dicom3tools), installed on demand by root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def install_debian(package: str, binary: str) -> str | None:
    """Install Debian's ``package`` unless ``binary`` (a path or a command) is there; None when
    it is there afterwards, else the reason it cannot be had."""
    if Path(binary).exists() or shutil.which(binary):
        return None
    if os.geteuid() != 0:
        return f"{binary} is missing and installing {package} needs root"
    if shutil.which("apt-get") is None:
        return f"{binary} is missing and there is no apt-get to install {package}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"apt-get install {package} failed: {exc}"
    if Path(binary).exists() or shutil.which(binary):
        return None
    return f"{binary} still missing after installing {package}"

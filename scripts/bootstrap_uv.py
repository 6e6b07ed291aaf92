#!/usr/bin/env python3
"""Install a pinned uv into a private directory, for machines without uv on PATH.

    python3 scripts/bootstrap_uv.py VERSION DIR      # prints DIR/bin/uv

Never touches the system or user Python (PEP 668 Pythons refuse that anyway). In order:
1. a venv in DIR with pip (needs ensurepip: Debian/Ubuntu's python3-venv), ``pip install uv``;
2. a venv in DIR that sees the system's pip (Debian's python3-pip), ``pip install uv`` into it;
3. with neither, uv's wheel straight from the package index (PyPI), checked against the sha256
   the index publishes, its ``uv`` binary unpacked into DIR/bin.
Only the standard library is used, so a bare ``python3`` is enough.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

# The package index's JSON simple API (PEP 691), as pip uses it.
INDEX = os.environ.get("CREDITD_UV_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _say(message: str) -> None:
    print(f"bootstrap-uv: {message}", file=sys.stderr, flush=True)


def _ok(*argv: str, quiet: bool = True) -> bool:
    out = subprocess.DEVNULL if quiet else sys.stderr
    return subprocess.run(argv, check=False, stdout=out, stderr=out).returncode == 0


def _with_pip(version: str, venv: Path, *, system_pip: bool) -> bool:
    shutil.rmtree(venv, ignore_errors=True)
    options = ["--without-pip", "--system-site-packages"] if system_pip else []
    python = str(venv / "bin" / "python")
    return (
        _ok(sys.executable, "-m", "venv", *options, str(venv))
        and _ok(python, "-m", "pip", "--version")
        and _ok(
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            f"uv=={version}",
            quiet=False,
        )
        and (venv / "bin" / "uv").exists()
    )


def _wanted() -> list[tuple[str, str]]:
    """(platform tag prefix, architecture) pairs of wheels that run here, best first."""
    machine = platform.machine().lower()
    if sys.platform == "darwin":
        return [("macosx", "arm64" if machine in ("arm64", "aarch64") else "x86_64")]
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    libc, _ = platform.libc_ver()
    flavours = ["manylinux", "musllinux"] if libc == "glibc" else ["musllinux", "manylinux"]
    return [(flavour, machine) for flavour in flavours]


def _from_pypi(version: str, venv: Path) -> bool:
    """uv's wheel from the index, checked against the sha256 the index publishes for it."""
    shutil.rmtree(venv, ignore_errors=True)
    request = urllib.request.Request(
        f"{INDEX}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        wheels = [
            f
            for f in json.load(response)["files"]
            if f["filename"].startswith(f"uv-{version}-") and f["filename"].endswith(".whl")
        ]
    chosen = next(
        (
            wheel
            for prefix, arch in _wanted()
            for wheel in wheels
            # uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64.whl
            if any(
                tag.startswith(prefix) and tag.endswith(f"_{arch}")
                for tag in wheel["filename"][: -len(".whl")].split("-")[-1].split(".")
            )
        ),
        None,
    )
    if chosen is None:
        _say(f"no uv {version} wheel on PyPI for this platform ({_wanted()})")
        return False
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / chosen["filename"]
        with urllib.request.urlopen(chosen["url"], timeout=300) as response:
            wheel.write_bytes(response.read())
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != chosen["hashes"]["sha256"]:
            _say(f"{chosen['filename']}: sha256 mismatch, not installed")
            return False
        with zipfile.ZipFile(wheel) as archive:
            member = f"uv-{version}.data/scripts/uv"
            target = venv / "bin" / "uv"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
            target.chmod(0o755)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    version, venv = argv[1], Path(argv[2])
    uv = venv / "bin" / "uv"
    only = os.environ.get("CREDITD_UV_BOOTSTRAP")  # pip | system-pip | pypi: one route (tests)
    routes: list[tuple[str, Callable[[], bool]]] = [
        ("pip", lambda: _with_pip(version, venv, system_pip=False)),
        ("system-pip", lambda: _with_pip(version, venv, system_pip=True)),
        ("pypi", lambda: _from_pypi(version, venv)),
    ]
    _say(f"uv is not on PATH: installing uv {version} into {venv} (nothing else is touched)")
    for name, route in routes:
        if only and name != only:
            continue
        if route():
            _say(f"installed {uv} ({name})")
            print(uv)
            return 0
        _say(f"{name}: not available here, trying the next way")
    _say(
        "could not install uv. Install it yourself (https://docs.astral.sh/uv/) or, on"
        " Debian/Ubuntu, `apt-get install python3-venv`, then run make again."
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The generator check (contract/run.sh) runs pinned tools: exact versions, locked, TypeScript 5."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

CONTRACT = Path(__file__).resolve().parents[2] / "contract"
EXACT = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def _npm() -> tuple[dict[str, str], dict[str, Any]]:
    manifest = json.loads((CONTRACT / "package.json").read_text())
    pins = {**manifest.get("dependencies", {}), **manifest.get("devDependencies", {})}
    lock = json.loads((CONTRACT / "package-lock.json").read_text())
    return pins, lock


def test_npm_tools_are_pinned_exactly_and_locked() -> None:
    pins, lock = _npm()
    assert {"@hey-api/openapi-ts", "@redocly/cli", "typescript"} <= set(pins)
    root = lock["packages"][""]
    assert {**root.get("dependencies", {}), **root.get("devDependencies", {})} == pins
    for name, version in pins.items():
        assert EXACT.match(version), (name, version, "pin an exact version")
        assert lock["packages"][f"node_modules/{name}"]["version"] == version, name


def test_the_typescript_compiler_is_version_5() -> None:
    # TypeScript 7 crashes @hey-api/openapi-ts; the generator's own dependency must be 5 too.
    pins, lock = _npm()
    assert pins["typescript"].startswith("5.")
    compilers = {
        path: entry["version"]
        for path, entry in lock["packages"].items()
        if path.endswith("node_modules/typescript")
    }
    assert compilers, "typescript is in the lock file"
    assert all(v.startswith("5.") for v in compilers.values()), compilers


def test_python_generator_is_pinned_and_locked() -> None:
    project = tomllib.loads((CONTRACT / "python" / "pyproject.toml").read_text())
    pins = dict(dep.split("==", 1) for dep in project["project"]["dependencies"] if "==" in dep)
    assert EXACT.match(pins["openapi-python-client"])
    lock = tomllib.loads((CONTRACT / "python" / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    for name, version in pins.items():
        assert locked[name] == version, name

"""Generate the sync client (``_sync_client.py``) from the async one (``_async_client.py``).

The two clients are the same code but for ``async``/``await``; writing one and deriving the
other keeps them from drifting (the approach of httpcore's ``unasync``). Run from anywhere:

    python sdk/python/scripts/unasync.py           # rewrite _sync_client.py
    python sdk/python/scripts/unasync.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "creditd_sdk"
SOURCE = PACKAGE / "_async_client.py"
TARGET = PACKAGE / "_sync_client.py"

HEADER = "# Generated from _async_client.py by sdk/python/scripts/unasync.py: do not edit.\n"

DOCSTRING = (
    '"""``Creditd``, the sync client: generated from ``_async_client.py`` (edit that one, then\n'
    'run ``make sdk-sync``)."""\n'
)

# (pattern, replacement), applied in order.
RULES: list[tuple[str, str]] = [
    (r'\A""".*?"""\n', DOCSTRING),
    (r"\bAsync client\b", "Client"),
    (r"\ban async function\b", "a function"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\.a(read|iter_lines|iter_bytes)\(", r".\1("),  # httpx streaming responses
    (r"\bAwaitable\[(\w+(?:\[\w+\])?)\]", r"\1"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"_Async([A-Z]\w*)", r"_\1"),
    (r"\b(\w+)_async\b", r"\1"),
]


def transform(source: str) -> str:
    text = source
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text, flags=re.DOTALL)
    return HEADER + text


def _ruff(args: list[str], text: str) -> str:
    result = subprocess.run(  # noqa: S603 - fixed argv: the venv's own ruff
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        cwd=PACKAGE.parent.parent.parent.parent,  # the repository root: its ruff settings
    )
    if result.returncode not in (0, 1) or not result.stdout:
        raise RuntimeError(f"ruff {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def generate() -> str:
    """The sync client's source, formatted and import-sorted like the rest of the code."""
    text = transform(SOURCE.read_text())
    text = _ruff(["check", "--fix", "--select", "I,F401", "--quiet", "--exit-zero"], text)
    return _ruff(["format", "--quiet"], text)


def main(argv: list[str]) -> int:
    generated = generate()
    if "--check" in argv:
        if TARGET.read_text() != generated:
            print(f"{TARGET} is stale: run 'make sdk-sync'", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

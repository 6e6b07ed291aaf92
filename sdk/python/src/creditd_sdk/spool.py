"""The durable completion spool: usage is never lost when creditd is briefly unreachable.

A completion that cannot be delivered (network error, 5xx, 429 after the retries) is stored with
the exact body and Idempotency-Key of its first attempt, and replayed with both until it lands.
Replaying is safe: the server replays a stored response for the same key and body, and completes
a transaction at most once. A ``success: true`` completion that arrives after the hold expired is
still charged (``late: true``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from creditd_sdk.errors import CreditdError
from creditd_sdk.models import CompleteResult

ENV_SPOOL_DIR = "CREDITD_SPOOL_DIR"


@dataclass(frozen=True)
class SpoolEntry:
    """One undelivered completion."""

    id: str
    target: str  # which server and API key it belongs to (a hash: no secret is written)
    base_url: str
    transaction_id: str
    idempotency_key: str
    body: str  # the exact JSON text first sent: the server matches the key on the raw bytes
    created_at: str

    @classmethod
    def new(
        cls, *, target: str, base_url: str, transaction_id: str, idempotency_key: str, body: str
    ) -> SpoolEntry:
        # Names sort in creation order: replays go oldest first.
        entry_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        return cls(
            id=entry_id,
            target=target,
            base_url=base_url,
            transaction_id=transaction_id,
            idempotency_key=idempotency_key,
            body=body,
            created_at=datetime.now(UTC).isoformat(),
        )

    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SpoolEntry:
        data = json.loads(text)
        data.pop("version", None)
        data.pop("rejected_reason", None)
        return cls(**data)


@dataclass
class FlushResult:
    """What a ``flush_spool()`` did."""

    delivered: list[CompleteResult] = field(default_factory=list)
    rejected: list[tuple[SpoolEntry, CreditdError]] = field(default_factory=list)
    pending: list[SpoolEntry] = field(default_factory=list)  # still waiting (server unreachable)


def spool_target(base_url: str, api_key: str) -> str:
    """The spool key of a client: entries are replayed only by a client of the same server+key."""
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:32]


@runtime_checkable
class Spool(Protocol):
    """Where undelivered completions wait. ``put`` must be durable when it returns."""

    def put(self, entry: SpoolEntry) -> None: ...

    def entries(self, target: str) -> list[SpoolEntry]:
        """The target's entries, oldest first."""
        ...

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a delivered entry (no error if it is already gone)."""
        ...

    def reject(self, entry: SpoolEntry, reason: str) -> None:
        """Set aside an entry the server refused for good (kept for inspection, not replayed)."""
        ...


def default_spool_dir() -> Path:
    """``$CREDITD_SPOOL_DIR``, else ``$XDG_STATE_HOME/creditd-sdk/spool`` (~/.local/state)."""
    configured = os.environ.get(ENV_SPOOL_DIR)
    if configured:
        return Path(configured).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "creditd-sdk" / "spool"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Write temp + fsync + rename + fsync(dir): after a crash the file is whole or absent."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class FileSpool:
    """A directory of JSON files, one per entry, written atomically; rejects go to ``rejected/``.

    Several processes may share a directory: a replay that two of them send at once is
    deduplicated by the server (same Idempotency-Key), and removal tolerates a missing file.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_spool_dir()

    def __repr__(self) -> str:
        return f"FileSpool({str(self.directory)!r})"

    def _path(self, entry: SpoolEntry) -> Path:
        return self.directory / f"{entry.id}.json"

    def put(self, entry: SpoolEntry) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomically(self._path(entry), entry.to_json())

    def entries(self, target: str) -> list[SpoolEntry]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = SpoolEntry.from_json(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # delivered by another process meanwhile
            except (ValueError, TypeError):
                self._set_aside(path)
                continue
            if entry.target == target:
                found.append(entry)
        return found

    def remove(self, entry: SpoolEntry) -> None:
        self._path(entry).unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def reject(self, entry: SpoolEntry, reason: str) -> None:
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True, mode=0o700)
        record = json.loads(entry.to_json()) | {"rejected_reason": reason}
        _write_atomically(rejected / f"{entry.id}.json", json.dumps(record, indent=2) + "\n")
        self.remove(entry)

    def _set_aside(self, path: Path) -> None:
        """Move an unreadable file out of the way (kept for inspection)."""
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, rejected / path.name)


class MemorySpool:
    """A non-durable spool (lost with the process): for tests, or when no disk may be written."""

    def __init__(self) -> None:
        self._entries: dict[str, SpoolEntry] = {}
        self.rejected: list[tuple[SpoolEntry, str]] = []

    def put(self, entry: SpoolEntry) -> None:
        self._entries[entry.id] = entry

    def entries(self, target: str) -> list[SpoolEntry]:
        return [e for _, e in sorted(self._entries.items()) if e.target == target]

    def remove(self, entry: SpoolEntry) -> None:
        self._entries.pop(entry.id, None)

    def reject(self, entry: SpoolEntry, reason: str) -> None:
        self.rejected.append((entry, reason))
        self.remove(entry)

"""The ledger export's line format and its SHA-256 chain (README "Ledger export").

A line is one JSON object followed by ``\\n``. Its last two members are always
``"prev_hash":"<64 hex>","hash":"<64 hex>"``, so they take exactly the last ``SUFFIX`` bytes:

    content = line[:-SUFFIX] + b"}"          # the object without prev_hash and hash
    hash    = sha256(prev_hash_hex_ascii + content).hexdigest()

``prev_hash`` is the previous line's ``hash`` (``GENESIS`` for a file's first line). The hash
covers the bytes as written, so no canonical re-serialisation is needed to verify: any changed
byte of a line changes its content, its prev_hash or its hash. Later versions may add members
to a line (e.g. ``team_id``), always before ``prev_hash``; readers ignore keys they do not know.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
MEDIA_TYPE = "application/x-ndjson"
ENTRY = "ledger_entry"
END = "ledger_export_end"
_PREV = ',"prev_hash":"'
_HASH = '","hash":"'
# ,"prev_hash":"<64>","hash":"<64>"}
SUFFIX = len(_PREV) + 64 + len(_HASH) + 64 + 2
_HEX = re.compile(rb"[0-9a-f]{64}\Z")


def timestamp(value: datetime) -> str:
    """RFC 3339 UTC with microseconds, always the same width (the line format's timestamps).
    The year is zero-padded by hand: strftime's %Y writes year 1 as "1" on glibc."""
    utc = value.astimezone(UTC)
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _str(value: str | None) -> str:
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def _raw(value: str | None) -> str:
    """A value whose text needs no escaping (uuid, decimal) as a JSON string or number."""
    return "null" if value is None else value


def entry_content(row: Any) -> str:
    """One ledger entry's line content from a row of ``repository.EXPORT`` (text columns)."""
    tid, gid = row["transaction_id"], row["grant_id"]
    return (
        f'{{"object":"ledger_entry","id":{row["id"]},"created_at":"{row["ts"]}",'
        f'"user_id":{_str(row["user_id"])},"team_id":{_str(row["team_id"])},'
        f'"kind":{_str(row["kind"])},'
        f'"amount":{row["amount"]},"held_amount":{row["held_amount"]},'
        f'"total_after":{row["total_after"]},"held_after":{row["held_after"]},'
        f'"transaction_id":{"null" if tid is None else chr(34) + tid + chr(34)},'
        f'"grant_id":{"null" if gid is None else chr(34) + gid + chr(34)},'
        f'"reason":{_str(row["reason"])}}}'
    )


def end_content(
    *,
    project_id: str,
    since: datetime | None,
    until: datetime | None,
    horizon: datetime,
    after: int | None,
    entries: int,
    next_after: int | None,
) -> str:
    """The trailer that ends a complete export (a stream without it was cut short)."""
    obj = {
        "object": END,
        "project_id": project_id,
        "since": None if since is None else timestamp(since),
        "until": None if until is None else timestamp(until),
        "horizon": timestamp(horizon),
        "after": after,
        "entries": entries,
        "next_after": next_after,
    }
    return json.dumps(obj, separators=(",", ":"))


def seal(content: str, prev_hash: str) -> tuple[str, str]:
    """The line (with ``\\n``) for ``content`` chained on ``prev_hash``, and its hash."""
    digest = hashlib.sha256((prev_hash + content).encode()).hexdigest()
    return f"{content[:-1]}{_PREV}{prev_hash}{_HASH}{digest}" + '"}\n', digest


class ChainBroken(Exception):
    """A line of an export does not verify; ``line`` is its 1-based number."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass
class Line:
    number: int
    content: bytes  # the object without prev_hash/hash: what the hash covers after prev_hash
    hash: str
    data: dict[str, Any]


def split(raw: bytes, number: int, prev_hash: str) -> Line:
    """Check one line (without its ``\\n``) against the chain; raise ``ChainBroken``."""
    if len(raw) < SUFFIX + 2 or not raw.startswith(b"{") or not raw.endswith(b'"}'):
        raise ChainBroken(number, "not an export line")
    tail = raw[-SUFFIX:]
    prev, digest = tail[len(_PREV) : len(_PREV) + 64], tail[-66:-2]
    if (
        not tail.startswith(_PREV.encode())
        or tail[len(_PREV) + 64 : len(_PREV) + 64 + len(_HASH)] != _HASH.encode()
        or not _HEX.match(prev)
        or not _HEX.match(digest)
    ):
        raise ChainBroken(number, "prev_hash and hash are not the line's last members")
    if prev.decode() != prev_hash:
        raise ChainBroken(number, f"prev_hash {prev.decode()} is not the previous hash")
    content = raw[:-SUFFIX] + b"}"
    if hashlib.sha256(prev + content).hexdigest() != digest.decode():
        raise ChainBroken(number, "hash does not match the line's content")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ChainBroken(number, "not valid JSON") from None
    if not isinstance(data, dict) or data.get("object") not in (ENTRY, END):
        raise ChainBroken(number, "unknown object")
    return Line(number, content, digest.decode(), data)


@dataclass
class Summary:
    """What an export file holds, once its chain verified."""

    lines: int = 0
    entries: int = 0
    segments: int = 0  # complete exports (trailers)
    complete: bool = False  # the last line is a trailer
    last_hash: str = GENESIS
    last_entry: tuple[str, int] | None = None  # (created_at, id) of the last entry
    next_after: int | None = None  # where a resumed export continues
    project_id: str | None = None
    since: str | None = None  # the first segment's since
    first_after: int | None = None  # the first segment resumed after this entry
    horizon: str | None = None  # the last trailer's horizon
    ends: list[dict[str, Any]] = field(default_factory=list)


def walk(raws: Iterable[bytes], prev_hash: str = GENESIS) -> Iterator[Line]:
    """Verify ``raws`` (lines with their ``\\n``) as one chain, yielding each checked line.

    Beyond the hashes it checks what the chain cannot: entries in strictly increasing
    (created_at, id), and each trailer's count (not more than the entries since the last
    one). Raises ``ChainBroken`` at the first bad line.
    """
    last: tuple[str, int] | None = None
    in_segment = 0
    number = 0
    for number, raw in enumerate(raws, 1):
        if not raw.endswith(b"\n"):
            raise ChainBroken(number, "incomplete line (no newline): the export was cut short")
        line = split(raw[:-1], number, prev_hash)
        data = line.data
        if data["object"] == ENTRY:
            key = (data.get("created_at"), data.get("id"))
            if not isinstance(key[0], str) or not isinstance(key[1], int):
                raise ChainBroken(number, "entry without created_at or id")
            if last is not None and key <= last:
                raise ChainBroken(number, "entries are not in (created_at, id) order")
            last = (key[0], key[1])
            in_segment += 1
        else:
            # A trailer counts its response's entries; a response cut short and resumed before
            # it put more entries since the previous trailer, never fewer.
            count = data.get("entries")
            if not isinstance(count, int) or not 0 <= count <= in_segment:
                raise ChainBroken(number, f"trailer counts {count} entries, {in_segment} precede")
            in_segment = 0
        prev_hash = line.hash
        yield line


def summarize(raws: Iterable[bytes], prev_hash: str = GENESIS) -> Summary:
    s = Summary(last_hash=prev_hash)
    for line in walk(raws, prev_hash):
        s.lines += 1
        s.last_hash = line.hash
        data = line.data
        if data["object"] == ENTRY:
            s.entries += 1
            s.last_entry = (data["created_at"], data["id"])
            s.next_after = data["id"]
            s.complete = False
        else:
            if s.segments == 0:
                s.project_id, s.since, s.first_after = (
                    data["project_id"],
                    data["since"],
                    data["after"],
                )
            s.segments += 1
            s.horizon = data["horizon"]
            s.next_after = data["next_after"]
            s.complete = True
            s.ends.append(data)
    return s

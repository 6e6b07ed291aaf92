"""The body of an outbound webhook: the stored event, as Standard Webhooks lays it out.

``{"id", "type", "timestamp", "created_at", "user_id", "sequence", "data"}``: ``timestamp`` and
``created_at`` are both when the event happened (not the attempt; that is the
``webhook-timestamp`` header); ``sequence`` orders one user's events (deliveries are not
ordered), null for events written before it existed (migration 0008). ``data`` is spliced in
as PostgreSQL's own text of the stored JSON, so numbers reach the receiver exactly as stored,
never through a float. The same event always renders to the
same bytes, so every retry carries the same body.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import orjson

_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def render(
    *,
    event_id: uuid.UUID,
    type: str,
    created_at: datetime,
    user_id: str | None,
    sequence: int | None,
    data_json: str,
) -> bytes:
    head = orjson.dumps(
        {
            "id": str(event_id),
            "type": type,
            "timestamp": created_at,
            "created_at": created_at,
            "user_id": user_id,
            "sequence": sequence,
        },
        option=_OPTS,
    )
    return head[:-1] + b',"data":' + data_json.encode() + b"}"

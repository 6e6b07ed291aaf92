from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

# Named (a schema component) so generated clients share one type.
DeliveryStatus = TypeAliasType(
    "DeliveryStatus", Literal["pending", "succeeded", "failed", "not_sent"]
)

DELIVERY_STATUS_DOC = (
    "Where the event's outbound webhooks stand: `pending` (a delivery is waiting or being"
    " retried, or the event is still to be fanned out and an enabled endpoint subscribes to"
    " it), `failed` (none pending, and at least one delivery gave up or was canceled because"
    " its endpoint was disabled), `succeeded` (every delivery succeeded), `not_sent` (no"
    " endpoint wanted it)"
)


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    type: str
    user_id: str | None
    data: dict[str, Any]
    created_at: datetime
    delivery_status: DeliveryStatus = Field(description=DELIVERY_STATUS_DOC)

from __future__ import annotations

from fastapi import APIRouter

from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1", tags=["promos"], route_class=TransactionalRoute)

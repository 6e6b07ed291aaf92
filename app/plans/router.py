from __future__ import annotations

from fastapi import APIRouter

from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1", tags=["plans"], route_class=TransactionalRoute)

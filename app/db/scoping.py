"""Tenant scoping: every repository query on a project's rows starts from one of these."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import Delete, Select, Update, delete, select, update

from app.db.base import Base

M = TypeVar("M", bound=Base)


def scoped_select(model: type[M], project_id: uuid.UUID) -> Select[M]:
    return select(model).where(model.project_id == project_id)  # type: ignore[attr-defined]


def scoped_columns(model: type[Base], project_id: uuid.UUID, *columns: Any) -> Select[Any]:
    return select(*columns).where(model.project_id == project_id)  # type: ignore[attr-defined]


def scoped_update(model: type[Base], project_id: uuid.UUID) -> Update:
    return update(model).where(model.project_id == project_id)  # type: ignore[attr-defined]


def scoped_delete(model: type[Base], project_id: uuid.UUID) -> Delete:
    return delete(model).where(model.project_id == project_id)  # type: ignore[attr-defined]

"""Model prices and the cost of token usage."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.money import LIMIT, ZERO, quantize
from app.db.models import ModelPrice
from app.db.scoping import scoped_delete, scoped_select
from app.db.session import driver
from app.pricing.exceptions import CostTooLarge, ModelNotFound, UnknownModel
from app.pricing.schemas import ModelPriceIn, TokenUsage

DEFAULT_MODEL = "_default"
_THOUSAND = Decimal(1000)


def cost(price: Price, tokens: TokenUsage | None, multiplier: Decimal = Decimal(1)) -> Decimal:
    """Credits for ``tokens`` at ``price`` times ``multiplier``, rounded half-up to 6 places
    (once, at the end); 0 without tokens."""
    if tokens is None:
        return ZERO
    cached = price.cached_input_price_per_1k
    if cached is None:
        cached = price.input_price_per_1k
    raw = (
        tokens.input_tokens * price.input_price_per_1k
        + tokens.output_tokens * price.output_price_per_1k
        + tokens.cached_input_tokens * cached
    ) / _THOUSAND + price.request_price
    result = quantize(raw * multiplier)
    if result >= LIMIT:
        raise CostTooLarge(f"{tokens.model_dump()} at this price costs {result} credits.")
    return result


def for_tier(
    price: Price | None, multiplier: Decimal, override: Mapping[str, Any] | None
) -> tuple[Price | None, Decimal]:
    """Apply a tier's per-model override: its prices replace the project's (a model priced
    only by the override needs its input and output prices), its multiplier the tier's."""
    if not override:
        return price, multiplier
    multiplier = override.get("price_multiplier", multiplier)
    fields = {c: Decimal(override[c]) for c in _COLUMNS if override.get(c) is not None}
    if price is not None:
        price = replace(price, **fields)
    elif "input_price_per_1k" in fields and "output_price_per_1k" in fields:
        price = Price(
            fields["input_price_per_1k"],
            fields["output_price_per_1k"],
            fields.get("cached_input_price_per_1k"),
            fields.get("request_price", ZERO),
        )
    return price, Decimal(multiplier)


@dataclass(frozen=True)
class Price:
    input_price_per_1k: Decimal
    output_price_per_1k: Decimal
    cached_input_price_per_1k: Decimal | None
    request_price: Decimal


_COLUMNS = (
    "input_price_per_1k",
    "output_price_per_1k",
    "cached_input_price_per_1k",
    "request_price",
)
# Columns a query selects after joining ``price_lateral``: NULL when the model has no price.
PRICE_COLUMNS = ", ".join(f"price.{c} AS price_{c}" for c in _COLUMNS)


def price_lateral(project_id: str, model: str) -> str:
    """SQL joining the price of ``model`` (else ``_default``) as ``price``, for hot-path queries
    that read a price together with the row they lock (one round trip instead of two)."""
    return (
        f"LEFT JOIN LATERAL (SELECT {', '.join(_COLUMNS)} FROM models "
        f"WHERE project_id = {project_id} AND id IN ({model}, '{DEFAULT_MODEL}') "
        f"ORDER BY id = '{DEFAULT_MODEL}' LIMIT 1) AS price ON true"
    )


def optional_price(row: Mapping[str, Any]) -> Price | None:
    """The price a ``PRICE_COLUMNS`` query found, if any."""
    if row["price_input_price_per_1k"] is None:
        return None
    return Price(*(row[f"price_{c}"] for c in _COLUMNS))


def require(price: Price | None, model: str) -> Price:
    """``price``, or 422 ``unknown_model`` when the model has no price and there is no default."""
    if price is None:
        raise UnknownModel(f"Model '{model}' has no price and the project has no '_default' price.")
    return price


_PRICE_FOR = f"SELECT {PRICE_COLUMNS} FROM (SELECT 1) AS one {price_lateral('$1', '$2')}"


async def price_for(session: AsyncSession, project_id: uuid.UUID, model: str) -> Price:
    """The model's own price, else ``_default``, else 422 ``unknown_model`` (hot path: raw SQL)."""
    row = await driver(session).fetchrow(_PRICE_FOR, project_id, model)
    return require(optional_price(row), model)


async def upsert(
    session: AsyncSession, project_id: uuid.UUID, model_id: str, body: ModelPriceIn
) -> ModelPrice:
    values = {
        "input_price_per_1k": body.input_price_per_1k,
        "output_price_per_1k": body.output_price_per_1k,
        "cached_input_price_per_1k": body.cached_input_price_per_1k,
        "request_price": body.request_price or ZERO,
    }
    stmt = (
        insert(ModelPrice)
        .values(project_id=project_id, id=model_id, **values)
        .on_conflict_do_update(
            index_elements=[ModelPrice.project_id, ModelPrice.id],
            set_={**values, "updated_at": func.now()},
        )
        .returning(ModelPrice)
    )
    return (await session.execute(stmt)).scalar_one()


async def get(session: AsyncSession, project_id: uuid.UUID, model_id: str) -> ModelPrice:
    stmt = scoped_select(ModelPrice, project_id).where(ModelPrice.id == model_id)
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise ModelNotFound()
    return found


async def list_models(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[ModelPrice]:
    stmt = scoped_select(ModelPrice, project_id)
    if after is not None:
        stmt = stmt.where(ModelPrice.id > after)
    stmt = stmt.order_by(ModelPrice.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def delete(session: AsyncSession, project_id: uuid.UUID, model_id: str) -> None:
    result = await session.execute(
        scoped_delete(ModelPrice, project_id).where(ModelPrice.id == model_id)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise ModelNotFound()

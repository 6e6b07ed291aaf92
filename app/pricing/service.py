"""Model prices and the cost of token usage."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.money import LIMIT, ZERO, quantize
from app.db.models import ModelPrice
from app.db.scoping import scoped_delete, scoped_select
from app.db.session import driver
from app.pricing.exceptions import CostTooLarge, ExpressionFailed, ModelNotFound, UnknownModel
from app.pricing.expressions import ExpressionError, compile_expression
from app.pricing.schemas import ModelPriceIn, TokenUsage

DEFAULT_MODEL = "_default"
_THOUSAND = Decimal(1000)
# Cost arithmetic: exact for any product of an expression's 40-digit value and a multiplier
# (NUMERIC(38, 6)), rounded once by ``quantize``.
_EXACT = decimal.Context(prec=120, traps=[decimal.InvalidOperation, decimal.Overflow])


@dataclass(frozen=True)
class Price:
    """An effective price: per 1K tokens (and per request), an expression, or a job's fixed
    price. Exactly one form is set."""

    input_price_per_1k: Decimal | None = None
    output_price_per_1k: Decimal | None = None
    cached_input_price_per_1k: Decimal | None = None
    request_price: Decimal = ZERO
    expression: str | None = None
    fixed: Decimal | None = None

    @property
    def kind(self) -> Literal["per_1k", "expression", "job"]:
        if self.fixed is not None:
            return "job"
        return "expression" if self.expression is not None else "per_1k"

    def snapshot(self, multiplier: Decimal) -> dict[str, Any]:
        """What a transaction records at start and its completion charges."""
        if self.fixed is not None:
            return {"job_price": self.fixed, "multiplier": multiplier}
        if self.expression is not None:
            return {"expression": self.expression, "multiplier": multiplier}
        return {
            **{c: getattr(self, c) for c in _COLUMNS},
            "multiplier": multiplier,
        }

    @staticmethod
    def from_snapshot(data: Mapping[str, Any]) -> tuple[Price, Decimal]:
        multiplier = Decimal(data["multiplier"])
        if "job_price" in data:
            return Price(fixed=Decimal(data["job_price"])), multiplier
        if "expression" in data:
            return Price(expression=str(data["expression"])), multiplier
        cached = data.get("cached_input_price_per_1k")
        price = Price(
            Decimal(data["input_price_per_1k"]),
            Decimal(data["output_price_per_1k"]),
            None if cached is None else Decimal(cached),
            Decimal(data.get("request_price") or 0),
        )
        return price, multiplier


def _raw(price: Price, tokens: TokenUsage, quantity: int) -> Decimal:
    if price.fixed is not None:
        return price.fixed * quantity
    if price.expression is not None:
        # A negative result (e.g. a cache discount larger than the rest) charges 0, as in ducto.
        return max(compile_expression(price.expression).evaluate(tokens.metrics()), ZERO)
    assert price.input_price_per_1k is not None
    assert price.output_price_per_1k is not None
    cached = price.cached_input_price_per_1k
    if cached is None:
        cached = price.input_price_per_1k
    return (
        tokens.input_tokens * price.input_price_per_1k
        + tokens.output_tokens * price.output_price_per_1k
        + tokens.cached * cached
    ) / _THOUSAND + price.request_price


def cost(
    price: Price,
    tokens: TokenUsage | None,
    multiplier: Decimal = Decimal(1),
    *,
    quantity: int = 1,
) -> Decimal:
    """Credits for ``tokens`` at ``price`` times ``multiplier``, rounded half-up to 6 places
    (once, at the end); 0 without tokens (a job's price needs none)."""
    if tokens is None:
        if price.fixed is None:
            return ZERO
        tokens = TokenUsage()
    try:
        raw = _raw(price, tokens, quantity)
    except ExpressionError as exc:
        raise ExpressionFailed(f"The price expression failed for this usage: {exc}.") from None
    with decimal.localcontext(_EXACT):
        result = quantize(raw * multiplier)
    if result >= LIMIT:
        raise CostTooLarge(f"{tokens.dump(mode='json')} at this price costs {result} credits.")
    return result


def breakdown(
    price: Price, tokens: TokenUsage, multiplier: Decimal, *, quantity: int = 1
) -> dict[str, Any]:
    """How ``cost`` arrives at its number (for /v1/pricing/evaluate)."""
    credits = cost(price, tokens, multiplier, quantity=quantity)
    out: dict[str, Any] = {"kind": price.kind, "multiplier": multiplier}
    if price.fixed is not None:
        out.update(job_price=price.fixed, quantity=quantity)
    elif price.expression is not None:
        compiled = compile_expression(price.expression)
        metrics = tokens.metrics()
        value = compiled.evaluate(metrics)
        out.update(
            expression=price.expression,
            variables={name: metrics[name] for name in compiled.names},
            value=value,
        )
    else:
        assert price.input_price_per_1k is not None
        assert price.output_price_per_1k is not None
        cached = price.cached_input_price_per_1k
        if cached is None:
            cached = price.input_price_per_1k
        out.update(
            input_price_per_1k=price.input_price_per_1k,
            output_price_per_1k=price.output_price_per_1k,
            cached_input_price_per_1k=cached,
            request_price=price.request_price,
            input=tokens.input_tokens * price.input_price_per_1k / _THOUSAND,
            output=tokens.output_tokens * price.output_price_per_1k / _THOUSAND,
            cached_input=tokens.cached * cached / _THOUSAND,
        )
    out["credits"] = credits
    return out


def for_tier(
    price: Price | None, multiplier: Decimal, override: Mapping[str, Any] | None
) -> tuple[Price | None, Decimal]:
    """Apply a tier's per-model override: its multiplier replaces the tier's; its expression
    replaces the price; its per-1K prices replace those of a per-1K price, and replace an
    expression (or no price) only when they name both input and output prices."""
    if not override:
        return price, multiplier
    multiplier = override.get("price_multiplier", multiplier)
    fields: dict[str, Any] = {
        c: Decimal(override[c]) for c in _COLUMNS if override.get(c) is not None
    }
    if override.get("expression") is not None:
        price = Price(expression=str(override["expression"]))
    elif price is not None and price.kind == "per_1k":
        price = replace(price, **fields)
    elif "input_price_per_1k" in fields and "output_price_per_1k" in fields:
        price = Price(
            fields["input_price_per_1k"],
            fields["output_price_per_1k"],
            fields.get("cached_input_price_per_1k"),
            fields.get("request_price", ZERO),
        )
    return price, Decimal(multiplier)


_COLUMNS = (
    "input_price_per_1k",
    "output_price_per_1k",
    "cached_input_price_per_1k",
    "request_price",
)
_LATERAL_COLUMNS = (*_COLUMNS, "expression")
# Columns a query selects after joining ``price_lateral``: NULL when the model has no price.
PRICE_COLUMNS = ", ".join(f"price.{c} AS price_{c}" for c in _LATERAL_COLUMNS)


def price_lateral(project_id: str, model: str) -> str:
    """SQL joining the price of ``model`` (else ``_default``) as ``price``, for hot-path queries
    that read a price together with the row they lock (one round trip instead of two)."""
    return (
        f"LEFT JOIN LATERAL (SELECT {', '.join(_LATERAL_COLUMNS)} FROM models "
        f"WHERE project_id = {project_id} AND id IN ({model}, '{DEFAULT_MODEL}') "
        f"ORDER BY id = '{DEFAULT_MODEL}' LIMIT 1) AS price ON true"
    )


def job_lateral(project_id: str, job: str) -> str:
    """``price_lateral`` for a fixed-cost job: the same columns (NULL per-1K prices, no
    expression), the job's price as ``price.job_price``; no row → no price."""
    nulls = ", ".join(f"NULL::numeric AS {c}" for c in _COLUMNS)
    return (
        f"LEFT JOIN LATERAL (SELECT {nulls}, NULL::text AS expression, price AS job_price "
        f"FROM jobs WHERE project_id = {project_id} AND name = {job}) AS price ON true"
    )


# A job's price: selected in place of PRICE_COLUMNS by queries joining ``job_lateral``.
JOB_PRICE_COLUMNS = f"{PRICE_COLUMNS}, price.job_price AS price_job_price"


def optional_price(row: Mapping[str, Any]) -> Price | None:
    """The price a ``PRICE_COLUMNS`` (or ``JOB_PRICE_COLUMNS``) query found, if any."""
    job_price = row.get("price_job_price")
    if job_price is not None:
        return Price(fixed=job_price)
    if row["price_expression"] is not None:
        return Price(expression=row["price_expression"])
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
        "expression": body.expression,
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

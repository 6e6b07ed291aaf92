from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.core.money import Money, NonNegativeAmount
from app.pricing import expressions

MAX_TOKENS = 10**12
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
# The metrics added with pricing expressions: stored and hashed only when not 0, so a usage
# that reports none of them is recorded exactly as before they existed.
EXTRA_METRICS = (
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "tool_calls",
    "search_queries",
    "search_results",
    "web_search_calls",
    "code_exec_calls",
    "images",
    "audio_seconds",
)


def _checked_expression(source: str) -> str:
    try:
        expressions.validate(source)
    except expressions.ExpressionError as exc:
        where = "" if exc.line is None else f" (line {exc.line}, column {exc.column})"
        raise PydanticCustomError(
            "expression_invalid",
            "{reason}{where}",
            {"reason": exc.reason, "where": where, "line": exc.line, "column": exc.column},
        ) from None
    return source


PricingExpression = Annotated[
    str,
    Field(
        min_length=1,
        max_length=expressions.MAX_SOURCE,
        description="A pricing expression over the usage metrics, e.g. "
        "`input_tokens * 0.0025 + output_tokens * 0.01 + search_queries * 0.5`. "
        "Metrics: "
        + ", ".join(expressions.METRICS)
        + ". Functions: "
        + ", ".join(expressions.FUNCTIONS)
        + ". Operators: + - * / // % ** (integer literal "
        f"exponent 0-{expressions.MAX_POWER}), comparisons, and/or/not, `a if c else b`. "
        "Refused with its line, column and reason when invalid.",
        examples=["input_tokens * 0.0025 + output_tokens * 0.01"],
    ),
    AfterValidator(_checked_expression),
]


class TokenUsage(BaseModel):
    """Usage metrics. ``input_tokens`` excludes cached input, which is priced separately.

    ``cache_read_tokens`` is another name for ``cached_input_tokens`` (send either; both
    with different values → 422). Per-1K prices charge input, output and cached input tokens
    and the request price; the other metrics are priced only by expressions."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cached_input_tokens: TokenCount = 0
    cache_read_tokens: TokenCount = Field(default=0, description="= cached_input_tokens")
    cache_write_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0
    tool_calls: TokenCount = 0
    search_queries: TokenCount = 0
    search_results: TokenCount = 0
    web_search_calls: TokenCount = 0
    code_exec_calls: TokenCount = 0
    images: TokenCount = 0
    audio_seconds: NonNegativeAmount = Field(default=Decimal(0), description="May be fractional")

    @model_validator(mode="after")
    def _one_cache_count(self) -> TokenUsage:
        a, b = self.cached_input_tokens, self.cache_read_tokens
        if a and b and a != b:
            raise ValueError(
                "cache_read_tokens is another name for cached_input_tokens: send one of them"
            )
        return self

    @property
    def cached(self) -> int:
        return self.cached_input_tokens or self.cache_read_tokens

    def metrics(self) -> dict[str, Decimal]:
        """The values an expression sees (``requests`` is 1: one usage is one request)."""
        values = {name: Decimal(getattr(self, name)) for name in expressions.METRICS[:-1]}
        values["cached_input_tokens"] = values["cache_read_tokens"] = Decimal(self.cached)
        values["requests"] = Decimal(1)
        return values

    def dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """As stored and hashed: the three original counts always, the others when not 0."""
        data = self.model_dump(mode=mode)
        for name in EXTRA_METRICS:
            if not getattr(self, name):
                del data[name]
        return data


def one_price_form(values: dict[str, Any], *, partial: bool) -> None:
    per_1k = [k for k in ("input_price_per_1k", "output_price_per_1k") if values.get(k) is not None]
    extras = [
        k for k in ("cached_input_price_per_1k", "request_price") if values.get(k) is not None
    ]
    if values.get("expression") is not None:
        if per_1k or extras:
            raise ValueError(
                "give either an expression or per-1K prices, not both "
                f"(remove {', '.join(per_1k + extras)})"
            )
    elif not partial and len(per_1k) < 2:
        raise ValueError("give an expression, or input_price_per_1k and output_price_per_1k")


class ModelPriceIn(BaseModel):
    """Exactly one form: per-1K prices (input and output, optionally cached input and a
    per-request price), or an ``expression``."""

    model_config = ConfigDict(extra="forbid")

    # First, so the price fields' validators know whether an expression was given.
    expression: PricingExpression | None = None
    input_price_per_1k: NonNegativeAmount | None = Field(
        default=None, validate_default=True, description="Required unless expression is given"
    )
    output_price_per_1k: NonNegativeAmount | None = Field(
        default=None, validate_default=True, description="Required unless expression is given"
    )
    cached_input_price_per_1k: NonNegativeAmount | None = Field(
        default=None, description="Defaults to the input price"
    )
    request_price: NonNegativeAmount | None = Field(default=None, description="Per request; 0")

    @field_validator("input_price_per_1k", "output_price_per_1k")
    @classmethod
    def _required_without_expression(
        cls, value: Decimal | None, info: ValidationInfo
    ) -> Decimal | None:
        if "expression" not in info.data:  # the expression itself was invalid: said there
            return value
        if value is None and info.data["expression"] is None:
            raise ValueError("required unless an expression prices the model")
        return value

    @model_validator(mode="after")
    def _exactly_one_form(self) -> ModelPriceIn:
        one_price_form(self.__dict__, partial=True)
        return self


class ModelPriceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    input_price_per_1k: Money | None = Field(description="null when an expression prices it")
    output_price_per_1k: Money | None = Field(description="null when an expression prices it")
    cached_input_price_per_1k: Money | None
    request_price: Money
    expression: str | None = Field(description="The pricing expression; null for per-1K prices")
    created_at: datetime
    updated_at: datetime


class EvaluateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, examples=["gpt-4o"])
    tokens: TokenUsage
    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Price at this user's tier (multiplier and model override); a user that "
        "does not exist yet is priced at the default tier",
    )


class PerThousandBreakdown(BaseModel):
    kind: Literal["per_1k"]
    input_price_per_1k: Money
    output_price_per_1k: Money
    cached_input_price_per_1k: Money
    request_price: Money
    input: Money = Field(description="input_tokens x input_price_per_1k / 1000 (unrounded)")
    output: Money = Field(description="output_tokens x output_price_per_1k / 1000 (unrounded)")
    cached_input: Money = Field(description="cached tokens x their price / 1000 (unrounded)")
    multiplier: Money
    credits: Money = Field(description="(input + output + cached_input + request_price) x "
                           "multiplier, rounded half-up to 6 places")  # fmt: skip


class ExpressionBreakdown(BaseModel):
    kind: Literal["expression"]
    expression: str
    variables: dict[str, Money] = Field(description="The metrics the expression reads")
    value: Money = Field(description="The expression's exact value (before the multiplier)")
    multiplier: Money
    credits: Money = Field(description="max(value, 0) x multiplier, rounded half-up to 6 places")


class EvaluateOut(BaseModel):
    credits: Money = Field(description="What a usage with these tokens would be charged")
    breakdown: Annotated[PerThousandBreakdown | ExpressionBreakdown, Field(discriminator="kind")]

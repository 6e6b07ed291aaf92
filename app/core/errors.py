"""Domain errors and their single problem+json rendering (RFC 9457)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class AppError(Exception):
    """Base of every error the API reports on purpose; subclasses set slug, title and status."""

    slug: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"
    status: ClassVar[int] = 500

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(self.detail)


class NotFound(AppError):
    slug = "not_found"
    title = "Not found"
    status = 404


class Conflict(AppError):
    slug = "conflict"
    title = "Conflict"
    status = 409


class Unauthorized(AppError):
    slug = "unauthorized"
    title = "Missing or invalid credentials"
    status = 401


class Forbidden(AppError):
    slug = "forbidden"
    title = "Not allowed"
    status = 403


class InvalidRequest(AppError):
    """A payload problem found after schema validation (e.g. an unknown model); still a 422.

    Like schema validation errors, it lists what is wrong in ``errors`` with a ``loc``.
    """

    slug = "validation_error"
    title = "Invalid request"
    status = 422
    loc: ClassVar[tuple[str, ...]] = ()

    def __init__(self, detail: str | None = None, *, loc: tuple[str, ...] | None = None) -> None:
        super().__init__(detail)
        where = list(loc if loc is not None else self.loc)
        self.extra = {"errors": [{"loc": where, "msg": self.detail, "type": self.slug}]}


class ExpiryInPast(InvalidRequest):
    title = "expires_at must be in the future"
    loc = ("body", "expires_at")


class PayloadTooLarge(AppError):
    slug = "payload_too_large"
    title = "Request body too large"
    status = 413


class RateLimited(AppError):
    slug = "rate_limited"
    title = "Too many requests"
    status = 429


class ServiceUnavailable(AppError):
    """A transient condition (503 with ``Retry-After``): the request changed nothing, and a
    retry, with the same ``Idempotency-Key``, is safe."""

    slug = "service_unavailable"
    title = "Temporarily unavailable"
    status = 503
    retry_after: ClassVar[int] = 1

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(self.retry_after)})


class Problem(BaseModel):
    """An RFC 9457 problem: the body of every error response (``application/problem+json``)."""

    # Problem types may add members of their own (RFC 9457 extension members).
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI reference naming the problem type: /errors/<code>")
    code: str = Field(description="The problem type's slug, stable across versions")
    title: str = Field(description="A short summary of the problem type")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong in this occurrence")
    instance: str = Field(description="The request path")
    request_id: str | None = Field(description="The request's X-Request-Id")


class FieldError(BaseModel):
    """One invalid input: where it is (``loc``), what is wrong, and the error type."""

    loc: list[str] = Field(description='Path to the value, e.g. ["body", "amount"]')
    msg: str
    type: str


class ValidationProblem(Problem):
    """A ``validation_error`` problem: the request's values are invalid; nothing was changed."""

    errors: list[FieldError]


class ValidationFailed(AppError):
    """Documentation only: request validation errors are rendered by the app's handler."""

    slug = "validation_error"
    title = "Request validation failed"
    status = 422


class InternalError(AppError):
    slug = "internal_error"
    title = "Internal server error"
    status = 500


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}


PROBLEM_CODES = "x-problem-codes"  # the slugs a documented error response may carry


def problem_response(status: int, codes: set[str], title: str | None = None) -> dict[str, Any]:
    """One OpenAPI response: ``application/problem+json`` with its schema and its codes.

    Every 422 is a ``ValidationProblem`` (it lists ``errors``) and may be ``validation_error``.
    """
    if status == 422:
        codes = codes | {ValidationFailed.slug}
    schema = ValidationProblem if status == 422 else Problem
    ordered = sorted(codes)
    summary = title if title and len(ordered) == 1 else "Error"
    response: dict[str, Any] = {
        "description": f"{summary} ({', '.join(ordered)})",
        "content": {
            "application/problem+json": {
                "schema": {"$ref": f"#/components/schemas/{schema.__name__}"}
            }
        },
        PROBLEM_CODES: ordered,
    }
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    return response


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given errors (grouped by status); 429 and 503
    answers carry ``Retry-After``."""
    by_status: dict[int, list[type[AppError]]] = {}
    for err in errors:
        by_status.setdefault(err.status, []).append(err)
    return {
        status: problem_response(status, {e.slug for e in errs}, errs[0].title)
        for status, errs in sorted(by_status.items())
    }


def merge_responses(
    base: dict[int | str, dict[str, Any]], extra: dict[int | str, dict[str, Any]]
) -> dict[int | str, dict[str, Any]]:
    """``base`` with ``extra`` added; two problem responses of one status list both codes."""
    out = dict(base)
    for status, response in extra.items():
        mine = out.get(status)
        if mine is not None and PROBLEM_CODES in mine and PROBLEM_CODES in response:
            codes = {*mine[PROBLEM_CODES], *response[PROBLEM_CODES]}
            out[status] = problem_response(int(status), codes)
        else:
            out[status] = response
    return out

"""Domain errors and their single problem+json rendering (RFC 9457)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel


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
    """The problem+json body every error response carries."""

    type: str
    code: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


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


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given errors (grouped by status); 429 and 503
    answers carry ``Retry-After``."""
    by_status: dict[int, list[type[AppError]]] = {}
    for err in errors:
        by_status.setdefault(err.status, []).append(err)
    out: dict[int | str, dict[str, Any]] = {}
    for status, errs in sorted(by_status.items()):
        slugs = ", ".join(sorted({e.slug for e in errs}))
        out[status] = {
            "model": Problem,
            "description": f"{errs[0].title if len(errs) == 1 else 'Error'} ({slugs})",
            "content": {"application/problem+json": {}},
        }
        if status in (429, 503):
            out[status]["headers"] = _RETRY_AFTER
    return out

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from app.api_keys import service
from app.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from app.auth.dependencies import AdminKey
from app.auth.service import KeyCache
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import ExpiryInPast, problem_responses
from app.core.pagination import Page, PageParams, make_page, uuid_page_params
from app.db.session import Session
from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"], route_class=TransactionalRoute)


@router.post(
    "",
    operation_id="api_keys_create",
    summary="Create an API key (the secret is shown only here)",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=problem_responses(ExpiryInPast),
)
async def create_key(session: Session, principal: AdminKey, body: ApiKeyCreate) -> ApiKeyCreated:
    key, secret = await service.create(
        session,
        principal.project_id,
        name=body.name,
        scopes=list(body.scopes),
        expires_at=body.expires_at,
    )
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=secret)


@router.get(
    "",
    operation_id="api_keys_list",
    summary="List API keys (no secrets)",
    response_model=Page[ApiKeyOut],
)
async def list_keys(
    session: Session, principal: AdminKey, page: Annotated[PageParams, Depends(uuid_page_params)]
) -> Page[ApiKeyOut]:
    rows = await service.list_keys(
        session, principal.project_id, limit=page.limit, after=uuid_cursor(page.starting_after)
    )
    return make_page([ApiKeyOut.model_validate(r) for r in rows], page.limit, lambda k: k.id)


@router.delete(
    "/{key_id}",
    operation_id="api_keys_revoke",
    summary="Revoke an API key",
    status_code=204,
    response_class=Response,
    responses=problem_responses(service.ApiKeyNotFound),
)
async def revoke_key(
    request: Request, session: Session, principal: AdminKey, key_id: str
) -> Response:
    await service.revoke(session, principal.project_id, parse_id(key_id, service.ApiKeyNotFound))
    cache: KeyCache = request.app.state.key_cache
    cache.invalidate_project(principal.project_id)
    return Response(status_code=204)

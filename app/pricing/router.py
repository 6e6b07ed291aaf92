from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from app.auth.dependencies import ReadKey, UserReadKey, WriteKey
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, page_params
from app.db.session import Session
from app.pricing import service
from app.pricing.exceptions import CostTooLarge, ExpressionFailed, ModelNotFound, UnknownModel
from app.pricing.schemas import EvaluateIn, EvaluateOut, ModelPriceIn, ModelPriceOut
from app.routing import TransactionalRoute
from app.transactions import service as transactions
from app.users.exceptions import UserNotFound

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=TransactionalRoute)
evaluate_router = APIRouter(prefix="/v1/pricing", tags=["models"], route_class=TransactionalRoute)
ModelId = Annotated[str, Path(min_length=1, max_length=200, description="e.g. gpt-4o, _default")]


@router.put(
    "/{model_id:path}",
    operation_id="models_put",
    summary="Create or replace a model's prices",
    response_model=ModelPriceOut,
)
async def put_model(
    session: Session, principal: WriteKey, model_id: ModelId, body: ModelPriceIn
) -> ModelPriceOut:
    row = await service.upsert(session, principal.project_id, model_id, body)
    return ModelPriceOut.model_validate(row)


@router.get(
    "", operation_id="models_list", summary="List models", response_model=Page[ModelPriceOut]
)
async def list_models(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[ModelPriceOut]:
    rows = await service.list_models(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page([ModelPriceOut.model_validate(r) for r in rows], page.limit, lambda m: m.id)


@router.get(
    "/{model_id:path}",
    operation_id="models_get",
    summary="Get a model's prices",
    response_model=ModelPriceOut,
    responses=problem_responses(ModelNotFound),
)
async def get_model(session: Session, principal: ReadKey, model_id: ModelId) -> ModelPriceOut:
    return ModelPriceOut.model_validate(await service.get(session, principal.project_id, model_id))


@router.delete(
    "/{model_id:path}",
    operation_id="models_delete",
    summary="Delete a model's prices",
    status_code=204,
    response_class=Response,
    responses=problem_responses(ModelNotFound),
)
async def delete_model(session: Session, principal: WriteKey, model_id: ModelId) -> Response:
    await service.delete(session, principal.project_id, model_id)
    return Response(status_code=204)


@evaluate_router.post(
    "/evaluate",
    operation_id="pricing_evaluate",
    summary="Price usage without charging it: credits and how they add up",
    response_model=EvaluateOut,
    responses=problem_responses(UnknownModel, ExpressionFailed, CostTooLarge, UserNotFound),
)
async def evaluate(session: Session, principal: UserReadKey, body: EvaluateIn) -> EvaluateOut:
    return await transactions.evaluate(session, principal, body)

"""Users CRUD and models CRUD."""

from __future__ import annotations

from decimal import Decimal

from tests.conftest import Project
from tests.helpers import body, start


async def test_create_user_returns_it_with_an_empty_balance(project: Project) -> None:
    r = await project.post("/v1/users", {"id": "u_1", "metadata": {"plan": "free"}})
    assert r.status_code == 201
    user = body(r)
    assert user["id"] == "u_1"
    assert user["metadata"] == {"plan": "free"}
    assert user["tier_id"] is None
    assert user["balance"] == {"available": 0, "held": 0, "total": 0}


async def test_duplicate_user_id_is_409_user_exists(project: Project) -> None:
    await project.user("u_1")
    r = await project.post("/v1/users", {"id": "u_1"})
    assert r.status_code == 409
    assert r.json()["code"] == "user_exists"


async def test_patch_merges_metadata_and_null_removes_a_key(project: Project) -> None:
    await project.post("/v1/users", {"id": "u", "metadata": {"a": 1, "b": 2}})
    r = await project.patch("/v1/users/u", {"metadata": {"b": None, "c": Decimal("3.5")}})
    assert r.status_code == 200
    assert body(r)["metadata"] == {"a": 1, "c": Decimal("3.5")}


async def test_list_users_paginates_by_id(project: Project) -> None:
    for uid in ("c", "a", "b"):
        await project.user(uid)
    page = body(await project.get("/v1/users", params={"limit": 2}))
    assert [u["id"] for u in page["data"]] == ["a", "b"]
    assert page["next_cursor"] == "b"
    rest = body(await project.get("/v1/users", params={"starting_after": "b"}))
    assert [u["id"] for u in rest["data"]] == ["c"]


async def test_delete_user_hides_it_and_keeps_the_id_reserved(project: Project) -> None:
    await project.user("u", credits=5)
    assert (await project.delete("/v1/users/u")).status_code == 204
    assert (await project.get("/v1/users/u")).status_code == 404
    again = await project.post("/v1/users", {"id": "u"})
    assert again.status_code == 409
    await project.price("_default", 1, 1)
    r = await project.post("/v1/transactions/start", {"user_id": "u", "model": "m"})
    assert r.status_code == 404


async def test_delete_user_with_a_pending_transaction_is_409(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=5)
    await start(project, "u", inp=1)
    r = await project.delete("/v1/users/u")
    assert r.status_code == 409
    assert r.json()["code"] == "user_has_open_transactions"


async def test_user_id_that_cannot_exist_is_404_in_paths(project: Project) -> None:
    r = await project.get("/v1/users/has space")
    assert r.status_code == 404


async def test_models_crud(project: Project) -> None:
    r = await project.put(
        "/v1/models/openai/gpt-4o",
        {"input_price_per_1k": Decimal("2.5"), "output_price_per_1k": 10},
    )
    assert r.status_code == 200
    model = body(r)
    assert model["id"] == "openai/gpt-4o"
    assert model["cached_input_price_per_1k"] is None
    assert model["request_price"] == 0
    r = await project.put(
        "/v1/models/openai/gpt-4o", {"input_price_per_1k": 3, "output_price_per_1k": 12}
    )
    assert body(r)["input_price_per_1k"] == 3
    got = body(await project.get("/v1/models/openai/gpt-4o"))
    assert got["output_price_per_1k"] == 12
    listed = body(await project.get("/v1/models"))["data"]
    assert [m["id"] for m in listed] == ["openai/gpt-4o"]
    assert (await project.delete("/v1/models/openai/gpt-4o")).status_code == 204
    missing = await project.get("/v1/models/openai/gpt-4o")
    assert missing.status_code == 404
    assert missing.json()["code"] == "model_not_found"

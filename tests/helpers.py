"""Small helpers shared by tests: exact JSON, starting and completing transactions."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx

from tests.conftest import Project


def body(response: httpx.Response) -> Any:
    """The response JSON with every non-integer number as an exact Decimal."""
    return json.loads(response.text, parse_float=Decimal)


def tokens(inp: int = 0, out: int = 0) -> dict[str, int]:
    return {"input_tokens": inp, "output_tokens": out}


async def start(project: Project, user_id: str, inp: int = 0, out: int = 0, **extra: Any) -> Any:
    payload: dict[str, Any] = {"user_id": user_id, "model": "gpt-4o", **extra}
    if inp or out:
        payload["provisional_tokens"] = tokens(inp, out)
    r = await project.post("/v1/transactions/start", payload)
    assert r.status_code == 201, r.text
    return body(r)


async def complete(
    project: Project, txn_id: str, *, success: bool = True, inp: int = 0, out: int = 0
) -> httpx.Response:
    payload: dict[str, Any] = {"success": success}
    if inp or out:
        payload["finalized_tokens"] = tokens(inp, out)
    return await project.post(f"/v1/transactions/{txn_id}/complete", payload)


async def ledger(project: Project, user_id: str) -> list[Any]:
    entries: list[Any] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"starting_after": cursor} if cursor else {})}
        r = await project.get(f"/v1/users/{user_id}/ledger", params=params)
        assert r.status_code == 200, r.text
        page = body(r)
        entries.extend(page["data"])
        if not page["has_more"]:
            return entries
        cursor = page["next_cursor"]


async def balance(project: Project, user_id: str) -> dict[str, Decimal]:
    r = await project.get(f"/v1/users/{user_id}")
    assert r.status_code == 200, r.text
    return {k: Decimal(str(v)) for k, v in body(r)["balance"].items()}

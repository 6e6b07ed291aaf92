"""Teams: a shared account its members charge (team_id on usage calls), member caps,
team-level credits and ledger, tenant isolation, deletion."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text

from app.credits.verify import CHECKS
from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import body, complete, start


async def _team(p: Project, team_id: str = "t1", credits: Any = None, *members: str) -> None:
    r = await p.post("/v1/teams", {"id": team_id, "name": "Acme"})
    assert r.status_code == 201, r.text
    for user_id in members:
        await p.user(user_id)
        r = await p.put(f"/v1/teams/{team_id}/members/{user_id}", {"role": "member"})
        assert r.status_code == 200, r.text
    if credits is not None:
        r = await p.post(f"/v1/teams/{team_id}/credits", {"amount": credits})
        assert r.status_code == 201, r.text


async def _team_balance(p: Project, team_id: str = "t1") -> dict[str, Decimal]:
    r = await p.get(f"/v1/teams/{team_id}")
    assert r.status_code == 200, r.text
    return {k: Decimal(str(v)) for k, v in r.json()["balance"].items()}


async def test_create_get_list_patch_team(project: Project) -> None:
    p = project
    r = await p.post("/v1/teams", {"id": "t1", "name": "Acme", "metadata": {"plan": "x"}})
    assert r.status_code == 201, r.text
    out = body(r)
    assert out["id"] == "t1"
    assert out["name"] == "Acme"
    assert out["metadata"] == {"plan": "x"}
    assert out["balance"] == {"available": 0, "held": 0, "total": 0}
    again = await p.post("/v1/teams", {"id": "t1"})
    assert again.status_code == 409
    assert again.json()["code"] == "team_exists"
    patched = await p.patch("/v1/teams/t1", {"name": "Acme Inc", "metadata": {"plan": None}})
    assert patched.status_code == 200, patched.text
    assert body(patched)["name"] == "Acme Inc"
    assert body(patched)["metadata"] == {}
    listed = body(await p.get("/v1/teams"))["data"]
    assert [t["id"] for t in listed] == ["t1"]


async def test_member_charges_the_team_account_and_the_ledger_names_the_member(
    project: Project, db: Database
) -> None:
    p = project
    await p.price("_default", 1000, 0)  # 1 credit per input token
    await _team(p, "t1", 100, "alice")
    await p.grant("alice", 7)
    txn = await start(p, "alice", inp=30, team_id="t1")
    assert txn["continue"] is True
    assert txn["hold_amount"] == 30
    assert await _team_balance(p) == {
        "available": Decimal(70),
        "held": Decimal(30),
        "total": Decimal(100),
    }
    r = await complete(p, txn["transaction_id"], inp=20)
    assert r.status_code == 200
    assert body(r)["balance"] == 80
    assert (await p.balance("alice"))["available"] == 7  # her own account is untouched
    got = body(await p.get(f"/v1/transactions/{txn['transaction_id']}"))
    assert got["team_id"] == "t1"
    assert got["user_id"] == "alice"
    entries = body(await p.get("/v1/teams/t1/ledger"))["data"]
    assert [(e["kind"], e["user_id"]) for e in entries] == [
        ("grant", None),
        ("hold", "alice"),
        ("usage", "alice"),
    ]
    own = body(await p.get("/v1/users/alice/ledger"))["data"]
    assert [e["kind"] for e in own] == ["grant"]  # team entries are not in her ledger
    used = await p.post(
        "/v1/usage",
        {"user_id": "alice", "model": "m", "team_id": "t1", "tokens": {"input_tokens": 5}},
    )
    assert used.status_code == 201
    assert body(used)["balance"] == 75
    checked = body(
        await p.post(
            "/v1/check",
            {"user_id": "alice", "team_id": "t1", "model": "m",
             "provisional_tokens": {"input_tokens": 80}},
        )
    )  # fmt: skip
    assert checked == {"allowed": False, "reason": "insufficient_credits",
                       "available": 75, "required": 80}  # fmt: skip
    await assert_ledger_consistent(db)


async def test_non_member_is_refused_and_unknown_team_is_404(project: Project) -> None:
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 100, "alice")
    await p.user("bob", credits=100)
    payload = {"user_id": "bob", "model": "m", "team_id": "t1",
               "provisional_tokens": {"input_tokens": 1}}  # fmt: skip
    r = await p.post("/v1/transactions/start", payload)
    assert r.status_code == 403
    assert r.json()["code"] == "not_a_team_member"
    r = await p.post("/v1/transactions/start", {**payload, "team_id": "nope"})
    assert r.status_code == 404
    assert r.json()["code"] == "team_not_found"
    r = await p.post("/v1/check", {"user_id": "bob", "team_id": "t1", "amount": 1})
    assert r.status_code == 403
    assert r.json()["code"] == "not_a_team_member"
    assert (await _team_balance(p))["held"] == 0


async def test_foreign_team_ids_answer_404(project: Project, other_project: Project) -> None:
    await _team(project, "t1", 100, "alice")
    o = other_project
    await o.price("_default", 1000, 0)
    await o.user("alice", credits=10)
    for method, path, payload in [
        ("GET", "/v1/teams/t1", None),
        ("PATCH", "/v1/teams/t1", {"name": "x"}),
        ("DELETE", "/v1/teams/t1", None),
        ("GET", "/v1/teams/t1/members", None),
        ("PUT", "/v1/teams/t1/members/alice", {}),
        ("POST", "/v1/teams/t1/credits", {"amount": 5}),
        ("POST", "/v1/teams/t1/debits", {"amount": 5}),
        ("GET", "/v1/teams/t1/grants", None),
        ("GET", "/v1/teams/t1/ledger", None),
    ]:
        r = await o.request(method, path, payload)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["code"] == "team_not_found"
    r = await o.post(
        "/v1/transactions/start",
        {"user_id": "alice", "model": "m", "team_id": "t1",
         "provisional_tokens": {"input_tokens": 1}},
    )  # fmt: skip
    assert r.status_code == 404
    assert r.json()["code"] == "team_not_found"
    assert body(await o.get("/v1/teams"))["data"] == []
    assert (await _team_balance(project))["total"] == 100


async def test_member_day_cap_denies_over_the_limit(project: Project) -> None:
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 1000, "alice")
    caps = {"role": "member", "spend_caps": [{"period": "day", "limit": 50}]}
    r = await p.put("/v1/teams/t1/members/alice", caps)
    assert r.status_code == 200
    assert body(r)["spend_caps"] == [{"period": "day", "limit": 50}]
    first = await start(p, "alice", inp=30, team_id="t1")
    assert first["continue"] is True
    await complete(p, first["transaction_id"], inp=30)
    second = await start(p, "alice", inp=30, team_id="t1")
    assert second["continue"] is False
    assert second["reason"] == "spend_cap_reached"
    third = await start(p, "alice", inp=20, team_id="t1")
    assert third["continue"] is True  # 30 charged + 20 held = the cap exactly


async def test_member_tier_overage_floor_applies_to_team_charges(project: Project) -> None:
    p = project
    await p.price("_default", 1000, 0)
    r = await p.post(
        "/v1/tiers",
        {"id": "od", "name": "Overage", "credits": 0, "allow_overage": True, "overage_limit": 20},
    )
    assert r.status_code == 201, r.text
    await _team(p, "t1", 10, "alice")
    assert (await p.post("/v1/users/alice/tier", {"tier_id": "od"})).status_code == 200
    ok = await start(p, "alice", inp=30, team_id="t1")  # 10 - 30 = -20: the floor
    assert ok["continue"] is True
    no = await start(p, "alice", inp=1, team_id="t1")
    assert no["continue"] is False
    assert no["reason"] == "insufficient_credits"


async def test_only_team_default_charges_the_users_only_team(project: Project) -> None:
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 100, "alice")
    await p.grant("alice", 50)
    usage = {"user_id": "alice", "model": "m", "tokens": {"input_tokens": 10}}
    assert body(await p.post("/v1/usage", usage))["balance"] == 40  # setting "user"
    r = await p.patch("/v1/project", {"settings": {"team_usage_default": "only_team"}})
    assert r.status_code == 200
    assert r.json()["settings"]["team_usage_default"] == "only_team"
    assert body(await p.post("/v1/usage", usage))["balance"] == 90  # the team's
    await _team(p, "t2", 100)
    await p.put("/v1/teams/t2/members/alice", {})
    assert body(await p.post("/v1/usage", usage))["balance"] == 30  # two teams: her own


async def test_team_credits_debits_grants_and_idempotency(project: Project) -> None:
    p = project
    await _team(p, "t1")
    headers = {"Idempotency-Key": "team-grant-1"}
    first = await p.post("/v1/teams/t1/credits", {"amount": 25}, headers=headers)
    again = await p.post("/v1/teams/t1/credits", {"amount": 25}, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert first.content == again.content
    grants = body(await p.get("/v1/teams/t1/grants"))["data"]
    assert len(grants) == 1
    assert grants[0]["remaining"] == 25
    over = await p.post("/v1/teams/t1/debits", {"amount": 26})
    assert over.status_code == 402
    debit = await p.post("/v1/teams/t1/debits", {"amount": 5})
    assert debit.status_code == 201
    assert body(debit)["balance"] == 20


async def test_deleting_a_team_closes_its_account_and_a_deleted_user_leaves_teams(
    project: Project, db: Database
) -> None:
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 100, "alice", "bob")
    pending = await start(p, "alice", inp=5, team_id="t1")
    r = await p.delete("/v1/teams/t1")
    assert r.status_code == 409
    assert r.json()["code"] == "team_has_open_transactions"
    await complete(p, pending["transaction_id"], inp=5)
    assert (await p.delete("/v1/users/bob")).status_code == 204
    members = body(await p.get("/v1/teams/t1/members"))["data"]
    assert [m["user_id"] for m in members] == ["alice"]
    assert (await p.delete("/v1/teams/t1")).status_code == 204
    assert (await p.get("/v1/teams/t1")).status_code == 404
    r = await start_raw(p, {"user_id": "alice", "model": "m", "team_id": "t1"})
    assert r.status_code == 404
    assert r.json()["code"] == "team_not_found"
    assert (await p.post("/v1/teams", {"id": "t1"})).status_code == 409  # ids are not reused
    await assert_ledger_consistent(db)


async def start_raw(p: Project, payload: dict[str, Any]) -> Any:
    return await p.post("/v1/transactions/start", payload)


async def test_analytics_by_team_and_member(project: Project) -> None:
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 100, "alice", "bob")
    await _team(p, "t2", 100, "carol")
    for user_id, team_id, n in [("alice", "t1", 10), ("bob", "t1", 5), ("carol", "t2", 3)]:
        usage = {"user_id": user_id, "model": "m", "team_id": team_id,
                 "tokens": {"input_tokens": n}}  # fmt: skip
        assert (await p.post("/v1/usage", usage)).status_code == 201
    by_team = body(await p.get("/v1/analytics/spend", params={"group_by": "team"}))["data"]
    assert [(r["key"], r["credits"], r["transactions"]) for r in by_team] == [
        ("t1", 15, 2),
        ("t2", 3, 1),
    ]
    by_member = body(
        await p.get("/v1/analytics/spend", params={"group_by": "member", "team_id": "t1"})
    )["data"]
    assert [(r["key"], r["credits"]) for r in by_member] == [("alice", 10), ("bob", 5)]
    by_user = body(await p.get("/v1/analytics/spend", params={"group_by": "user"}))["data"]
    assert {r["key"]: r["credits"] for r in by_user} == {"alice": 10, "bob": 5, "carol": 3}


async def test_verify_checks_team_usage_against_team_transactions(
    project: Project, db: Database
) -> None:
    """`creditd verify`: a member's team usage per day equals what their team transactions
    charged less refunds; a drifted row is reported."""
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 100, "alice")
    usage = {"user_id": "alice", "model": "m", "team_id": "t1", "tokens": {"input_tokens": 7}}
    one_shot = body(await p.post("/v1/usage", usage))
    txn = await start_raw(p, {"user_id": "alice", "model": "m", "team_id": "t1",
                              "provisional_tokens": {"input_tokens": 5}})  # fmt: skip
    txn_id = body(txn)["transaction_id"]
    assert (await complete(p, txn_id, inp=4)).status_code == 200
    r = await p.post(f"/v1/transactions/{one_shot['transaction_id']}/refund", {"amount": 2})
    assert r.status_code == 201, r.text

    async def violations() -> list[Any]:
        async with db.transaction() as session:
            rows = await session.execute(text(CHECKS["team_usage_equals_team_transactions"]))
            return [row for row in rows if str(row[0]) == p.id]

    assert await violations() == []
    async with db.transaction() as session:
        (credits,) = (
            await session.execute(
                text("SELECT credits FROM usage_team_daily WHERE project_id = :p"), {"p": p.id}
            )
        ).one()
        assert credits == Decimal(9)  # 7 + 4 - 2
        await session.execute(
            text("UPDATE usage_team_daily SET credits = credits + 1 WHERE project_id = :p"),
            {"p": p.id},
        )
    try:
        (found,) = await violations()
        assert found[1] == "t1/alice"
    finally:  # the database is shared: later tests verify every project
        async with db.transaction() as session:
            await session.execute(
                text("UPDATE usage_team_daily SET credits = credits - 1 WHERE project_id = :p"),
                {"p": p.id},
            )


async def test_team_id_with_a_non_team_grouping_is_refused(project: Project) -> None:
    r = await project.get("/v1/analytics/spend", params={"group_by": "user", "team_id": "t1"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["query", "team_id"]


async def test_verify_checks_that_rows_name_their_accounts_team(
    project: Project, db: Database
) -> None:
    p = project
    await p.price("_default", 1000, 0)
    await _team(p, "t1", 100, "alice")
    usage = {"user_id": "alice", "model": "m", "team_id": "t1", "tokens": {"input_tokens": 7}}
    assert (await p.post("/v1/usage", usage)).status_code == 201

    async def violations() -> list[Any]:
        async with db.transaction() as session:
            rows = await session.execute(text(CHECKS["team_id_names_the_accounts_team"]))
            return [row for row in rows if str(row[0]) == p.id]

    assert await violations() == []
    drift = "UPDATE transactions SET team_id = :t WHERE project_id = :p"
    async with db.transaction() as session:
        await session.execute(text(drift), {"p": p.id, "t": None})
    try:
        (found,) = await violations()
        assert found[1].startswith("transaction ")
    finally:  # the database is shared: later tests verify every project
        async with db.transaction() as session:
            await session.execute(text(drift), {"p": p.id, "t": "t1"})

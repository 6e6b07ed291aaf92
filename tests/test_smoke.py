from decimal import Decimal

from tests.conftest import Project


async def test_start_then_complete_charges_the_finalized_usage(project: Project) -> None:
    await project.price("_default", 1, 10)
    await project.user("u_1", credits=100.5)

    started = await project.post(
        "/v1/transactions/start",
        {
            "user_id": "u_1",
            "model": "gpt-4o",
            "provisional_tokens": {"input_tokens": 100, "output_tokens": 500},
        },
    )
    assert started.status_code == 201
    body = started.json()
    assert body["continue"] is True
    assert Decimal(str(body["hold_amount"])) == Decimal("5.1")

    done = await project.post(
        f"/v1/transactions/{body['transaction_id']}/complete",
        {"success": True, "finalized_tokens": {"input_tokens": 10, "output_tokens": 50}},
    )
    assert done.status_code == 200
    assert done.json()["credits_used"] == 0.51
    assert await project.balance("u_1") == {"available": 99.99, "held": 0, "total": 99.99}

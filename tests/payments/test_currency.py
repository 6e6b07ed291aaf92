"""Minor units come from ISO 4217 (not CLDR's display digits), with each provider's documented
exceptions: a top-up is sent, stored and reported in the provider's units, and an amount the
provider cannot take exactly is a 422 naming the rule."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.integrations.base import ProviderName
from app.payments import currency
from tests.conftest import Project
from tests.fakes.razorpay_server import FakeRazorpay
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import body
from tests.payments import stripe_helpers
from tests.payments.test_razorpay_flow import configure as configure_razorpay


@pytest.mark.parametrize(
    ("amount", "code", "provider", "minor"),
    [
        # CLDR shows IDR, HUF, COP... without decimals; ISO 4217 (and the providers) use 2.
        ("100000", "IDR", "stripe", 10_000_000),
        ("100000", "IDR", "razorpay", 10_000_000),
        ("1500", "COP", "stripe", 150_000),
        ("2500", "HUF", "stripe", 250_000),
        ("300", "TWD", "stripe", 30_000),
        # ISK and UGX are zero-decimal, but Stripe takes them as two-decimal amounts.
        ("1000", "ISK", "stripe", 100_000),
        ("5000", "UGX", "stripe", 500_000),
        ("1000", "ISK", "razorpay", 1000),
        ("500", "JPY", "stripe", 500),
        ("500", "JPY", "razorpay", 500),
        ("1.25", "KWD", "stripe", 1250),
        ("1.25", "KWD", "razorpay", 1250),
        # MGA has 2 decimals in ISO 4217; Stripe documents it as zero-decimal.
        ("1000", "MGA", "stripe", 1000),
        ("1000", "MGA", "razorpay", 100_000),
    ],
)
def test_amounts_are_sent_in_the_providers_minor_units(
    amount: str, code: str, provider: ProviderName, minor: int
) -> None:
    assert currency.to_minor(Decimal(amount), code, provider) == minor
    assert currency.to_major(minor, code, provider) == Decimal(amount)


@pytest.mark.parametrize(
    ("amount", "code", "provider", "rule"),
    [
        ("2500.50", "HUF", "stripe", "Stripe takes HUF only in whole units"),
        ("300.01", "TWD", "stripe", "Stripe takes TWD only in whole units"),
        ("1000.5", "ISK", "stripe", "Stripe takes ISK only in whole units"),
        ("5000.25", "UGX", "stripe", "Stripe takes UGX only in whole units"),
        ("1.255", "KWD", "stripe", "Stripe takes KWD only to 2 decimal places"),
        ("1.001", "BHD", "stripe", "Stripe takes BHD only to 2 decimal places"),
        ("1.255", "KWD", "razorpay", "Razorpay takes KWD only to 2 decimal places"),
        ("10.5", "JPY", "stripe", "JPY has 0 decimal places at stripe"),
        ("10.5", "MGA", "stripe", "MGA has 0 decimal places at stripe"),
        ("1000.5", "ISK", "razorpay", "ISK has 0 decimal places at razorpay"),
        ("100000.001", "IDR", "stripe", "IDR has 2 decimal places at stripe"),
        # ISO 4217 says 3 decimals; Stripe documents none for IQD, so it is not guessed.
        ("1000", "IQD", "stripe", "stripe does not take IQD"),
    ],
)
def test_amounts_a_provider_cannot_take_exactly_are_refused_naming_the_rule(
    amount: str, code: str, provider: ProviderName, rule: str
) -> None:
    with pytest.raises(currency.NotPayable) as refused:
        currency.to_minor(Decimal(amount), code, provider)
    assert rule in str(refused.value)


def test_whole_units_and_a_last_digit_0_are_accepted() -> None:
    assert currency.to_minor(Decimal("2500.00"), "HUF", "stripe") == 250_000
    assert currency.to_minor(Decimal("1.250"), "KWD", "stripe") == 1250
    assert currency.to_minor(Decimal("1.250"), "KWD", "razorpay") == 1250
    assert currency.to_minor(Decimal("1000.00"), "UGX", "stripe") == 100_000


def test_metals_funds_and_codes_outside_iso_4217_are_not_payable() -> None:
    for code in ("XAU", "XAG", "XDR", "XTS", "XXX", "XAD", "ZZZ", "US", "DEM"):
        assert currency.normalize(code) is None, code
    for code in ("idr", "XAF", "XOF", "XPF", "XCD", "XCG", "USD"):
        assert currency.normalize(code) == code.upper()
    for provider in ("stripe", "razorpay"):
        assert currency.minor_units("XAU", provider) is None


def test_values_are_rounded_to_iso_minor_units() -> None:
    assert currency.round_to_minor(Decimal("33333.333"), "IDR") == Decimal("33333.33")
    assert currency.round_to_minor(Decimal("498.5"), "JPY") == Decimal("499")
    assert currency.round_to_minor(Decimal("0.1425"), "KWD") == Decimal("0.143")
    assert currency.round_to_minor(Decimal("12.345"), "ISK") == Decimal("12")


async def test_an_idr_top_up_at_stripe_charges_the_full_amount(
    project: Project, fake_stripe: FakeStripe
) -> None:
    await stripe_helpers.configure(project, fake_stripe)

    r = await stripe_helpers.top_up(project, amount="100000", currency="idr", credits=100)

    assert r.status_code == 201, r.text
    out = body(r)
    assert (out["amount"], out["currency"], out["amount_minor"]) == (
        Decimal("100000"),
        "IDR",
        10_000_000,
    )
    [req] = [q for q in fake_stripe.requests if q.path == "/v1/checkout/sessions"]
    line = req.params["line_items"][0]["price_data"]
    assert (line["unit_amount"], line["currency"]) == ("10000000", "idr")


async def test_an_idr_top_up_at_razorpay_charges_the_full_amount(
    project: Project, fake_razorpay: FakeRazorpay
) -> None:
    await configure_razorpay(project, fake_razorpay)

    r = await project.post("/v1/payments", _razorpay_top_up(amount="100000", currency="IDR"))

    assert r.status_code == 201, r.text
    out = body(r)
    assert out["amount_minor"] == 10_000_000
    link = fake_razorpay.links[out["provider_reference"]]
    assert (link["amount"], link["currency"]) == (10_000_000, "IDR")


@pytest.mark.parametrize(
    ("amount", "code", "rule"),
    [
        ("2500.50", "HUF", "Stripe takes HUF only in whole units"),
        ("1.255", "KWD", "Stripe takes KWD only to 2 decimal places"),
        ("10", "XAU", "not an ISO 4217 currency"),
    ],
)
async def test_a_top_up_stripe_cannot_take_exactly_is_422_and_opens_nothing(
    project: Project, fake_stripe: FakeStripe, amount: str, code: str, rule: str
) -> None:
    await stripe_helpers.configure(project, fake_stripe)

    r = await stripe_helpers.top_up(project, amount=amount, currency=code, credits=1)

    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "validation_error"
    assert rule in str(problem)
    assert not [q for q in fake_stripe.requests if q.path == "/v1/checkout/sessions"]
    listed = await project.get("/v1/payments")
    assert body(listed)["data"] == []


def _razorpay_top_up(**extra: Any) -> dict[str, Any]:
    return {"user_id": "u", "provider": "razorpay", "credits": 100, **extra}

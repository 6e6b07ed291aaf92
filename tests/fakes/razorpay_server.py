"""A fake Razorpay: a real HTTP server on 127.0.0.1 that the official ``razorpay`` SDK talks to,
and a control API that drives payments and returns **signed** webhook deliveries.

One server runs per test session (``fake_razorpay_server``); each test gets its own merchant
account on it (``fake_razorpay``: fresh key id, key secret, webhook secret), so tests never see
each other's links and an app built once per session can point ``razorpay_api_base`` at it.

What it speaks (enough for the SDK and creditd, shaped like Razorpay's API v1):
``POST/GET /v1/payment_links`` (``?reference_id=`` listing; a duplicate ``reference_id`` → 400),
``GET /v1/payment_links/{id}``, ``POST /v1/payment_links/{id}/cancel``, ``POST /v1/subscriptions``,
``GET /v1/subscriptions/{id}``, ``POST /v1/subscriptions/{id}/cancel``. HTTP Basic auth with
``key_id:key_secret``; errors as ``{"error": {"code": "BAD_REQUEST_ERROR", "description": …}}``
(unknown ids and URLs are 400s, as at Razorpay). Faults: ``fail_next`` (a 5xx/429/HTML answer),
``drop_next`` (connection closed without an answer), ``delay_next`` (the work is done, then the
answer comes late: a client timeout that did create the thing).

Webhook bodies are encoded like Razorpay's PHP does (``\\/`` for ``/``, ``\\uXXXX`` for
non-ASCII, ``[]`` for empty notes): a receiver that re-serialises JSON before checking the
HMAC fails on them. Periods are fixed-length (a month is 30 days).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from app.integrations.base import Credentials

Entity = dict[str, Any]

_ALPHABET = string.ascii_letters + string.digits
_PERIOD_SECONDS = {
    "daily": 86_400,
    "weekly": 7 * 86_400,
    "monthly": 30 * 86_400,
    "yearly": 365 * 86_400,
}
_DONE_SUBSCRIPTION = frozenset({"cancelled", "completed", "expired"})


def new_id(prefix: str) -> str:
    """``prefix_`` + 14 base62 characters, like Razorpay's ids."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(14))


def php_json(document: Any) -> bytes:
    """JSON as Razorpay's PHP ``json_encode`` writes it: compact, ``\\/``, ``\\uXXXX``."""
    # "/" only ever occurs inside JSON strings, so escaping every one keeps the JSON valid.
    return (
        json.dumps(document, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode()
    )


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class ApiError(Exception):
    """Answered as Razorpay's error JSON."""

    def __init__(self, description: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.field = field

    def body(self) -> Entity:
        error: Entity = {
            "code": "BAD_REQUEST_ERROR",
            "description": self.description,
            "source": "business",
            "step": "payment_initiation",
            "reason": "input_validation_failed",
            "metadata": {},
        }
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


@dataclass(frozen=True)
class Delivery:
    """One webhook as Razorpay would POST it: exactly these bytes with these headers."""

    event: str
    event_id: str
    body: bytes
    headers: dict[str, str]
    payload: Entity

    @property
    def lower_headers(self) -> dict[str, str]:
        """Header names in lower case, as ``PaymentProvider.parse_webhook`` receives them."""
        return {k.lower(): v for k, v in self.headers.items()}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    fault: str | None


@dataclass
class _Fault:
    kind: str  # "status" | "html" | "drop" | "delay"
    status: int = 500
    seconds: float = 0.0


@dataclass
class _SubscriptionState:
    period_seconds: int
    charged_current: bool = False


class FakeRazorpay:
    """One merchant account on the fake server: its credentials, its objects, and the control
    API. Every method is safe to call while the SDK talks to the server from other threads."""

    def __init__(
        self, server: FakeRazorpayServer, key_id: str, key_secret: str, webhook_secret: str
    ) -> None:
        self._server = server
        self._lock = server.lock
        self.key_id = key_id
        self.key_secret = key_secret
        self.webhook_secret = webhook_secret
        self.account_id = new_id("acc")
        self.links: dict[str, Entity] = {}
        self.orders: dict[str, Entity] = {}
        self.payments: dict[str, Entity] = {}
        self.refunds: dict[str, Entity] = {}
        self.disputes: dict[str, Entity] = {}
        self.plans: dict[str, Entity] = {}
        self.subscriptions: dict[str, Entity] = {}
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[Delivery] = []
        self._subscription_state: dict[str, _SubscriptionState] = {}
        self._faults: list[_Fault] = []
        self.clock: Callable[[], float] = time.time

    # --- wiring --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base for ``razorpay.Client(base_url=…)`` / ``razorpay_api_base``."""
        return self._server.url

    def credentials(self, *, timeout_seconds: float = 10.0) -> Credentials:
        return Credentials(
            provider="razorpay",
            secret_key=self.key_secret,
            key_id=self.key_id,
            api_base=self.url,
            timeout_seconds=timeout_seconds,
        )

    def fail_next(self, count: int = 1, *, status: int = 500, html: bool = False) -> None:
        """The next ``count`` API requests answer ``status`` (Razorpay's error JSON, or an HTML
        page when ``html``: what a load balancer says) and do nothing."""
        with self._lock:
            self._faults += [_Fault("html" if html else "status", status=status)] * count

    def drop_next(self, count: int = 1) -> None:
        """The next ``count`` API requests are read, not done, and the connection is closed."""
        with self._lock:
            self._faults += [_Fault("drop")] * count

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """The next ``count`` requests are done, then answered only after ``seconds``."""
        with self._lock:
            self._faults += [_Fault("delay", seconds=seconds)] * count

    def sign(self, body: bytes, secret: str | None = None) -> str:
        return sign(body, self.webhook_secret if secret is None else secret)

    def rotate_webhook_secret(self, new_secret: str | None = None) -> str:
        """Sign from now on with a new secret (returned); the old one is what creditd keeps
        accepting during its grace period."""
        with self._lock:
            self.webhook_secret = new_secret or f"whsec_{secrets.token_hex(16)}"
            return self.webhook_secret

    def now(self) -> int:
        return int(self.clock())

    # --- webhooks ------------------------------------------------------------------------------

    def event(self, event_type: str, *, secret: str | None = None, **entities: Entity) -> Delivery:
        """A signed delivery of ``event_type`` carrying ``entities`` (name → entity)."""
        with self._lock:
            document = {
                "entity": "event",
                "account_id": self.account_id,
                "event": event_type,
                "contains": list(entities),
                "payload": {name: {"entity": copy.deepcopy(e)} for name, e in entities.items()},
                "created_at": self.now(),
            }
            body = php_json(document)
            event_id = new_id("evt")
            delivery = Delivery(
                event=event_type,
                event_id=event_id,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "Razorpay-Webhook/v1",
                    "X-Razorpay-Signature": self.sign(body, secret),
                    "x-razorpay-event-id": event_id,
                },
                payload=json.loads(body),
            )
            self.deliveries.append(delivery)
            return delivery

    # --- payment links -------------------------------------------------------------------------

    def _link(self, link_id: str) -> Entity:
        if link_id not in self.links:
            raise KeyError(f"no payment link {link_id} on this fake account")
        return self.links[link_id]

    def _order_for(self, link: Entity) -> Entity:
        """The order behind a link; Razorpay makes it when the link is first opened to pay."""
        if link.get("order_id"):
            return self.orders[link["order_id"]]
        order = {
            "id": new_id("order"),
            "entity": "order",
            "amount": link["amount"],
            "amount_paid": 0,
            "amount_due": link["amount"],
            "currency": link["currency"],
            "receipt": link["reference_id"],
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": copy.deepcopy(link["notes"]),
            "created_at": self.now(),
        }
        self.orders[order["id"]] = order
        link["order_id"] = order["id"]
        return order

    def _new_payment(self, amount: int, currency: str, **fields: Any) -> Entity:
        payment: Entity = {
            "id": new_id("pay"),
            "entity": "payment",
            "amount": amount,
            "currency": currency,
            "status": "captured",
            "order_id": None,
            "invoice_id": None,
            "international": False,
            "method": "card",
            "amount_refunded": 0,
            "refund_status": None,
            "captured": True,
            "description": None,
            "card_id": new_id("card"),
            "bank": None,
            "wallet": None,
            "vpa": None,
            "email": "void@razorpay.com",
            "contact": "+919999999999",
            "notes": [],
            "fee": amount // 50,
            "tax": 0,
            "error_code": None,
            "error_description": None,
            "error_source": None,
            "error_step": None,
            "error_reason": None,
            "acquirer_data": {"auth_code": "123456"},
            "created_at": self.now(),
        }
        payment.update(fields)
        self.payments[payment["id"]] = payment
        return payment

    def pay(
        self, link_id: str, *, amount: int | None = None, currency: str | None = None
    ) -> list[Delivery]:
        """Pay the link with one captured payment → ``[payment_link.paid, payment.captured,
        order.paid]`` for that one payment (``amount``/``currency`` override what was paid)."""
        with self._lock:
            link = self._link(link_id)
            if link["status"] not in ("created", "partially_paid"):
                raise ValueError(f"payment link {link_id} is {link['status']}")
            order = self._order_for(link)
            paid = link["amount"] if amount is None else amount
            payment = self._new_payment(
                paid,
                currency or link["currency"],
                order_id=order["id"],
                notes=copy.deepcopy(link["notes"]) or [],
                description=link["description"],
            )
            now = self.now()
            link.update(status="paid", amount_paid=link["amount_paid"] + paid, updated_at=now)
            link["payments"] = [
                *(link["payments"] or []),
                {
                    "amount": paid,
                    "created_at": now,
                    "method": payment["method"],
                    "payment_id": payment["id"],
                    "plink_id": link["id"],
                    "status": "captured",
                    "updated_at": now,
                },
            ]
            order.update(
                status="paid",
                amount_paid=order["amount_paid"] + paid,
                amount_due=max(0, order["amount"] - order["amount_paid"] - paid),
                attempts=order["attempts"] + 1,
            )
            return [
                self.event("payment_link.paid", payment_link=link, order=order, payment=payment),
                self.event("payment.captured", payment=payment),
                self.event("order.paid", payment=payment, order=order),
            ]

    def fail(self, link_id: str, *, reason: str = "Payment failed") -> Delivery:
        """A failed attempt on the link (it stays payable) → ``payment.failed``."""
        with self._lock:
            link = self._link(link_id)
            order = self._order_for(link)
            order["attempts"] += 1
            payment = self._new_payment(
                link["amount"],
                link["currency"],
                status="failed",
                captured=False,
                order_id=order["id"],
                notes=copy.deepcopy(link["notes"]) or [],
                error_code="BAD_REQUEST_ERROR",
                error_description=reason,
                error_source="customer",
                error_step="payment_authentication",
                error_reason="payment_failed",
            )
            return self.event("payment.failed", payment=payment)

    def expire(self, link_id: str) -> Delivery:
        with self._lock:
            link = self._link(link_id)
            link.update(status="expired", expired_at=self.now())
            return self.event("payment_link.expired", payment_link=link)

    def cancel_link(self, link_id: str) -> Delivery:
        with self._lock:
            link = self._link(link_id)
            link.update(status="cancelled", cancelled_at=link.get("cancelled_at") or self.now())
            return self.event("payment_link.cancelled", payment_link=link)

    def captured(self, payment_id: str) -> Delivery:
        """A ``payment.captured`` for any payment here (a subscription's too)."""
        with self._lock:
            return self.event("payment.captured", payment=self.payments[payment_id])

    def refund(self, payment_id: str, amount: int | None = None) -> Delivery:
        """Refund ``amount`` (default: all that is left) → ``refund.processed`` whose payment
        carries the cumulative ``amount_refunded``."""
        with self._lock:
            payment = self.payments[payment_id]
            left = payment["amount"] - payment["amount_refunded"]
            amount = left if amount is None else amount
            if not 0 < amount <= left:
                raise ValueError(f"cannot refund {amount} of {payment_id}: {left} left")
            refund = {
                "id": new_id("rfnd"),
                "entity": "refund",
                "amount": amount,
                "currency": payment["currency"],
                "payment_id": payment_id,
                "notes": [],
                "receipt": None,
                "acquirer_data": {"arn": None},
                "created_at": self.now(),
                "batch_id": None,
                "status": "processed",
                "speed_processed": "normal",
                "speed_requested": "normal",
            }
            self.refunds[refund["id"]] = refund
            payment["amount_refunded"] += amount
            full = payment["amount_refunded"] == payment["amount"]
            payment["refund_status"] = "full" if full else "partial"
            if full:
                payment["status"] = "refunded"
            return self.event("refund.processed", refund=refund, payment=payment)

    def dispute(
        self,
        payment_id: str,
        event: str = "created",
        *,
        amount: int | None = None,
        status: str | None = None,
        phase: str = "chargeback",
    ) -> Delivery:
        """``payment.dispute.<event>`` (created, under_review, action_required, won, lost,
        closed) on the payment's dispute (made on first use); ``status`` overrides the one the
        event implies (a ``closed`` dispute's status says how it ended)."""
        implied = {"created": "open", "action_required": "open", "under_review": "under_review"}
        with self._lock:
            payment = self.payments[payment_id]
            dispute = next(
                (d for d in self.disputes.values() if d["payment_id"] == payment_id), None
            )
            if dispute is None:
                dispute = {
                    "id": new_id("disp"),
                    "entity": "dispute",
                    "payment_id": payment_id,
                    "amount": payment["amount"] if amount is None else amount,
                    "currency": payment["currency"],
                    "amount_deducted": 0,
                    "reason_code": "chargeback",
                    "reason_description": "The customer disputed the charge",
                    "respond_by": self.now() + 7 * 86_400,
                    "status": "open",
                    "phase": phase,
                    "comments": None,
                    "evidence": {"amount": None, "summary": None},
                    "created_at": self.now(),
                }
                self.disputes[dispute["id"]] = dispute
            elif amount is not None:
                dispute["amount"] = amount
            dispute["phase"] = phase
            dispute["status"] = status or implied.get(event, event)
            if dispute["status"] == "lost":
                dispute["amount_deducted"] = dispute["amount"]
            return self.event(f"payment.dispute.{event}", payment=payment, dispute=dispute)

    # --- subscriptions -------------------------------------------------------------------------

    def create_plan(
        self,
        amount: int,
        currency: str = "INR",
        *,
        period: str = "monthly",
        interval: int = 1,
        plan_id: str | None = None,
    ) -> str:
        """Register a plan (any id you like, e.g. a plan's ``razorpay_plan_id``); returns it."""
        plan_id = plan_id or new_id("plan")
        with self._lock:
            self.plans[plan_id] = {
                "id": plan_id,
                "entity": "plan",
                "interval": interval,
                "period": period,
                "item": {
                    "id": new_id("item"),
                    "active": True,
                    "name": f"plan {plan_id}",
                    "amount": amount,
                    "unit_amount": amount,
                    "currency": currency,
                },
                "notes": [],
                "created_at": self.now(),
            }
        return plan_id

    def _subscription(self, subscription_id: str) -> Entity:
        if subscription_id not in self.subscriptions:
            raise KeyError(f"no subscription {subscription_id} on this fake account")
        return self.subscriptions[subscription_id]

    def _start(self, subscription: Entity) -> None:
        state = self._subscription_state[subscription["id"]]
        now = self.now()
        subscription.update(
            status="active",
            start_at=subscription.get("start_at") or now,
            current_start=now,
            current_end=now + state.period_seconds,
            charge_at=now + state.period_seconds,
            auth_attempts=0,
        )
        state.charged_current = False

    def activate(self, subscription_id: str) -> Delivery:
        """The customer authorised it: first period starts now → ``subscription.activated``."""
        with self._lock:
            subscription = self._subscription(subscription_id)
            self._start(subscription)
            return self.event("subscription.activated", subscription=subscription)

    def charge(self, subscription_id: str, *, amount: int | None = None) -> Delivery:
        """Charge a period with a new payment → ``subscription.charged``: the current period
        the first time after activation, the next one after that (activating if needed)."""
        with self._lock:
            subscription = self._subscription(subscription_id)
            state = self._subscription_state[subscription_id]
            if subscription["current_start"] is None:
                self._start(subscription)
            elif state.charged_current:
                start = subscription["current_end"]
                subscription.update(
                    current_start=start,
                    current_end=start + state.period_seconds,
                    charge_at=start + state.period_seconds,
                )
            state.charged_current = True
            item = self.plans[subscription["plan_id"]]["item"]
            payment = self._new_payment(
                item["amount"] if amount is None else amount,
                item["currency"],
                invoice_id=new_id("inv"),
                order_id=new_id("order"),
                description=f"Subscription {subscription_id}",
            )
            paid = subscription["paid_count"] + 1
            subscription.update(
                status="active",
                paid_count=paid,
                remaining_count=max(0, subscription["total_count"] - paid),
            )
            return self.event("subscription.charged", subscription=subscription, payment=payment)

    def _subscription_event(self, subscription_id: str, status: str, event: str) -> Delivery:
        with self._lock:
            subscription = self._subscription(subscription_id)
            subscription["status"] = status
            if status in _DONE_SUBSCRIPTION:
                subscription["ended_at"] = subscription.get("ended_at") or self.now()
            return self.event(event, subscription=subscription)

    def pending(self, subscription_id: str) -> Delivery:
        """A renewal charge failed; Razorpay retries → ``subscription.pending``."""
        return self._subscription_event(subscription_id, "pending", "subscription.pending")

    def halt(self, subscription_id: str) -> Delivery:
        """Razorpay gave up retrying → ``subscription.halted``."""
        return self._subscription_event(subscription_id, "halted", "subscription.halted")

    def cancel_subscription(self, subscription_id: str) -> Delivery:
        return self._subscription_event(subscription_id, "cancelled", "subscription.cancelled")

    def complete(self, subscription_id: str) -> Delivery:
        """All ``total_count`` cycles billed → ``subscription.completed``."""
        return self._subscription_event(subscription_id, "completed", "subscription.completed")

    def cancel(self, object_id: str) -> Delivery:
        """``cancel_link`` for a ``plink_…``, ``cancel_subscription`` for a ``sub_…``."""
        if object_id.startswith("plink_"):
            return self.cancel_link(object_id)
        return self.cancel_subscription(object_id)

    # --- the HTTP API (called by the server with the lock held) --------------------------------

    def _take_fault(self) -> _Fault | None:
        return self._faults.pop(0) if self._faults else None

    def api(self, method: str, path: str, query: dict[str, str], body: Any) -> Entity:
        for route_method, pattern, handler in _ROUTES:
            if route_method == method and (match := pattern.fullmatch(path)):
                return handler(self, query, body, *match.groups())
        raise ApiError("The requested URL was not found on the server.")

    def _check_notes(self, value: Any) -> Entity:
        if value is None or value == []:
            return {}
        if not isinstance(value, dict):
            raise ApiError("notes should be an array of key value pairs", field="notes")
        if len(value) > 15:
            raise ApiError("The notes may not have more than 15 items.", field="notes")
        for key, item in value.items():
            if not isinstance(item, str | int | float) or len(str(item)) > 256:
                raise ApiError(
                    f"The notes.{key} may not be greater than 256 characters.", field="notes"
                )
        return dict(value)

    def _api_create_link(self, _: dict[str, str], body: Any) -> Entity:
        if not isinstance(body, dict):
            raise ApiError("The request body should be a JSON object")
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 100:
            raise ApiError("The amount must be atleast INR 1.00", field="amount")
        currency = body.get("currency", "INR")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise ApiError("The currency is invalid.", field="currency")
        reference_id = body.get("reference_id")
        if reference_id is not None:
            if not isinstance(reference_id, str) or len(reference_id) > 40:
                raise ApiError(
                    "The reference id may not be greater than 40 characters.", field="reference_id"
                )
            if any(link["reference_id"] == reference_id for link in self.links.values()):
                raise ApiError(
                    f"Payment Link with reference id {reference_id} already exists",
                    field="reference_id",
                )
        if body.get("callback_url") and body.get("callback_method") != "get":
            raise ApiError("callback_method should be get", field="callback_method")
        description = body.get("description") or ""
        if len(description) > 2048:
            raise ApiError("The description may not be greater than 2048 characters.")
        now = self.now()
        expire_by = body.get("expire_by")
        if expire_by is not None and (type(expire_by) is not int or expire_by < now + 15 * 60):
            raise ApiError(
                "expire by should be at least 15 minutes after current time", field="expire_by"
            )
        link: Entity = {
            "id": new_id("plink"),
            "entity": "payment_link",
            "accept_partial": bool(body.get("accept_partial", False)),
            "amount": amount,
            "amount_paid": 0,
            "callback_method": body.get("callback_method", ""),
            "callback_url": body.get("callback_url", ""),
            "cancelled_at": 0,
            "created_at": now,
            "currency": currency,
            "customer": body.get("customer") or {},
            "description": description,
            "expire_by": body.get("expire_by", 0),
            "expired_at": 0,
            "first_min_partial_amount": 0,
            "notes": self._check_notes(body.get("notes")) or [],
            "notify": body.get("notify") or {"email": False, "sms": False, "whatsapp": False},
            "payments": None,
            "reference_id": reference_id or "",
            "reminder_enable": bool(body.get("reminder_enable", False)),
            "reminders": [],
            "short_url": f"https://rzp.io/rzp/{new_id('x')[2:]}",
            "status": "created",
            "updated_at": now,
            "upi_link": False,
            "user_id": "",
            "whatsapp_link": False,
        }
        self.links[link["id"]] = link
        return link

    def _api_list_links(self, query: dict[str, str], _: Any) -> Entity:
        links = [
            link
            for link in self.links.values()
            if "reference_id" not in query or link["reference_id"] == query["reference_id"]
        ]
        return {"payment_links": links}

    def _api_get_link(self, _: dict[str, str], __: Any, link_id: str) -> Entity:
        if link_id not in self.links:
            raise ApiError("The id provided does not exist")
        return self.links[link_id]

    def _api_cancel_link(self, _: dict[str, str], __: Any, link_id: str) -> Entity:
        link = self._api_get_link(_, __, link_id)
        if link["status"] not in ("created", "partially_paid"):
            raise ApiError(f"Payment Link cannot be cancelled in {link['status']} state")
        link.update(status="cancelled", cancelled_at=self.now(), updated_at=self.now())
        return link

    def _api_create_subscription(self, _: dict[str, str], body: Any) -> Entity:
        if not isinstance(body, dict):
            raise ApiError("The request body should be a JSON object")
        plan = self.plans.get(str(body.get("plan_id")))
        if plan is None:
            raise ApiError("The id provided does not exist", field="plan_id")
        total = body.get("total_count")
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ApiError("The total count field is required.", field="total_count")
        subscription: Entity = {
            "id": new_id("sub"),
            "entity": "subscription",
            "plan_id": plan["id"],
            "customer_id": None,
            "status": "created",
            "current_start": None,
            "current_end": None,
            "ended_at": None,
            "quantity": body.get("quantity", 1),
            "notes": self._check_notes(body.get("notes")) or [],
            "charge_at": None,
            "start_at": body.get("start_at"),
            "end_at": None,
            "auth_attempts": 0,
            "total_count": total,
            "paid_count": 0,
            "customer_notify": bool(body.get("customer_notify", 1)),
            "created_at": self.now(),
            "expire_by": body.get("expire_by"),
            "short_url": f"https://rzp.io/i/{new_id('x')[2:]}",
            "has_scheduled_changes": False,
            "change_scheduled_at": None,
            "source": "api",
            "offer_id": None,
            "remaining_count": total,
        }
        self.subscriptions[subscription["id"]] = subscription
        self._subscription_state[subscription["id"]] = _SubscriptionState(
            period_seconds=_PERIOD_SECONDS[plan["period"]] * plan["interval"]
        )
        return subscription

    def _api_get_subscription(self, _: dict[str, str], __: Any, subscription_id: str) -> Entity:
        if subscription_id not in self.subscriptions:
            raise ApiError("The id provided does not exist")
        return self.subscriptions[subscription_id]

    def _api_cancel_subscription(
        self, _: dict[str, str], body: Any, subscription_id: str
    ) -> Entity:
        subscription = self._api_get_subscription(_, body, subscription_id)
        if subscription["status"] in _DONE_SUBSCRIPTION:
            raise ApiError(f"Subscription is not cancellable in {subscription['status']} status.")
        at_cycle_end = isinstance(body, dict) and body.get("cancel_at_cycle_end") in (1, True, "1")
        if at_cycle_end and subscription["status"] == "active":
            subscription.update(
                has_scheduled_changes=True, change_scheduled_at=subscription["current_end"]
            )
        else:
            subscription.update(status="cancelled", ended_at=self.now())
        return subscription


_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Entity]]] = [
    ("POST", re.compile(r"/v1/payment_links/?"), FakeRazorpay._api_create_link),
    ("GET", re.compile(r"/v1/payment_links/?"), FakeRazorpay._api_list_links),
    ("GET", re.compile(r"/v1/payment_links/([A-Za-z0-9_]+)"), FakeRazorpay._api_get_link),
    (
        "POST",
        re.compile(r"/v1/payment_links/([A-Za-z0-9_]+)/cancel"),
        FakeRazorpay._api_cancel_link,
    ),
    ("POST", re.compile(r"/v1/subscriptions/?"), FakeRazorpay._api_create_subscription),
    ("GET", re.compile(r"/v1/subscriptions/([A-Za-z0-9_]+)"), FakeRazorpay._api_get_subscription),
    (
        "POST",
        re.compile(r"/v1/subscriptions/([A-Za-z0-9_]+)/cancel"),
        FakeRazorpay._api_cancel_subscription,
    ),
]


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests' output is for the tests

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            self._answer(400, json.dumps(ApiError("The request body is not JSON").body()).encode())
            return
        account = self.server.fake.authenticate(self.headers.get("Authorization"))
        if account is None:
            refusal = ApiError("Authentication failed", status=401)
            self._answer(401, json.dumps(refusal.body()).encode())
            return
        with self.server.fake.lock:
            fault = account._take_fault()
            account.requests.append(
                RecordedRequest(
                    method=method,
                    path=split.path,
                    query=query,
                    body=body,
                    headers=dict(self.headers.items()),
                    fault=fault.kind if fault else None,
                )
            )
            if fault is None or fault.kind == "delay":
                try:
                    status, answer = (
                        200,
                        copy.deepcopy(account.api(method, split.path, query, body)),
                    )
                except ApiError as exc:
                    status, answer = exc.status, exc.body()
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return
        if fault is not None and fault.kind == "html":
            self._answer(fault.status, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        if fault is not None and fault.kind == "status":
            error = {"code": "SERVER_ERROR", "description": "The server encountered an error."}
            if fault.status < 500:
                error = {"code": "BAD_REQUEST_ERROR", "description": "Too many requests"}
            self._answer(fault.status, json.dumps({"error": error}).encode())
            return
        if fault is not None:
            time.sleep(fault.seconds)
        self._answer(status, json.dumps(answer).encode())


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeRazorpayServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here, not an error to print


class FakeRazorpayServer:
    """The HTTP server (one per session); ``account()`` makes a merchant account on it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._accounts: dict[str, FakeRazorpay] = {}
        self._http = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._http.fake = self
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="fake-razorpay", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)

    def account(
        self,
        *,
        key_id: str | None = None,
        key_secret: str | None = None,
        webhook_secret: str | None = None,
    ) -> FakeRazorpay:
        account = FakeRazorpay(
            self,
            key_id=key_id or f"rzp_test_{new_id('k')[2:]}",
            key_secret=key_secret or secrets.token_urlsafe(18),
            webhook_secret=webhook_secret or f"whsec_{secrets.token_hex(16)}",
        )
        with self.lock:
            self._accounts[account.key_id] = account
        return account

    def authenticate(self, authorization: str | None) -> FakeRazorpay | None:
        if not authorization or not authorization.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except ValueError:
            return None
        key_id, _, key_secret = decoded.partition(":")
        with self.lock:
            account = self._accounts.get(key_id)
        if account is None or not hmac.compare_digest(
            account.key_secret.encode(), key_secret.encode()
        ):
            return None
        return account


@pytest.fixture(scope="session")
def fake_razorpay_server() -> Iterator[FakeRazorpayServer]:
    server = FakeRazorpayServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_razorpay(fake_razorpay_server: FakeRazorpayServer) -> FakeRazorpay:
    """A fresh merchant account (own keys and webhook secret) on the session's fake Razorpay."""
    return fake_razorpay_server.account()

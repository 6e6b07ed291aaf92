"""A fake Stripe API on 127.0.0.1 that the official SDK talks to, and signed webhooks for it.

Enough of Stripe for creditd: Checkout Sessions (payment and subscription mode), subscription
update and cancel, form-encoded nested parameters as the SDK sends them, Bearer keys,
``Idempotency-Key`` replay, and Stripe's error JSON. Tests drive the money side through Python
methods (``pay``, ``refund``, ``open_dispute``, ``renew`` …), each returning the events Stripe
would send; ``sign`` turns one into the exact bytes and ``Stripe-Signature`` header a delivery
carries. Objects are shaped after API version 2026-10-28 (invoice ``parent``, periods on
subscription items, PaymentIntents created at payment time).

One server runs per test session (the app's settings need a fixed base URL); the ``fake_stripe``
fixture gives every test a fresh secret key and webhook secret, and objects are only visible to
the key that created them, as with separate Stripe accounts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from app.integrations.stripe.client import API_VERSION
from app.integrations.stripe.webhooks import signature_header

Obj = dict[str, Any]

_PERIOD_SECONDS = {"day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400, "year": 365 * 86_400}


class StripeApiError(Exception):
    """Rendered as Stripe's ``{"error": {...}}`` body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: Obj = {"error": {"message": message, "type": type_}}
        if code:
            self.body["error"]["code"] = code
        if param:
            self.body["error"]["param"] = param


@dataclass
class Recorded:
    """One request as the fake received it (params decoded into nested dicts and lists)."""

    method: str
    path: str
    params: Obj
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int | None  # None: drop the connection without answering
    body: Obj | None = None


@dataclass
class _Owned:
    owner: str  # the secret key whose "account" holds the object
    obj: Obj
    extra: Obj = field(default_factory=dict)


def decode_params(pairs: list[tuple[str, str]]) -> Obj:
    """``line_items[0][price_data][currency]=usd`` → nested dicts; all-digit keys → lists."""
    root: Obj = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StripeApiError(400, f"Invalid parameter: {key}", param=key)
        node[parts[-1]] = value
    decoded = _listify(root, parent=None)
    if not isinstance(decoded, dict):
        raise StripeApiError(400, "Invalid parameters")
    return decoded


def _listify(node: Any, parent: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v, k) for k, v in node.items()}
    if parent != "metadata" and out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


def _token() -> str:
    return secrets.token_hex(12)


class FakeStripe:
    """The fake's state, its HTTP server and the control API tests drive it with."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._keys: set[str] = set()
        self._idempotency: dict[tuple[str, str], tuple[str, int, bytes]] = {}
        self._sessions: dict[str, _Owned] = {}
        self._intents: dict[str, _Owned] = {}
        self._charges: dict[str, _Owned] = {}
        self._disputes: dict[str, _Owned] = {}
        self._subscriptions: dict[str, _Owned] = {}
        self._invoices: dict[str, _Owned] = {}
        self._invoice_payments: dict[str, _Owned] = {}
        self._prices: dict[str, _Owned] = {}
        self._failures: list[_Failure] = []
        self.requests: list[Recorded] = []
        self.events: list[Obj] = []
        # Stripe leaves ``payments`` out of invoice webhooks (it must be expanded by a call);
        # set this to deliver it anyway.
        self.invoice_payments_in_events = False
        self.clock: float | None = None  # unix seconds for new objects; None: the wall clock
        self.secret_key = ""
        self.webhook_secret = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeStripe:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-stripe", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reset(self) -> None:
        """A new account for the next test: fresh keys, no queued failures, empty logs."""
        with self._lock:
            self.secret_key = self.add_key()
            self.webhook_secret = "whsec_" + secrets.token_urlsafe(24)
            self._failures.clear()
            self.requests.clear()
            self.events.clear()
            self.invoice_payments_in_events = False
            self.clock = None

    def add_key(self, key: str | None = None) -> str:
        """Register a secret key (a separate account); returns it."""
        # Letters and digits only, like Stripe's keys (token_urlsafe may give a "-").
        key = key or "sk_test_" + secrets.token_hex(24)
        with self._lock:
            self._keys.add(key)
        return key

    def fail_next(
        self, count: int = 1, *, status: int | None = 500, body: Obj | None = None
    ) -> None:
        """The next ``count`` API requests fail: answered with ``status`` (and Stripe's error
        body, or ``body``), or with ``status=None`` the connection is dropped unanswered."""
        with self._lock:
            self._failures.extend(_Failure(status, body) for _ in range(count))

    def now(self) -> int:
        return int(self.clock if self.clock is not None else time.time())

    # --- reading state -----------------------------------------------------------------------

    def session_ids(self, key: str | None = None) -> list[str]:
        """The Checkout Sessions of ``key``'s account (default: this test's), oldest first."""
        with self._lock:
            owner = key or self.secret_key
            return [i for i, o in self._sessions.items() if o.owner == owner]

    def session(self, session_id: str) -> Obj:
        return self._get(self._sessions, session_id)

    def payment_intent(self, intent_id: str) -> Obj:
        return self._get(self._intents, intent_id)

    def charge_of(self, intent_id: str) -> Obj:
        return self._get(self._charges, self.payment_intent(intent_id)["latest_charge"])

    def subscription(self, sub_id: str) -> Obj:
        return self._get(self._subscriptions, sub_id)

    def invoice(self, invoice_id: str) -> Obj:
        return self._get(self._invoices, invoice_id)

    def dispute(self, dispute_id: str) -> Obj:
        return self._get(self._disputes, dispute_id)

    def _get(self, table: dict[str, _Owned], object_id: str) -> Obj:
        with self._lock:
            return copy.deepcopy(table[object_id].obj)

    # --- control: prices ---------------------------------------------------------------------

    def add_price(
        self,
        unit_amount: int,
        currency: str = "usd",
        *,
        interval: str = "month",
        key: str | None = None,
        price_id: str | None = None,
    ) -> str:
        """A recurring price in the account of ``key`` (default: this test's key)."""
        price_id = price_id or "price_" + _token()
        price: Obj = {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": currency.lower(),
            "unit_amount": unit_amount,
            "type": "recurring",
            "recurring": {"interval": interval, "interval_count": 1},
            "livemode": False,
        }
        with self._lock:
            self._prices[price_id] = _Owned(key or self.secret_key, price)
        return price_id

    # --- control: one-off payments -----------------------------------------------------------

    def pay(self, session_id: str) -> list[Obj]:
        """The payer completes a payment-mode session with a card: checkout.session.completed."""
        with self._lock:
            owned = self._open_session(session_id, "payment")
            intent = self._create_intent(owned, status="succeeded")
            owned.obj.update(status="complete", payment_status="paid", payment_intent=intent["id"])
            return [self._event("checkout.session.completed", owned)]

    def pay_async(self, session_id: str, *, outcome: str | None = None) -> list[Obj]:
        """Completed with a delayed method (bank debit): completed with payment_status
        ``unpaid``; with ``outcome`` "succeeded"/"failed" also the later settlement event."""
        with self._lock:
            owned = self._open_session(session_id, "payment")
            intent = self._create_intent(owned, status="processing")
            owned.obj.update(
                status="complete", payment_status="unpaid", payment_intent=intent["id"]
            )
            events = [self._event("checkout.session.completed", owned)]
        if outcome is not None:
            events += self.settle_async(session_id, succeeded=outcome == "succeeded")
        return events

    def settle_async(self, session_id: str, *, succeeded: bool) -> list[Obj]:
        with self._lock:
            owned = self._sessions[session_id]
            intent = self._intents[owned.obj["payment_intent"]]
            if succeeded:
                intent.obj.update(status="succeeded", amount_received=intent.obj["amount"])
                self._create_charge(intent)
                owned.obj["payment_status"] = "paid"
                return [self._event("checkout.session.async_payment_succeeded", owned)]
            intent.obj["status"] = "requires_payment_method"
            return [self._event("checkout.session.async_payment_failed", owned)]

    def expire(self, session_id: str) -> list[Obj]:
        with self._lock:
            owned = self._sessions[session_id]
            if owned.obj["status"] != "open":
                raise ValueError(f"{session_id} is {owned.obj['status']}")
            owned.obj.update(status="expired", url=None)
            return [self._event("checkout.session.expired", owned)]

    def refund(self, intent_id: str, amount: int | None = None) -> list[Obj]:
        """Refund ``amount`` (default: what is left) of the intent's charge: charge.refunded
        carrying the cumulative ``amount_refunded``."""
        with self._lock:
            charge = self._charges[self._intents[intent_id].obj["latest_charge"]]
            left = charge.obj["amount"] - charge.obj["amount_refunded"]
            amount = left if amount is None else amount
            if not 0 < amount <= left:
                raise ValueError(f"cannot refund {amount} of {left} left")
            charge.obj["amount_refunded"] += amount
            charge.obj["refunded"] = charge.obj["amount_refunded"] == charge.obj["amount"]
            return [self._event("charge.refunded", charge)]

    # --- control: disputes -------------------------------------------------------------------

    def open_dispute(
        self, intent_id: str, amount: int | None = None, *, inquiry: bool = False
    ) -> list[Obj]:
        """charge.dispute.created; a real dispute (not an inquiry) also withdraws the funds at
        once, as Stripe does: charge.dispute.funds_withdrawn."""
        with self._lock:
            charge = self._charges[self._intents[intent_id].obj["latest_charge"]]
            dispute: Obj = {
                "id": "du_" + _token(),
                "object": "dispute",
                "amount": charge.obj["amount"] if amount is None else amount,
                "balance_transactions": [],
                "charge": charge.obj["id"],
                "created": self.now(),
                "currency": charge.obj["currency"],
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": intent_id,
                "reason": "fraudulent",
                "status": "warning_needs_response" if inquiry else "needs_response",
            }
            owned = _Owned(charge.owner, dispute, {"withdrawn": False})
            self._disputes[dispute["id"]] = owned
            charge.obj["disputed"] = True
            events = [self._event("charge.dispute.created", owned)]
            if not inquiry:
                events += self._withdraw(owned)
            return events

    def _withdraw(self, owned: _Owned) -> list[Obj]:
        owned.extra["withdrawn"] = True
        return [self._event("charge.dispute.funds_withdrawn", owned)]

    def close_dispute(self, dispute_id: str, *, won: bool) -> list[Obj]:
        """Won: funds_reinstated (if they were withdrawn) then closed ``won``; lost: closed
        ``lost``; an inquiry closes as ``warning_closed`` either way."""
        with self._lock:
            owned = self._disputes[dispute_id]
            events: list[Obj] = []
            if owned.obj["status"].startswith("warning_"):
                owned.obj["status"] = "warning_closed"
            elif won:
                owned.obj["status"] = "won"
                if owned.extra["withdrawn"]:
                    events.append(self._event("charge.dispute.funds_reinstated", owned))
            else:
                owned.obj["status"] = "lost"
            events.append(self._event("charge.dispute.closed", owned))
            return events

    # --- control: subscriptions --------------------------------------------------------------

    def complete_subscription_checkout(self, session_id: str) -> list[Obj]:
        """The payer subscribes: customer, subscription, first invoice paid. Returns
        checkout.session.completed, customer.subscription.created, invoice.paid,
        invoice_payment.paid."""
        with self._lock:
            owned = self._open_session(session_id, "subscription")
            now = self.now()
            customer = "cus_" + _token()
            price = self._prices[owned.extra["price"]].obj
            sub_id = "sub_" + _token()
            sub: Obj = {
                "id": sub_id,
                "object": "subscription",
                "cancel_at": None,
                "cancel_at_period_end": False,
                "canceled_at": None,
                "created": now,
                "currency": price["currency"],
                "customer": customer,
                "ended_at": None,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": "si_" + _token(),
                            "object": "subscription_item",
                            "created": now,
                            "current_period_start": now,
                            "current_period_end": now
                            + _PERIOD_SECONDS[price["recurring"]["interval"]],
                            "metadata": {},
                            "price": copy.deepcopy(price),
                            "quantity": 1,
                            "subscription": sub_id,
                        }
                    ],
                    "has_more": False,
                    "url": f"/v1/subscription_items?subscription={sub_id}",
                },
                "latest_invoice": None,
                "livemode": False,
                "metadata": dict(owned.extra.get("subscription_metadata", {})),
                "start_date": now,
                "status": "active",
            }
            sub_owned = _Owned(owned.owner, sub)
            self._subscriptions[sub_id] = sub_owned
            invoice = self._invoice_for(sub_owned, billing_reason="subscription_create", paid=True)
            owned.obj.update(
                status="complete",
                payment_status="paid",
                customer=customer,
                subscription=sub_id,
                invoice=invoice.obj["id"],
            )
            return [
                self._event("checkout.session.completed", owned),
                self._event("customer.subscription.created", sub_owned),
                *self._invoice_paid_events(invoice),
            ]

    def renew(self, sub_id: str) -> list[Obj]:
        """The next period starts and its invoice is paid: invoice.paid (a new invoice id) and
        invoice_payment.paid (the only event naming the invoice's PaymentIntent)."""
        with self._lock:
            owned = self._subscriptions[sub_id]
            self._advance_period(owned)
            owned.obj["status"] = "active"
            invoice = self._invoice_for(owned, billing_reason="subscription_cycle", paid=True)
            return self._invoice_paid_events(invoice)

    def fail_renewal(self, sub_id: str) -> list[Obj]:
        """The next period's payment fails: invoice.payment_failed and the subscription goes
        past_due (customer.subscription.updated)."""
        with self._lock:
            owned = self._subscriptions[sub_id]
            self._advance_period(owned)
            invoice = self._invoice_for(owned, billing_reason="subscription_cycle", paid=False)
            owned.obj["status"] = "past_due"
            return [
                self._event("invoice.payment_failed", invoice),
                self._event("customer.subscription.updated", owned),
            ]

    def set_subscription_status(self, sub_id: str, status: str) -> list[Obj]:
        """Any status change Stripe makes on its own (``unpaid`` after the retries, …)."""
        with self._lock:
            owned = self._subscriptions[sub_id]
            owned.obj["status"] = status
            return [self._event("customer.subscription.updated", owned)]

    def delete_subscription(self, sub_id: str) -> list[Obj]:
        """The subscription ends now (canceled, or Stripe gave up): deleted."""
        with self._lock:
            return self._cancel_now(self._subscriptions[sub_id])

    def unrelated_invoice_paid(self, amount: int = 5000, currency: str = "usd") -> list[Obj]:
        """A one-off invoice outside any subscription is paid (must credit nothing)."""
        with self._lock:
            now = self.now()
            invoice: Obj = {
                "id": "in_" + _token(),
                "object": "invoice",
                "amount_due": amount,
                "amount_paid": amount,
                "amount_remaining": 0,
                "billing_reason": "manual",
                "created": now,
                "currency": currency,
                "customer": "cus_" + _token(),
                "lines": {"object": "list", "data": [], "has_more": False, "total_count": 0},
                "livemode": False,
                "parent": None,
                "period_start": now,
                "period_end": now,
                "status": "paid",
            }
            owned = _Owned(self.secret_key, invoice)
            self._invoices[invoice["id"]] = owned
            return [self._event("invoice.paid", owned)]

    def extra_invoice_paid(
        self,
        sub_id: str,
        amount: int,
        *,
        billing_reason: str = "manual",
        proration: bool = False,
    ) -> list[Obj]:
        """An invoice on the subscription that is not its period's (``billing_reason``
        "manual": a one-off item the merchant invoiced; "subscription_update" with
        ``proration``: a plan change) is paid: invoice.paid and invoice_payment.paid."""
        with self._lock:
            owned = self._subscriptions[sub_id]
            invoice = self._invoice_for(
                owned, billing_reason=billing_reason, paid=True, amount=amount
            )
            [line] = invoice.obj["lines"]["data"]
            if proration:
                line["parent"]["subscription_item_details"]["proration"] = True
            else:
                line["parent"] = {
                    "type": "invoice_item_details",
                    "invoice_item_details": {"invoice_item": "ii_" + _token(), "proration": False},
                    "subscription_item_details": None,
                }
            return self._invoice_paid_events(invoice)

    def _advance_period(self, owned: _Owned) -> None:
        item = owned.obj["items"]["data"][0]
        length = _PERIOD_SECONDS[item["price"]["recurring"]["interval"]]
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] = item["current_period_start"] + length

    def _invoice_for(
        self, sub: _Owned, *, billing_reason: str, paid: bool, amount: int | None = None
    ) -> _Owned:
        item = sub.obj["items"]["data"][0]
        price = item["price"]
        invoice_id = "in_" + _token()
        amount = price["unit_amount"] if amount is None else amount
        invoice: Obj = {
            "id": invoice_id,
            "object": "invoice",
            "amount_due": amount,
            "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount,
            "attempt_count": 1,
            "billing_reason": billing_reason,
            "created": self.now(),
            "currency": price["currency"],
            "customer": sub.obj["customer"],
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": "il_" + _token(),
                        "object": "line_item",
                        "amount": amount,
                        "currency": price["currency"],
                        "invoice": invoice_id,
                        "parent": {
                            "type": "subscription_item_details",
                            "invoice_item_details": None,
                            "subscription_item_details": {
                                "invoice_item": None,
                                "proration": False,
                                "subscription": sub.obj["id"],
                                "subscription_item": item["id"],
                            },
                        },
                        "period": {
                            "start": item["current_period_start"],
                            "end": item["current_period_end"],
                        },
                        "pricing": {
                            "type": "price_details",
                            "price_details": {"price": price["id"]},
                        },
                        "quantity": 1,
                    }
                ],
                "has_more": False,
                "total_count": 1,
            },
            "livemode": False,
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(sub.obj["metadata"]),
                    "subscription": sub.obj["id"],
                },
            },
            # The invoice's own period is the one that just ended (Stripe's quirk).
            "period_start": item["current_period_start"],
            "period_end": item["current_period_start"],
            "status": "paid" if paid else "open",
        }
        owned = _Owned(sub.owner, invoice)
        if paid:
            intent = self._create_intent(owned, status="succeeded", metadata={})
            row: Obj = {
                "id": "inpay_" + _token(),
                "object": "invoice_payment",
                "amount_paid": amount,
                "amount_requested": amount,
                "created": self.now(),
                "currency": price["currency"],
                "invoice": invoice_id,
                "is_default": True,
                "livemode": False,
                "payment": {"type": "payment_intent", "payment_intent": intent["id"]},
                "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": self.now()},
            }
            self._invoice_payments[row["id"]] = _Owned(sub.owner, row)
            invoice["payments"] = {
                "object": "list",
                "data": [copy.deepcopy(row)],
                "has_more": False,
            }
        self._invoices[invoice_id] = owned
        sub.obj["latest_invoice"] = invoice_id
        return owned

    def _invoice_paid_events(self, invoice: _Owned) -> list[Obj]:
        """invoice.paid, then invoice_payment.paid for each of its payments (Stripe sends both
        and does not order them: tests deliver them in either order)."""
        events = [self._event("invoice.paid", invoice)]
        for row in invoice.obj["payments"]["data"]:
            events.append(self._event("invoice_payment.paid", self._invoice_payments[row["id"]]))
        return events

    def _cancel_now(self, owned: _Owned) -> list[Obj]:
        now = self.now()
        owned.obj.update(status="canceled", canceled_at=now, ended_at=now)
        return [self._event("customer.subscription.deleted", owned)]

    # --- webhooks ----------------------------------------------------------------------------

    def sign(
        self, event: Obj, secret: str | None = None, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """``sign_event`` with this test's webhook secret unless ``secret`` is given."""
        return sign_event(event, secret or self.webhook_secret, timestamp)

    def _event(self, event_type: str, owned: _Owned) -> Obj:
        obj = copy.deepcopy(owned.obj)
        if obj.get("object") == "invoice" and not self.invoice_payments_in_events:
            obj.pop("payments", None)
        event: Obj = {
            "id": "evt_" + _token(),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events.append(event)
        return event

    # --- objects -----------------------------------------------------------------------------

    def _open_session(self, session_id: str, mode: str) -> _Owned:
        owned = self._sessions[session_id]
        if owned.obj["mode"] != mode or owned.obj["status"] != "open":
            raise ValueError(f"{session_id} is a {owned.obj['status']} {owned.obj['mode']} session")
        return owned

    def _create_intent(self, parent: _Owned, *, status: str, metadata: Obj | None = None) -> Obj:
        source = parent.obj
        amount = source.get("amount_total", source.get("amount_due"))
        intent: Obj = {
            "id": "pi_" + _token(),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": amount if status == "succeeded" else 0,
            "created": self.now(),
            "currency": source["currency"],
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(
                parent.extra.get("intent_metadata", {}) if metadata is None else metadata
            ),
            "status": status,
        }
        owned = _Owned(parent.owner, intent)
        self._intents[intent["id"]] = owned
        if status == "succeeded":
            self._create_charge(owned)
        return intent

    def _create_charge(self, intent: _Owned) -> None:
        charge: Obj = {
            "id": "ch_" + _token(),
            "object": "charge",
            "amount": intent.obj["amount"],
            "amount_captured": intent.obj["amount"],
            "amount_refunded": 0,
            "captured": True,
            "created": self.now(),
            "currency": intent.obj["currency"],
            "disputed": False,
            "livemode": False,
            "metadata": dict(intent.obj["metadata"]),
            "paid": True,
            "payment_intent": intent.obj["id"],
            "refunded": False,
            "status": "succeeded",
        }
        self._charges[charge["id"]] = _Owned(intent.owner, charge)
        intent.obj["latest_charge"] = charge["id"]

    # --- the HTTP API (called by the handler under the lock) ---------------------------------

    def handle(self, method: str, path: str, params: Obj, key: str) -> tuple[int, Obj]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["v1", "checkout", "sessions"]:
            rest = parts[3:]
            if method == "POST" and not rest:
                return 200, self._create_session(params, key)
            if method == "GET" and not rest:
                return 200, self._list_sessions(params, key)
            if method == "GET" and len(rest) == 1:
                return 200, self._render_session(self._owned(self._sessions, rest[0], key), params)
            if method == "POST" and len(rest) == 2 and rest[1] == "expire":
                owned = self._owned(self._sessions, rest[0], key)
                if owned.obj["status"] != "open":
                    raise StripeApiError(400, "Only open Checkout Sessions can be expired.")
                self.expire(rest[0])
                return 200, copy.deepcopy(owned.obj)
        if parts[:2] == ["v1", "subscriptions"] and len(parts) == 3:
            owned = self._owned(self._subscriptions, parts[2], key)
            if method == "GET":
                return 200, copy.deepcopy(owned.obj)
            if method == "POST":
                return 200, self._update_subscription(owned, params)
            if method == "DELETE":
                if owned.obj["status"] == "canceled":
                    raise StripeApiError(
                        400, f"No such subscription: '{parts[2]}'", code="resource_missing"
                    )
                self._cancel_now(owned)
                return 200, copy.deepcopy(owned.obj)
        raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")

    def _owned(self, table: dict[str, _Owned], object_id: str, key: str) -> _Owned:
        owned = table.get(object_id)
        if owned is None or owned.owner != key:  # another account's object does not exist
            kind = {id(self._sessions): "checkout.session", id(self._subscriptions): "subscription"}
            raise StripeApiError(
                404,
                f"No such {kind.get(id(table), 'object')}: '{object_id}'",
                code="resource_missing",
                param="id",
            )
        return owned

    def _create_session(self, params: Obj, key: str) -> Obj:
        mode = params.get("mode")
        if mode not in ("payment", "subscription"):
            raise StripeApiError(400, "Invalid mode: must be payment or subscription", param="mode")
        if not params.get("success_url"):
            raise StripeApiError(400, "Missing required param: success_url.", param="success_url")
        items = params.get("line_items")
        if not isinstance(items, list) or len(items) != 1:
            raise StripeApiError(400, "This fake takes exactly one line item.", param="line_items")
        item = items[0]
        quantity = _int_param(item.get("quantity", "1"), "line_items[0][quantity]")
        metadata = _metadata(params.get("metadata"), "metadata")
        extra: Obj = {}
        if mode == "payment":
            data = item.get("price_data")
            if not isinstance(data, dict):
                raise StripeApiError(400, "Missing price_data.", param="line_items[0][price_data]")
            currency = _currency(data.get("currency"))
            unit_amount = _int_param(
                data.get("unit_amount"), "line_items[0][price_data][unit_amount]"
            )
            product = data.get("product_data")
            if not isinstance(product, dict) or not product.get("name"):
                raise StripeApiError(
                    400,
                    "Missing required param: line_items[0][price_data][product_data][name].",
                    param="line_items[0][price_data][product_data][name]",
                )
            intent_data = params.get("payment_intent_data") or {}
            extra["intent_metadata"] = _metadata(
                intent_data.get("metadata"), "payment_intent_data[metadata]"
            )
        else:
            price_id = item.get("price")
            price = self._prices.get(price_id) if isinstance(price_id, str) else None
            if price is None or price.owner != key:
                raise StripeApiError(
                    400,
                    f"No such price: '{price_id}'",
                    code="resource_missing",
                    param="line_items[0][price]",
                )
            currency, unit_amount = price.obj["currency"], price.obj["unit_amount"]
            extra["price"] = price_id
            sub_data = params.get("subscription_data") or {}
            extra["subscription_metadata"] = _metadata(
                sub_data.get("metadata"), "subscription_data[metadata]"
            )
        reference = params.get("client_reference_id")
        if reference is not None and len(reference) > 200:
            raise StripeApiError(
                400, "client_reference_id is too long", param="client_reference_id"
            )
        session_id = "cs_test_" + secrets.token_urlsafe(42).replace("-", "a").replace("_", "b")
        now = self.now()
        expires_at = now + 86_400
        if params.get("expires_at") is not None:
            expires_at = _int_param(params["expires_at"], "expires_at")
            if not now + 1800 <= expires_at <= now + 86_400:
                raise StripeApiError(
                    400,
                    "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
                    "Checkout Session creation.",
                    param="expires_at",
                )
        session: Obj = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": unit_amount * quantity,
            "amount_total": unit_amount * quantity,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": reference,
            "created": now,
            "currency": currency,
            "customer": None,
            "expires_at": expires_at,
            "invoice": None,
            "livemode": False,
            "metadata": metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": params["success_url"],
            "ui_mode": "hosted_page",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        extra["line_item"] = item
        self._sessions[session_id] = _Owned(key, session, extra)
        return copy.deepcopy(session)

    def _list_sessions(self, params: Obj, key: str) -> Obj:
        limit = _int_param(params.get("limit", "10"), "limit")
        rows = [o.obj for o in self._sessions.values() if o.owner == key]
        for name in ("payment_intent", "subscription", "status"):
            if name in params:
                rows = [r for r in rows if r.get(name) == params[name]]
        rows.sort(key=lambda r: r["created"], reverse=True)
        return {
            "object": "list",
            "data": copy.deepcopy(rows[:limit]),
            "has_more": len(rows) > limit,
            "url": "/v1/checkout/sessions",
        }

    def _render_session(self, owned: _Owned, params: Obj) -> Obj:
        session = copy.deepcopy(owned.obj)
        expand = params.get("expand") or []
        if any(e.split(".")[0] == "payment_intent" for e in expand) and session["payment_intent"]:
            intent = copy.deepcopy(self._intents[session["payment_intent"]].obj)
            if "payment_intent.latest_charge" in expand and intent["latest_charge"]:
                intent["latest_charge"] = copy.deepcopy(self._charges[intent["latest_charge"]].obj)
            session["payment_intent"] = intent
        return session

    def _update_subscription(self, owned: _Owned, params: Obj) -> Obj:
        if owned.obj["status"] == "canceled":
            raise StripeApiError(400, "A canceled subscription can only update its metadata.")
        if "cancel_at_period_end" in params:
            flag = params["cancel_at_period_end"]
            if flag not in ("true", "false"):
                raise StripeApiError(400, "Invalid boolean", param="cancel_at_period_end")
            owned.obj["cancel_at_period_end"] = flag == "true"
        if "metadata" in params:
            owned.obj["metadata"].update(_metadata(params["metadata"], "metadata"))
        self._event("customer.subscription.updated", owned)
        return copy.deepcopy(owned.obj)

    # --- HTTP plumbing -----------------------------------------------------------------------

    def serve(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]] | None:
        """One request → (status, body, extra headers), or None to drop the connection."""
        split = urlsplit(raw_path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        if body:
            pairs += parse_qsl(body.decode(), keep_blank_values=True)
        with self._lock:
            try:
                params = decode_params(pairs)
            except StripeApiError as exc:
                params = {}
                error: StripeApiError | None = exc
            else:
                error = None
            self.requests.append(Recorded(method, split.path, params, headers))
            if self._failures:
                failure = self._failures.pop(0)
                if failure.status is None:
                    return None
                failure_body = failure.body or {
                    "error": {"message": "An unknown error occurred", "type": "api_error"}
                }
                return failure.status, json.dumps(failure_body).encode(), {}
            key = _bearer(headers.get("authorization", ""))
            if key is None:
                return _error(StripeApiError(401, "You did not provide an API key."))
            if key not in self._keys:
                masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
                return _error(StripeApiError(401, f"Invalid API Key provided: {masked}"))
            if error is not None:
                return _error(error)
            idem = headers.get("idempotency-key") if method in ("POST", "DELETE") else None
            fingerprint = hashlib.sha256(f"{method} {split.path} ".encode() + body).hexdigest()
            if idem:
                seen = self._idempotency.get((key, idem))
                if seen is not None:
                    if seen[0] != fingerprint:
                        return _error(
                            StripeApiError(
                                400,
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with.",
                                type_="idempotency_error",
                            )
                        )
                    return seen[1], seen[2], {"idempotent-replayed": "true"}
            answer: tuple[int, bytes, dict[str, str]]
            try:
                status, payload = self.handle(method, split.path, params, key)
                answer = (status, json.dumps(payload).encode(), {})
            except StripeApiError as exc:
                answer = _error(exc)
            if idem and answer[0] < 500:  # Stripe replays results, never its own 5xx
                self._idempotency[(key, idem)] = (fingerprint, answer[0], answer[1])
            return answer


def sign_event(
    event: Obj, secret: str, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a delivery of ``event`` signed with ``secret`` at ``timestamp``
    (default: now). Header names are lower case, as ``PaymentProvider.verify_webhook`` takes
    them (HTTP clients accept them as they are)."""
    # Pretty-printed like Stripe's deliveries: only the exact bytes verify.
    body = json.dumps(event, indent=2).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    header = signature_header(body, secret, ts)
    return body, {"stripe-signature": header, "content-type": "application/json; charset=utf-8"}


def _error(exc: StripeApiError) -> tuple[int, bytes, dict[str, str]]:
    return exc.status, json.dumps(exc.body).encode(), {}


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _int_param(value: Any, name: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"\d+", value):
        raise StripeApiError(400, f"Invalid integer: {value}", param=name)
    return int(value)


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z]{3}", value):
        raise StripeApiError(400, f"Invalid currency: {value}", param="currency")
    return value


def _metadata(value: Any, name: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict) or len(value) > 50:
        raise StripeApiError(400, "Invalid metadata", param=name)
    for k, v in value.items():
        if len(k) > 40 or not isinstance(v, str) or len(v) > 500:
            raise StripeApiError(400, f"Invalid metadata key or value: {k}", param=f"{name}[{k}]")
    return dict(value)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripe
    protocol_version = "HTTP/1.1"

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.fake.serve(self.command, self.path, headers, body)
        if answer is None:
            self.close_connection = True
            return  # the client sees the connection close with no response
        status, payload, extra = answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Request-Id", "req_" + _token())
        self.send_header("Stripe-Version", headers.get("stripe-version", API_VERSION))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read ``fake.requests`` instead


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> FakeStripe:
    """The session's fake Stripe with a fresh account (``secret_key``, ``webhook_secret``)."""
    fake_stripe_server.reset()
    return fake_stripe_server


# --- standalone: `python -m tests.fakes.stripe_server --port 0` --------------------------------
# For programs outside pytest (contract/run.sh): one account, its keys printed as one JSON line,
# and a control path that exists only in this fake, never at Stripe:
#   POST /_test/pay/{session_id} → {"body": <the exact delivery text>, "signature": <its
#   Stripe-Signature header>}: the payer completes the session (``pay``), and the one
#   checkout.session.completed event comes back signed with the account's webhook secret, for
#   the caller to deliver itself as raw bytes.


class _ControlHandler(_Handler):
    def _dispatch(self) -> None:
        if not self.path.startswith("/_test/"):
            super()._dispatch()
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, answer = self._control()
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _control(self) -> tuple[int, Obj]:
        match = re.fullmatch(r"/_test/pay/([A-Za-z0-9_]+)", urlsplit(self.path).path)
        if self.command != "POST" or match is None:
            return 404, {"error": "POST /_test/pay/{session_id} is the only control path"}
        try:
            events = self.fake.pay(match.group(1))
        except KeyError:
            return 404, {"error": f"no session {match.group(1)}"}
        except ValueError as exc:  # not an open payment-mode session
            return 409, {"error": str(exc)}
        raw, headers = self.fake.sign(events[0])
        return 200, {"body": raw.decode(), "signature": headers["stripe-signature"]}

    do_GET = do_POST = do_DELETE = _dispatch


def main(argv: list[str] | None = None) -> None:
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="Serve the fake Stripe until SIGINT/SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leaves serve_forever in the main thread

    # Both explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    fake = FakeStripe()
    handler = type("Handler", (_ControlHandler,), {"fake": fake})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    fake._server = server
    print(
        json.dumps(
            {"url": fake.url, "secret_key": fake.secret_key, "webhook_secret": fake.webhook_secret}
        ),
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()

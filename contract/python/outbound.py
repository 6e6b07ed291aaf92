"""Outbound webhooks through the generated client, received on 127.0.0.1 and verified with the
Standard Webhooks reference library (``standardwebhooks``).

``flow.py`` registers an endpoint (``register``) before it writes any event, runs its flow, then
``prove`` checks what arrived against what the API reports:

- every event whose type the endpoint subscribes to arrived, and nothing else: each request
  verifies with ``standardwebhooks.Webhook(secret).verify``, its ``webhook-id`` is the id
  ``events_list`` reports, its body reads with the generated model of its type (from the
  spec's ``webhooks`` section) with no field the spec does not name, and its ``data`` is, digit
  for digit, the event's ``data`` from the API; ``sequence`` orders the user's events;
- the receiver answers 500 to the first attempt of ``transaction.started``: the retry carries
  the same ``webhook-id`` and the same bytes, and ``GET .../deliveries`` shows both attempts;
- ``delivery_status`` is ``succeeded`` for the delivered events, ``not_sent`` for the others;
- ``POST .../test`` sends a ``webhook.test``; after ``rotate-secret`` a request carries two
  signatures, the new secret's first, each verifying with its own secret only;
- ``POST /v1/events/{id}/redeliver`` sends an event again, with the same id and bytes.

The server runs with a short retry schedule (run.sh). Every wait is bounded (``WAIT_SECONDS``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from checks import Mismatch, exact_body, expect, parsed
from creditd_client import AuthenticatedClient
from creditd_client.api.events import events_get, events_list, events_redeliver
from creditd_client.api.webhook_endpoints import (
    webhook_endpoints_create as endpoints_create,
)
from creditd_client.api.webhook_endpoints import (
    webhook_endpoints_get,
    webhook_endpoints_list_deliveries,
    webhook_endpoints_rotate_secret,
    webhook_endpoints_test,
)
from creditd_client.models import (
    CreditsGrantedEvent,
    EventOut,
    PageEventOut,
    PageWebhookAttemptOut,
    RedeliverIn,
    RedeliverOut,
    TransactionCompletedEvent,
    TransactionStartedEvent,
    WebhookAttemptOut,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointWithSecret,
    WebhookTestEvent,
)
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

WAIT_SECONDS = 30.0
PATH = "/hooks/creditd"
SUBSCRIBED = ["transaction.*", "credits.granted", "webhook.test"]
FAIL_FIRST = "transaction.started"  # its first attempt is answered 500
RETRY_BODY = "try again"


def subscribed(event_type: str) -> bool:
    return any(
        event_type == p or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in SUBSCRIBED
    )


def wait_until(condition: Callable[[], bool], what: str | Callable[[], str]) -> None:
    """Wait until ``condition()`` holds; a mismatch after ``WAIT_SECONDS`` (``what`` may be a
    function, to say what it saw last)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise Mismatch(f"waited {WAIT_SECONDS:.0f} s for {said}")
        time.sleep(0.1)


# --- the receiver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: int  # the status the receiver gave
    at: float  # time.time() on arrival

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def type(self) -> str:
        """The body's ``type`` (read unverified: only to decide the answer and to group)."""
        try:
            kind = json.loads(self.body).get("type")
        except (ValueError, AttributeError):
            return ""
        return kind if isinstance(kind, str) else ""


class Receiver:
    """An HTTP server on 127.0.0.1 (a thread) that records every request. It answers 200, except
    500 to the first attempt of the ``FAIL_FIRST`` event."""

    def __init__(self) -> None:
        self.url = ""
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._failed: set[str] = set()

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def of(self, event_id: uuid.UUID | str) -> list[Received]:
        return [r for r in self.requests if r.id == str(event_id)]

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            received = Received(path, headers, body, 200, time.time())
            msg_id = received.id
            if received.type == FAIL_FIRST and msg_id not in self._failed:
                self._failed.add(msg_id)
                received = Received(path, headers, body, 500, received.at)
            self._requests.append(received)
            return received.answered

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(self.path, headers, body)
                reply = b"ok" if status == 200 else RETRY_BODY.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


# --- the generated models of the spec's webhooks -----------------------------------------------


class Data(Protocol):
    @property
    def additional_properties(self) -> dict[str, Any]: ...


class Envelope(Protocol):
    """What every generated ``...Event`` model of the spec's ``webhooks`` section has."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def type_(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def sequence(self) -> int | None: ...  # null only for events older than webhooks
    @property
    def data(self) -> Data: ...
    @property
    def additional_properties(self) -> dict[str, Any]: ...


MODELS: dict[str, Callable[[Mapping[str, Any]], Envelope]] = {
    "credits.granted": CreditsGrantedEvent.from_dict,
    "transaction.started": TransactionStartedEvent.from_dict,
    "transaction.completed": TransactionCompletedEvent.from_dict,
    "webhook.test": WebhookTestEvent.from_dict,
}


# --- checks -------------------------------------------------------------------------------------


def signatures(request: Received) -> list[str]:
    return request.headers.get("webhook-signature", "").split(" ")


def verifies(secret: str, request: Received, signature: str | None = None) -> bool:
    """``standardwebhooks`` accepts the request (with only ``signature``, if given)."""
    headers = dict(request.headers)
    if signature is not None:
        headers["webhook-signature"] = signature
    try:
        Webhook(secret).verify(request.body, headers)
    except WebhookVerificationError:
        return False
    return True


def check_request(request: Received, secret: str, event: EventOut, data: Any) -> Envelope:
    """One request carries ``event`` (``data``: its exact data from the API), signed with
    ``secret``; the body is the generated model of its type, with no field the spec omits."""
    what = f"{event.type_} {event.id}"
    expect(request.path == PATH, f"{what}: path {request.path}")
    expect(
        request.headers.get("content-type", "").startswith("application/json"),
        f"{what}: content-type {request.headers.get('content-type')}",
    )
    expect(verifies(secret, request), f"{what}: standardwebhooks refuses the signature")
    expect(request.id == str(event.id), f"{what}: webhook-id {request.id}")
    stamp = request.headers.get("webhook-timestamp", "")
    expect(stamp.isdigit() and abs(int(stamp) - request.at) < 60, f"{what}: timestamp {stamp}")
    body = json.loads(request.body)
    model = MODELS[event.type_](body)
    expect(model.id == event.id and model.type_ == event.type_, f"{what}: id, type {body}")
    expect(model.timestamp == event.created_at == model.created_at, f"{what}: timestamp")
    expect(model.user_id == event.user_id, f"{what}: user_id {model.user_id}")
    expect(isinstance(body["sequence"], int) and body["sequence"] > 0, f"{what}: sequence")
    expect(not model.additional_properties, f"{what}: fields not in the spec {body.keys()}")
    expect(
        not model.data.additional_properties,
        f"{what}: data fields not in the spec: {sorted(model.data.additional_properties)}",
    )
    expect(exact_body(request.body)["data"] == data, f"{what}: data {body['data']} != {data}")
    return model


def attempts(api: AuthenticatedClient, endpoint_id: uuid.UUID, **query: Any) -> list[Any]:
    page = parsed(
        webhook_endpoints_list_deliveries.sync_detailed(
            str(endpoint_id), client=api, limit=100, **query
        ),
        PageWebhookAttemptOut,
        200,
    )
    expect(not page.has_more, "one page of attempts")
    return list(page.data)


def event_with_data(api: AuthenticatedClient, event_id: uuid.UUID) -> tuple[EventOut, Any]:
    response = events_get.sync_detailed(str(event_id), client=api)
    return parsed(response, EventOut, 200), exact_body(response.content)["data"]


def wait_for_status(api: AuthenticatedClient, event_id: uuid.UUID, status: str) -> None:
    seen: list[str] = []

    def reached() -> bool:
        seen.append(event_with_data(api, event_id)[0].delivery_status.value)
        return seen[-1] == status

    wait_until(reached, lambda: f"delivery_status {status} of {event_id} (last: {seen[-1]})")


# --- the flow -----------------------------------------------------------------------------------


def register(api: AuthenticatedClient, receiver: Receiver) -> WebhookEndpointWithSecret:
    """Register the receiver for ``SUBSCRIBED``: the secret is shown once, here."""
    created = endpoints_create.sync_detailed(
        client=api,
        body=WebhookEndpointCreate(url=receiver.url, events=SUBSCRIBED, description="contract"),
    )
    endpoint = parsed(created, WebhookEndpointWithSecret, 201)
    expect(endpoint.url == receiver.url and endpoint.events == SUBSCRIBED, "endpoint url, events")
    expect(endpoint.enabled and endpoint.disabled_reason is None, "endpoint enabled")
    expect(endpoint.secret.startswith("whsec_"), "a Standard Webhooks secret")
    expect(endpoint.previous_secret_expires_at is None, "one secret")
    shown = parsed(
        webhook_endpoints_get.sync_detailed(str(endpoint.id), client=api), WebhookEndpointOut, 200
    )
    expect("secret" not in shown.to_dict(), "the secret is shown only once")
    return endpoint


def prove(
    api: AuthenticatedClient,
    receiver: Receiver,
    endpoint: WebhookEndpointWithSecret,
    user_id: str,
) -> int:
    """Check every delivery of the flow's events; returns how many requests arrived."""
    listed = events_list.sync_detailed(client=api, limit=100)
    page = parsed(listed, PageEventOut, 200)
    expect(not page.has_more, "one page of events")
    exact_data = {row["id"]: row["data"] for row in exact_body(listed.content)["data"]}
    wanted = [e for e in page.data if subscribed(e.type_)]
    others = [e for e in page.data if not subscribed(e.type_)]
    expect(
        sorted(e.type_ for e in wanted)
        == ["credits.granted", "credits.granted", "transaction.completed", "transaction.started"],
        f"subscribed events written: {[e.type_ for e in wanted]}",
    )
    expect("payment.succeeded" in {e.type_ for e in others}, f"others: {others}")

    # Every subscribed event arrives and is answered 200 (the retry of the failed one included).
    def all_delivered() -> bool:
        ok = {r.id for r in receiver.requests if r.answered == 200}
        return all(str(e.id) in ok for e in wanted)

    wait_until(all_delivered, f"deliveries of {[e.type_ for e in wanted]}")
    for event in wanted:
        wait_for_status(api, event.id, "succeeded")
    for event in others:
        status = event_with_data(api, event.id)[0].delivery_status.value
        expect(status == "not_sent", f"{event.type_}: delivery_status {status}")

    # Nothing else arrived: no unsubscribed type, no request for an event not listed.
    wanted_ids = {str(e.id) for e in wanted}
    strays = [(r.id, r.type) for r in receiver.requests if r.id not in wanted_ids]
    expect(not strays, f"unsubscribed or unknown events arrived: {strays}")

    sequences = []
    for event in wanted:  # oldest first, as listed
        requests = receiver.of(event.id)
        first = requests[0]
        expect(len(signatures(first)) == 1, f"{event.type_}: one secret, one signature")
        for request in requests:
            model = check_request(request, endpoint.secret, event, exact_data[str(event.id)])
            expect(request.body == first.body, f"{event.type_}: the same bytes on every attempt")
        expect(model.user_id == user_id, f"{event.type_}: the flow's user")
        sequence = model.sequence
        expect(sequence is not None, f"{event.type_}: a new event has a sequence")
        assert sequence is not None
        sequences.append(sequence)
    expect(sequences == sorted(set(sequences)), f"sequence orders the user's events {sequences}")

    # The first attempt of transaction.started was answered 500: retried, same id.
    (started,) = [e for e in wanted if e.type_ == FAIL_FIRST]
    tries = receiver.of(started.id)
    expect([r.answered for r in tries] == [500, 200], f"retry: {[r.answered for r in tries]}")
    shown: list[WebhookAttemptOut] = []

    def both_recorded() -> bool:
        shown[:] = attempts(api, endpoint.id, event_id=started.id)
        return len(shown) == 2

    wait_until(both_recorded, f"two attempts of {started.id} in the deliveries list")
    second, first_try = shown  # newest first
    expect(second.delivery_id == first_try.delivery_id, "one delivery, two attempts")
    expect(
        (first_try.attempt, first_try.status_code, first_try.succeeded) == (1, 500, False),
        f"attempt 1: {first_try.to_dict()}",
    )
    expect(first_try.response_excerpt == RETRY_BODY, f"excerpt {first_try.response_excerpt}")
    expect(first_try.next_attempt_at is not None, "attempt 1 scheduled a retry")
    expect(
        (second.attempt, second.status_code, second.succeeded, second.next_attempt_at)
        == (2, 200, True, None),
        f"attempt 2: {second.to_dict()}",
    )
    expect(all(a.event_id == started.id and a.event_type == FAIL_FIRST for a in shown), "event")

    # webhook.test goes to this endpoint only, signed with the one secret.
    test = send_test(api, receiver, endpoint)
    expect(len(signatures(test)) == 1, "before the rotation: one signature")

    # Rotation: both secrets sign (the new one first) during the grace period.
    old = endpoint.secret
    rotated = parsed(
        # The body is optional: the generated client sends none.
        webhook_endpoints_rotate_secret.sync_detailed(str(endpoint.id), client=api),
        WebhookEndpointWithSecret,
        200,
    )
    new = rotated.secret
    expect(new.startswith("whsec_") and new != old, "a new secret")
    expect(rotated.previous_secret_expires_at is not None, "the old secret still signs a while")
    after = send_test(api, receiver, rotated)
    both = signatures(after)
    expect(len(both) == 2, f"two signatures: {both}")
    sig_new, sig_old = both
    expect(verifies(old, after), "standardwebhooks verifies with the old secret")
    expect(verifies(new, after, sig_new) and not verifies(old, after, sig_new), "1st: new")
    expect(verifies(old, after, sig_old) and not verifies(new, after, sig_old), "2nd: old")

    # Redelivery: the same event again, same id and bytes, now signed by both secrets.
    (completed,) = [e for e in wanted if e.type_ == "transaction.completed"]
    before = receiver.of(completed.id)
    answer = parsed(
        events_redeliver.sync_detailed(str(completed.id), client=api, body=RedeliverIn()),
        RedeliverOut,
        202,
    )
    expect(answer.event_id == completed.id, "redeliver: event")
    (again,) = answer.deliveries
    expect(again.endpoint_id == endpoint.id, "redeliver: to the endpoint")
    expect(again.status.value == "pending" and again.attempts == 0, f"{again.to_dict()}")
    wait_until(lambda: len(receiver.of(completed.id)) > len(before), "the redelivery")
    redelivered = receiver.of(completed.id)[-1]
    check_request(redelivered, new, completed, exact_data[str(completed.id)])
    expect(verifies(old, redelivered), "redelivery: the old secret signs too")
    expect(redelivered.body == before[0].body, "redelivery: the same bytes")
    wait_for_status(api, completed.id, "succeeded")

    # The deliveries list holds every request the receiver saw, with its status code.
    received = receiver.requests
    everything: list[WebhookAttemptOut] = []

    def all_recorded() -> bool:
        everything[:] = attempts(api, endpoint.id)
        return len(everything) == len(received)

    wait_until(
        all_recorded,
        lambda: f"{len(received)} attempts in the deliveries list ({len(everything)} there)",
    )
    expect(
        Counter((str(a.event_id), a.status_code) for a in everything)
        == Counter((r.id, r.answered) for r in received),
        "the deliveries list matches what the receiver saw",
    )
    # Newest first by id (uuid7, minted when the attempt is recorded; created_at is its start).
    ids = [a.id for a in everything]
    expect(ids == sorted(ids, reverse=True), "deliveries: newest first")
    return len(received)


def send_test(
    api: AuthenticatedClient, receiver: Receiver, endpoint: WebhookEndpointWithSecret
) -> Received:
    """``POST .../test``: one ``webhook.test`` for this endpoint arrives, signed with its
    current secret; returns the request."""
    sent = parsed(webhook_endpoints_test.sync_detailed(str(endpoint.id), client=api), EventOut, 202)
    expect(sent.type_ == "webhook.test", f"test event {sent.type_}")
    wait_until(lambda: bool(receiver.of(sent.id)), "the webhook.test delivery")
    requests = receiver.of(sent.id)
    expect(len(requests) == 1, f"webhook.test arrived {len(requests)} times")
    request = requests[0]
    event, data = event_with_data(api, sent.id)
    model = check_request(request, endpoint.secret, event, data)
    expect(isinstance(model, WebhookTestEvent), "a WebhookTestEvent")
    assert isinstance(model, WebhookTestEvent)
    expect(model.data.endpoint_id == endpoint.id, "webhook.test names the endpoint")
    wait_for_status(api, sent.id, "succeeded")
    return request

from app.core.errors import Conflict, InvalidRequest


class IdempotencyKeyReused(Conflict):
    slug = "idempotency_key_reused"
    title = "This Idempotency-Key was used with a different request"


class IdempotencyKeyInFlight(Conflict):
    slug = "idempotency_key_in_flight"
    title = "A request with this Idempotency-Key is still being processed"


class InvalidIdempotencyKey(InvalidRequest):
    title = "Idempotency-Key must be 1-255 printable characters"
    loc = ("header", "Idempotency-Key")

"""Every table, imported so that ``Base.metadata`` is complete (Alembic and tests rely on it)."""

from app.db.models.account import Account
from app.db.models.api_key import ApiKey
from app.db.models.event import Event
from app.db.models.grant import Grant
from app.db.models.idempotency_key import IdempotencyKey
from app.db.models.ledger_entry import LedgerEntry
from app.db.models.model_price import ModelPrice
from app.db.models.project import Project
from app.db.models.refund import Refund
from app.db.models.transaction import Transaction
from app.db.models.user import User

__all__ = [
    "Account",
    "ApiKey",
    "Event",
    "Grant",
    "IdempotencyKey",
    "LedgerEntry",
    "ModelPrice",
    "Project",
    "Refund",
    "Transaction",
    "User",
]

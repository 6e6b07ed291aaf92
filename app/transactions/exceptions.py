from app.core.errors import Conflict, NotFound


class TransactionNotFound(NotFound):
    slug = "transaction_not_found"
    title = "No such transaction"


class TransactionAlreadyCompleted(Conflict):
    slug = "transaction_already_completed"
    title = "The transaction was already completed with a different body"


class TransactionDenied(Conflict):
    slug = "transaction_denied"
    title = "The transaction was denied at start and cannot be completed"


class TransactionNotPending(Conflict):
    slug = "transaction_not_pending"
    title = "Only a pending transaction whose hold has not expired can be extended"


class TransactionNotCompleted(Conflict):
    slug = "transaction_not_completed"
    title = "Only a completed transaction can be refunded"


class OverRefund(Conflict):
    slug = "over_refund"
    title = "Refunds would exceed the credits the transaction used"

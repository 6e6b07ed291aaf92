from app.core.errors import AppError, ServiceUnavailable


class InsufficientCredits(AppError):
    slug = "insufficient_credits"
    title = "Not enough available credits"
    status = 402


class AccountBusy(ServiceUnavailable):
    slug = "account_busy"
    title = "Too many requests are waiting for this user's account; it is locked or very hot"

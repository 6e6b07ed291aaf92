from app.core.errors import AppError


class InsufficientCredits(AppError):
    slug = "insufficient_credits"
    title = "Not enough available credits"
    status = 402

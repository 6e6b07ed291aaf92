from app.core.errors import Forbidden, Unauthorized


class InvalidApiKey(Unauthorized):
    slug = "invalid_api_key"
    title = "Missing, unknown, revoked or expired API key"


class InsufficientScope(Forbidden):
    slug = "insufficient_scope"
    title = "The API key lacks the scope this operation needs"


class ProjectMismatch(Forbidden):
    slug = "project_mismatch"
    title = "X-Project-Id does not match the API key's project"


class InvalidAdminToken(Unauthorized):
    slug = "invalid_admin_token"
    title = "Missing or invalid operator token"

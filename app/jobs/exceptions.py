from app.core.errors import InvalidRequest, NotFound


class UnknownJob(InvalidRequest):
    slug = "unknown_job"
    title = "No job of this name has a price"
    loc = ("body", "job")


class JobNotFound(NotFound):
    slug = "job_not_found"
    title = "No such job"

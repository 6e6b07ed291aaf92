# creditd image: one image for every role (`serve`, `worker`, `migrate`, `bootstrap`, `verify`).
# It leaves out the embedded PostgreSQL (the `embedded` extra, pulled in only by the dev group):
# containers always get DATABASE_URL (see docker-compose.yml), and in production creditd refuses
# to start without one.

# ---- builder: resolve the locked dependencies into /app/.venv ----
FROM python:3.11-slim AS builder

ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install "uv==${UV_VERSION}"

WORKDIR /app
# Dependencies first, in their own layer: it is rebuilt only when the lock changes. --no-dev
# also leaves out the `embedded` extra, which only the dev group asks for.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the project itself. uv installs it editable (a .pth pointing at /app), which is what we
# want: app/core/paths.py finds alembic.ini and migrations/ next to the package, so the
# runtime stage keeps the very same /app layout.
COPY app ./app
COPY migrations ./migrations
COPY alembic.ini ./
RUN uv sync --frozen --no-dev

# ---- runtime: the venv and the code, nothing else, as a non-root user ----
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 creditd \
 && useradd --system --uid 10001 --gid creditd --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin creditd

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/app /app/app
COPY --from=builder /app/migrations /app/migrations
COPY --from=builder /app/alembic.ini /app/alembic.ini

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CREDITD_ENV=production

USER creditd:creditd
EXPOSE 8000

# Readiness (GET /readyz): unhealthy while the database is unreachable or behind the code's
# migrations, so an orchestrator or load balancer stops routing here; the process itself
# recovers on its own when the database is back. slim has no curl, so ask Python.
# Containers running `worker` or `migrate` serve no HTTP: compose disables this check for them.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=5)"]

ENTRYPOINT ["creditd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-workers"]

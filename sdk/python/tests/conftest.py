"""SDK tests run against a live creditd in a subprocess, so a test can stop and restart it.

One fresh database per run (on DATABASE_URL's server, else the embedded PostgreSQL), migrated
once; one server process on a free port; one new project per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from creditd_sdk import AsyncCreditd, Creditd
from sdk_testkit import FaultProxy, ServerProcess, create_project, free_port, running_proxy

from app.cli import run_migrations
from tests.fakes.razorpay_server import (  # noqa: F401 - fixtures
    FakeRazorpayServer,
    fake_razorpay,
    fake_razorpay_server,
)
from tests.fakes.stripe_server import FakeStripe, fake_stripe, fake_stripe_server  # noqa: F401
from tests.fixtures.database import fresh_database


@pytest.fixture(scope="session")
def sdk_database_url() -> Iterator[str]:
    with fresh_database() as (url, _embedded):
        run_migrations(url)
        yield url


@pytest.fixture(scope="session")
def server(
    sdk_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    fake_stripe_server: FakeStripe,  # noqa: F811 - the imported fixture
    fake_razorpay_server: FakeRazorpayServer,  # noqa: F811
) -> Iterator[ServerProcess]:
    # The official provider SDKs in the server talk to the fakes, never to the real APIs.
    env = {
        "CREDITD_PAYMENTS__STRIPE_API_BASE": fake_stripe_server.url,
        "CREDITD_PAYMENTS__RAZORPAY_API_BASE": fake_razorpay_server.url,
        "CREDITD_PAYMENTS__PROVIDER_TIMEOUT_SECONDS": "5",
    }
    proc = ServerProcess(sdk_database_url, free_port(), tmp_path_factory.mktemp("creditd"), env=env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def live(server: ServerProcess) -> Iterator[ServerProcess]:
    """The server, guaranteed up again after the test (tests may stop it)."""
    yield server
    if not server.running:
        server.start()


@dataclass(frozen=True)
class Project:
    id: str
    key: str


@pytest.fixture
def project(live: ServerProcess) -> Project:
    project_id, key = create_project(live.url)
    return Project(project_id, key)


# Retries fast in tests: the behaviour is the same, the waits are short.
BACKOFF_BASE = 0.02
BACKOFF_MAX = 0.2


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def client(live: ServerProcess, project: Project, spool_dir: Path) -> Iterator[Creditd]:
    with Creditd(
        project.key,
        base_url=live.url,
        spool_dir=spool_dir,
        backoff_base=BACKOFF_BASE,
        backoff_max=BACKOFF_MAX,
    ) as c:
        yield c


@pytest.fixture
async def aclient(
    live: ServerProcess, project: Project, spool_dir: Path
) -> AsyncIterator[AsyncCreditd]:
    async with AsyncCreditd(
        project.key,
        base_url=live.url,
        spool_dir=spool_dir,
        backoff_base=BACKOFF_BASE,
        backoff_max=BACKOFF_MAX,
    ) as c:
        yield c


@pytest.fixture
def proxy(live: ServerProcess) -> Iterator[FaultProxy]:
    with running_proxy(live.url) as p:
        yield p


@pytest.fixture
def priced(client: Creditd) -> Creditd:
    """The client's project with ``_default`` priced 1 credit / 1k input and 2 / 1k output."""
    client.models.put("_default", input_price_per_1k=Decimal(1), output_price_per_1k=Decimal(2))
    return client

from __future__ import annotations

import pytest

from app.ledger import service


@pytest.fixture(autouse=True)
def no_horizon_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports end 1 s before now (the margin for a starting transaction not yet visible in
    pg_stat_activity); these tests export what they wrote a moment ago."""
    monkeypatch.setattr(service, "HORIZON_MARGIN_SECONDS", 0.0)

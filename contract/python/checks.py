"""What both parts of the Python flow (flow.py, outbound.py) check with."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, TypeVar

from creditd_client.types import Response

T = TypeVar("T")


class Mismatch(Exception):
    """The server's answer differs from what the contract promises."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def parsed(response: Response[Any], wanted: type[T], status: int) -> T:
    """The typed body of ``response``, which must be a ``wanted`` with HTTP ``status``."""
    body = response.parsed
    if response.status_code != status or not isinstance(body, wanted):
        raise Mismatch(
            f"expected {status} {wanted.__name__}, got {response.status_code}:"
            f" {response.content.decode(errors='replace')}"
        )
    return body


def exact_body(raw: bytes) -> Any:
    """A JSON body with every number read as an exact ``Decimal``."""
    return json.loads(raw, parse_float=Decimal, parse_int=Decimal)


def exact(response: Response[Any]) -> Any:
    """The response body with every JSON number read as an exact ``Decimal``."""
    return exact_body(response.content)

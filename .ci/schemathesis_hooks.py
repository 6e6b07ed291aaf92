"""schemathesis hooks for .ci/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import ast
import os
import threading
import uuid
from typing import Any

import schemathesis

# CPython 3.11 before 3.11.9 can fail `ast.parse` run by two threads at once ("AST constructor
# recursion depth mismatch", python/cpython#106905); hypothesis parses sources to describe
# lambdas, so with --workers 2 the fuzzer itself crashed now and then. One parse at a time.
_parse = ast.parse
_parse_lock = threading.Lock()


def _serial_parse(*args: Any, **kwargs: Any) -> Any:
    with _parse_lock:
        return _parse(*args, **kwargs)


ast.parse = _serial_parse  # type: ignore[assignment]

_OWN_KEY_ID = os.environ.get("SCHEMATHESIS_API_KEY_ID", "")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Never revoke the key the fuzzer runs with: every later request would be a 401.

    Links (GET /v1/api-keys -> DELETE /v1/api-keys/{key_id}) hand it its own key's id.
    """
    params = case.path_parameters or {}
    if case.method.upper() == "DELETE" and params.get("key_id") == _OWN_KEY_ID:
        params["key_id"] = str(uuid.uuid4())

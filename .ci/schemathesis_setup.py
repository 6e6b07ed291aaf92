"""Prepare a live creditd for .ci/schemathesis.sh; print the `export` lines the fuzzer needs.

Waits until the server is ready, creates a project through the operator API, and gives it a
`_default` price (without one every usage call is 422 unknown_model and the fuzzer never gets
past pricing). Usage: python .ci/schemathesis_setup.py BASE_URL (CREDITD_ADMIN_TOKEN set).
"""

from __future__ import annotations

import os
import shlex
import sys
import time

import httpx

READY_TIMEOUT_SECONDS = 120


def wait_ready(client: httpx.Client) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"creditd not ready after {READY_TIMEOUT_SECONDS} s")
        time.sleep(0.5)


def main(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        wait_ready(client)
        operator = {"Authorization": "Bearer " + os.environ["CREDITD_ADMIN_TOKEN"]}
        r = client.post("/v1/admin/projects", json={"name": "schemathesis"}, headers=operator)
        r.raise_for_status()
        project = r.json()
        key = project["api_key"]
        price = {"input_price_per_1k": "0.5", "output_price_per_1k": "1.5"}
        auth = {"Authorization": "Bearer " + key["key"]}
        client.put("/v1/models/_default", json=price, headers=auth).raise_for_status()
    for name, value in (
        ("SCHEMATHESIS_PROJECT_ID", project["id"]),
        ("SCHEMATHESIS_API_KEY", key["key"]),
        ("SCHEMATHESIS_API_KEY_ID", key["id"]),
    ):
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main(sys.argv[1])

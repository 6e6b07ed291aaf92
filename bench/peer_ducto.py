"""The ducto peer's load driver. Runs under the peer's own virtualenv (bench/peer.py), so it
imports only the standard library and ducto.

Reads a JSON spec on stdin ({url, users, clients, duration, warmup}); sets ducto's schema up
(`CreditManager.setup()`), publishes a pricing config, gives every user credits, then calls
`CreditManager.deduct` (ducto's documented one-shot charge) from `clients` threads over random
users. Prints `WINDOW_START` / `WINDOW_END` lines around the measured window (the parent samples
CPU there) and, last, one JSON line of results.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ducto import CreditManager, UsageMetrics  # type: ignore[import-not-found]
from ducto.interface.postgres import PostgresStore  # type: ignore[import-not-found]

PRICING = {
    "version": 1,
    # The same price as creditd's bench model: 1 per 1k input tokens, 2 per 1k output tokens.
    "models": {"_default": "input_tokens * 0.001 + output_tokens * 0.002"},
}
SEED_CREDITS = 1_000_000


def main() -> None:
    spec = json.loads(sys.stdin.read())
    manager = CreditManager(store=PostgresStore(spec["url"]))
    setup = manager.setup()
    if not setup.success:
        raise SystemExit(f"ducto setup failed: {setup.errors}")
    manager.publish_pricing_from_dict(PRICING)
    users = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-user-{i}")) for i in range(spec["users"])]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda u: manager.add_credits(u, SEED_CREDITS), users))

    start = time.perf_counter() + spec["warmup"]
    end = start + spec["duration"]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        mine: list[float] = []
        failed: list[str] = []
        while True:
            began = time.perf_counter()
            if began >= end:
                break
            metrics = UsageMetrics(model="gpt-4o", input_tokens=50, output_tokens=80)
            try:
                manager.deduct(random.choice(users), metrics)
                ok = True
            except Exception as exc:
                ok = False
                failure = repr(exc)
            now = time.perf_counter()
            if start <= now <= end:
                if ok:
                    mine.append(now - began)
                else:
                    failed.append(failure)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client) for _ in range(spec["clients"])]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    print("WINDOW_START", flush=True)
    time.sleep(max(0.0, end - time.perf_counter()))
    print("WINDOW_END", flush=True)
    for t in threads:
        t.join()
    latencies.sort()
    result: dict[str, Any] = {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "latencies_ms": [x * 1000 for x in latencies],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

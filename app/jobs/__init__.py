"""Fixed-cost jobs: a price per run, charged by ``POST /v1/usage`` with ``job``."""

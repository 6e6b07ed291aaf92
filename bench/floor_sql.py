"""The floor service's schema and SQL (bench/floor.py): roughly what a creditd start and
complete write, with nothing else around it.

- ``accounts``: one row per user, a balance and what pending holds keep aside;
- ``holds``: one row per started transaction, keyed by a uuid, completed in place;
- ``ledger``: insert-only entries (a hold, a charge) with two secondary indexes;
- ``idempotency``: the ``Idempotency-Key`` claimed at the start of a request and the response
  stored at its end, as creditd does with every keyed POST.

Two ways to run a request, each a path prefix of the service (bench/floor_app.py):

- 3 round trips (``rt3``), like creditd today: ``BEGIN; EXECUTE floor_claim(...)``, then the
  lock/read (``SELECT ... FOR UPDATE``, extended protocol), then the writes in one CTE with the
  stored response and ``COMMIT``, one simple query (``EXECUTE floor_hold(...); EXECUTE
  floor_store(...); COMMIT``), the statements prepared once per connection and run with literal
  arguments;
- 1 round trip (``rt1``): a PL/pgSQL function, called in autocommit, that claims the key,
  locks, checks, writes and stores the response, and returns what the response needs.
"""

from __future__ import annotations

import asyncpg

SCHEMA = """
CREATE TABLE accounts (
    id text PRIMARY KEY,
    balance numeric NOT NULL,
    held numeric NOT NULL DEFAULT 0
);
CREATE TABLE holds (
    id uuid PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts,
    model text NOT NULL,
    amount numeric NOT NULL,
    used numeric NOT NULL DEFAULT 0,
    status text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
-- What an expiry sweeper would scan.
CREATE INDEX holds_pending ON holds (expires_at) WHERE status = 'pending';
CREATE TABLE ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts,
    hold_id uuid NOT NULL,
    kind text NOT NULL,
    amount numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account ON ledger (account_id, id);
CREATE INDEX ledger_hold ON ledger (hold_id);
CREATE TABLE idempotency (
    key text PRIMARY KEY,
    status integer NOT NULL,  -- 0: claimed, the response is not stored yet
    body text,
    expires_at timestamptz NOT NULL
);

-- rt1: the whole start in one call. code 201: held; 402: not enough credits; 404: no such
-- account; 409: the key is taken.
CREATE FUNCTION floor_start(
    p_key text, p_id uuid, p_account text, p_model text, p_amount numeric, p_ttl interval
) RETURNS TABLE (code integer, available numeric, expires timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_balance numeric;
    v_held numeric;
    v_expires timestamptz := now() + p_ttl;
BEGIN
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency (key, status, expires_at)
        VALUES (p_key, 0, now() + interval '1 day') ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 409, NULL::numeric, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
    SELECT a.balance, a.held INTO v_balance, v_held
    FROM accounts a WHERE a.id = p_account FOR UPDATE;
    IF NOT FOUND OR v_balance - v_held < p_amount THEN
        code := CASE WHEN v_balance IS NULL THEN 404 ELSE 402 END;
        UPDATE idempotency SET status = code WHERE key = p_key;
        RETURN QUERY SELECT code, v_balance - v_held, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE accounts SET held = held + p_amount WHERE id = p_account;
    INSERT INTO holds (id, account_id, model, amount, status, expires_at)
    VALUES (p_id, p_account, p_model, p_amount, 'pending', v_expires);
    INSERT INTO ledger (account_id, hold_id, kind, amount)
    VALUES (p_account, p_id, 'hold', p_amount);
    IF p_key IS NOT NULL THEN
        UPDATE idempotency SET status = 201, body = json_build_object(
            'transaction_id', p_id, 'continue', true,
            'balance', v_balance - v_held - p_amount, 'credits_used', 0,
            'hold_amount', p_amount, 'status', 'pending', 'expires_at', v_expires,
            'message', 'ok', 'reason', NULL)::text
        WHERE key = p_key;
    END IF;
    RETURN QUERY SELECT 201, v_balance - v_held - p_amount, v_expires;
END
$$;

-- rt1: the whole complete in one call (success = false releases the hold, charges nothing).
-- code 200: done; 404: no such hold; 409: the key is taken, or the hold is not pending.
CREATE FUNCTION floor_complete(p_key text, p_id uuid, p_used numeric, p_success boolean)
RETURNS TABLE (code integer, available numeric, charged numeric)
LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
    v_amount numeric;
    v_status text;
    v_available numeric;
    v_charge numeric := CASE WHEN p_success THEN p_used ELSE 0 END;
BEGIN
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency (key, status, expires_at)
        VALUES (p_key, 0, now() + interval '1 day') ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 409, NULL::numeric, NULL::numeric;
            RETURN;
        END IF;
    END IF;
    -- The lock order of rt3's complete: the hold, then its account.
    SELECT h.account_id, h.amount, h.status INTO v_account, v_amount, v_status
    FROM holds h WHERE h.id = p_id FOR UPDATE;
    IF v_status IS DISTINCT FROM 'pending' THEN
        code := CASE WHEN v_status IS NULL THEN 404 ELSE 409 END;
        UPDATE idempotency SET status = code WHERE key = p_key;
        RETURN QUERY SELECT code, NULL::numeric, NULL::numeric;
        RETURN;
    END IF;
    UPDATE accounts a SET balance = a.balance - v_charge, held = a.held - v_amount
    WHERE a.id = v_account RETURNING a.balance - a.held INTO v_available;
    UPDATE holds
    SET status = CASE WHEN p_success THEN 'completed' ELSE 'failed' END, used = v_charge,
        completed_at = now()
    WHERE id = p_id;
    INSERT INTO ledger (account_id, hold_id, kind, amount)
    VALUES (v_account, p_id, 'charge', -v_charge);
    IF p_key IS NOT NULL THEN
        UPDATE idempotency SET status = 200, body = json_build_object(
            'transaction_id', p_id,
            'status', CASE WHEN p_success THEN 'completed' ELSE 'failed' END,
            'credits_used', v_charge, 'balance', v_available, 'balance_adjustment', 0,
            'late', false)::text
        WHERE key = p_key;
    END IF;
    RETURN QUERY SELECT 200, v_available, v_charge;
END
$$;
"""

# rt1: one round trip each (extended protocol; asyncpg prepares them once per connection).
CALL_START = "SELECT code, available, expires FROM floor_start($1, $2, $3, $4, $5, $6)"
CALL_COMPLETE = "SELECT code, available, charged FROM floor_complete($1, $2, $3, $4)"

# rt3's round trip 2, the lock/read (extended protocol).
LOCK_ACCOUNT = "SELECT balance, held FROM accounts WHERE id = $1 FOR UPDATE"
LOCK_HOLD = """
    SELECT h.account_id, h.amount, h.status, a.balance, a.held
    FROM holds h JOIN accounts a ON a.id = h.account_id
    WHERE h.id = $1
    FOR UPDATE OF h, a
"""

# rt3's statements that ride with BEGIN and COMMIT (simple queries take no parameters): prepared
# on every new pooled connection, executed with literal arguments.
PREPARED = {
    "floor_claim": """(text) AS
        INSERT INTO idempotency (key, status, expires_at)
        VALUES ($1, 0, now() + interval '1 day') ON CONFLICT DO NOTHING""",
    "floor_store": "(text, integer, text) AS UPDATE idempotency SET status = $2, body = $3 "
    "WHERE key = $1",
    "floor_hold": """(uuid, text, text, numeric, timestamptz) AS
        WITH a AS (UPDATE accounts SET held = held + $4 WHERE id = $2),
             h AS (INSERT INTO holds (id, account_id, model, amount, status, expires_at)
                   VALUES ($1, $2, $3, $4, 'pending', $5))
        INSERT INTO ledger (account_id, hold_id, kind, amount) VALUES ($2, $1, 'hold', $4)""",
    "floor_charge": """(uuid, text, numeric, numeric, text) AS
        WITH a AS (UPDATE accounts SET balance = balance - $3, held = held - $4 WHERE id = $2),
             h AS (UPDATE holds SET status = $5, used = $3, completed_at = now() WHERE id = $1)
        INSERT INTO ledger (account_id, hold_id, kind, amount) VALUES ($2, $1, 'charge', -$3)""",
}
CLAIMED = "INSERT 0 1"  # floor_claim's status tag when it took the key


async def prepare(conn: asyncpg.Connection) -> None:
    """Prepare rt3's ride-along statements on a new connection (the pool's `init`)."""
    await conn.execute("; ".join(f"PREPARE {name}{sql}" for name, sql in PREPARED.items()))


async def create(dsn: str, accounts: list[str], balance: int) -> None:
    """Create the schema in the (empty) database at `dsn`, with one account per id."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(
            "INSERT INTO accounts (id, balance) SELECT unnest($1::text[]), $2", accounts, balance
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# Money invariants after a run: every account's pending holds add up to what it has held, every
# balance is the seed minus its charges in the ledger, every hold has its ledger entry and every
# finished one its charge.
CHECKS = {
    "held = pending holds": """
        SELECT count(*) = 0 FROM accounts a
        WHERE a.held <> (SELECT coalesce(sum(h.amount), 0) FROM holds h
                         WHERE h.account_id = a.id AND h.status = 'pending')""",
    "balance = seed - charges": """
        SELECT count(*) = 0 FROM accounts a
        WHERE a.balance <> $1 + (SELECT coalesce(sum(l.amount), 0) FROM ledger l
                                 WHERE l.account_id = a.id AND l.kind = 'charge')""",
    "one hold entry per hold": """
        SELECT (SELECT count(*) FROM holds)
             = (SELECT count(*) FROM ledger WHERE kind = 'hold')""",
    "one charge entry per finished hold": """
        SELECT (SELECT count(*) FROM holds WHERE status <> 'pending')
             = (SELECT count(*) FROM ledger WHERE kind = 'charge')""",
}


async def verify(dsn: str, balance: int) -> tuple[bool, str]:
    """Check the invariants; whether they all hold, and a line saying so (or which do not)."""
    conn = await asyncpg.connect(dsn)
    try:
        failed = []
        for name, check in CHECKS.items():
            args = (balance,) if "$1" in check else ()
            if not await conn.fetchval(check, *args):
                failed.append(name)
        holds = await conn.fetchval("SELECT count(*) FROM holds")
    finally:
        await conn.close()
    if failed:
        return False, f"FAILED: {', '.join(failed)} ({holds} holds)"
    return True, f"{holds} holds: {', '.join(CHECKS)}"

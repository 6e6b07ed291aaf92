"""start and complete as one server-side call each: the account lock held only inside it

The metering fast path (app/transactions/fast.py) reads what a start or a completion needs
without a lock, works out in Python everything that does not depend on the balance (the price,
the charge, the ids, the response and event texts), and then makes the whole change in one
call of these functions, in one statement that commits on its own. The row locks are taken
first thing in the call and released by its commit: no network round trip and no Python run
while they are held, so one user's requests follow each other at the database's pace.

The functions decide only what depends on the locked rows: admission against the tier's
floor, the balance (put into the prepared texts where they say ``@B@``), the grants a charge
burns, the balance events. They return NULL, having changed nothing, when the rows are not
in the state the caller read (the transaction no longer pending, the user gone); the caller
then takes the general path. Each statement in a PL/pgSQL function takes a fresh snapshot,
so the grants a charge burns are read after the account lock is held, as in the general path.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 09:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Burn ``p_amount`` from the account's grants (soonest expiry first, no expiry last, then
# promotional before paid, then oldest), as app/credits/repository.py's _CHANGE does; returns
# what they covered (the rest is the caller's debt). The caller holds the account lock.
_BURN = """
CREATE FUNCTION creditd_burn(p_account uuid, p_amount numeric) RETURNS numeric
LANGUAGE sql AS $$
    WITH ordered AS (
        SELECT id, remaining,
               sum(remaining) OVER (ORDER BY expires_at ASC NULLS LAST, (category = 'paid'),
                                    created_at, id) AS running
        FROM grants
        WHERE account_id = p_account AND remaining > 0 AND p_amount > 0
    ), take AS (
        SELECT id, LEAST(remaining, p_amount - (running - remaining)) AS used
        FROM ordered WHERE running - remaining < p_amount
    ), burned AS (
        UPDATE grants AS g SET remaining = g.remaining - take.used
        FROM take WHERE g.id = take.id
        RETURNING take.used
    )
    SELECT coalesce(sum(used), 0) FROM burned
$$
"""

# The prepared texts (responses, events) with what only the locked rows decide put in: the
# balance where they say \x01B\x01 (a canonical decimal, as the general path renders it) and
# the hold's expiry where they say \x01E\x01 (a JSON string as orjson writes a UTC datetime,
# or null). A raw \x01 never occurs in rendered JSON otherwise (a string's control characters
# are escaped), so no user-supplied text can be taken for a marker.
_FILL = """
CREATE FUNCTION creditd_fill(p_text text, p_balance numeric, p_expires_at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT replace(
        replace(p_text, chr(1) || 'B' || chr(1), trim_scale(p_balance)::text),
        chr(1) || 'E' || chr(1),
        coalesce(
            '"' || to_char(p_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
            || CASE WHEN date_part('microseconds', p_expires_at)::bigint % 1000000 = 0 THEN ''
                    ELSE to_char(p_expires_at AT TIME ZONE 'UTC', '.US') END
            || 'Z"',
            'null'))
$$
"""

# The events of one balance change, as app.credits.service.balance_events decides them with
# the project's thresholds known (canonical decimal texts): balance.depleted and balance.low
# when available falls, balance.recovered when it rises. Amounts go out as canonical numbers
# (trim_scale), as the general path renders them.
_BALANCE_EVENTS = """
CREATE FUNCTION creditd_balance_events(
    p_project uuid, p_user text, p_previous numeric, p_balance numeric, p_thresholds text[],
    p_first uuid, p_second uuid
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_crossed jsonb;
    v_data jsonb := jsonb_build_object(
        'previous_balance', trim_scale(p_previous), 'balance', trim_scale(p_balance));
BEGIN
    IF p_balance < p_previous THEN
        IF p_previous > 0 AND p_balance <= 0 THEN
            INSERT INTO events (id, project_id, type, user_id, data)
            VALUES (p_first, p_project, 'balance.depleted', p_user, v_data);
        END IF;
        SELECT jsonb_agg(t::jsonb ORDER BY t::numeric DESC) INTO v_crossed
        FROM unnest(p_thresholds) AS t
        WHERE p_previous >= t::numeric AND t::numeric > p_balance;
        IF v_crossed IS NOT NULL THEN
            INSERT INTO events (id, project_id, type, user_id, data)
            VALUES (p_second, p_project, 'balance.low', p_user,
                    v_data || jsonb_build_object('thresholds', v_crossed));
        END IF;
    ELSIF p_balance > p_previous THEN
        SELECT jsonb_agg(t::jsonb ORDER BY t::numeric DESC) INTO v_crossed
        FROM unnest(p_thresholds) AS t
        WHERE p_previous < t::numeric AND t::numeric <= p_balance;
        IF v_crossed IS NOT NULL OR (p_previous <= 0 AND p_balance > 0) THEN
            INSERT INTO events (id, project_id, type, user_id, data)
            VALUES (p_first, p_project, 'balance.recovered', p_user,
                    v_data || jsonb_build_object('thresholds', coalesce(v_crossed, '[]')));
        END IF;
    END IF;
END
$$
"""

# A start on the user's own account: lock it, admit against the floor (NULL: no floor),
# hold, write the transaction, its event and the key's stored response. Returns the response
# body; NULL when the user or account is gone (nothing written).
_START = """
CREATE FUNCTION creditd_fast_start(
    p_project uuid, p_user text, p_txn uuid, p_model text, p_feature text, p_hold numeric,
    p_floor numeric, p_ttl interval, p_provisional jsonb, p_metadata jsonb,
    p_snapshot jsonb, p_thresholds text[], p_event_ids uuid[],
    p_admitted_body text, p_denied_body text, p_admitted_event text, p_denied_event text,
    p_key text, p_key_method text, p_key_path text, p_key_hash text, p_key_headers jsonb,
    p_key_ttl interval
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_account uuid;
    v_total numeric;
    v_held numeric;
    v_available numeric;
    v_ok boolean;
    v_balance numeric;
    v_expires_at timestamptz;
    v_body text;
    v_event text;
BEGIN
    SELECT a.id, a.total, a.held INTO v_account, v_total, v_held
    FROM users u JOIN accounts a ON a.id = u.account_id
    WHERE u.project_id = p_project AND u.id = p_user AND u.deleted_at IS NULL
      AND a.closed_at IS NULL
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_expires_at := clock_timestamp() + p_ttl;  -- as the general path: once the lock is held
    v_available := v_total - v_held;
    v_ok := p_floor IS NULL OR CASE WHEN p_hold > 0 THEN v_available - p_hold >= p_floor
                                    ELSE v_available > p_floor END;
    v_balance := CASE WHEN v_ok THEN v_available - p_hold ELSE v_available END;
    v_body := creditd_fill(CASE WHEN v_ok THEN p_admitted_body ELSE p_denied_body END,
                           v_balance, v_expires_at);
    v_event := creditd_fill(CASE WHEN v_ok THEN p_admitted_event ELSE p_denied_event END,
                            v_balance, v_expires_at);
    IF v_ok AND p_hold <> 0 THEN
        UPDATE accounts SET held = held + p_hold, updated_at = now() WHERE id = v_account;
        INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                                    total_after, held_after, transaction_id, grant_id, reason,
                                    team_id, created_at)
        VALUES (p_project, v_account, p_user, 'hold', 0, p_hold, v_total, v_held + p_hold, p_txn,
                NULL, NULL, NULL, clock_timestamp());
    END IF;
    INSERT INTO transactions (id, project_id, account_id, user_id, model, feature_identifier,
        status, reason, hold_amount, credits_used, provisional_tokens, finalized_tokens,
        metadata, expires_at, completed_at, team_id, price_snapshot, job)
    VALUES (p_txn, p_project, v_account, p_user, p_model, p_feature,
            CASE WHEN v_ok THEN 'pending' ELSE 'denied' END,
            CASE WHEN v_ok THEN NULL ELSE 'insufficient_credits' END,
            CASE WHEN v_ok THEN p_hold ELSE 0 END, 0, p_provisional, NULL, p_metadata,
            CASE WHEN v_ok THEN v_expires_at END, NULL, NULL,
            CASE WHEN v_ok THEN p_snapshot END, false);
    INSERT INTO events (id, project_id, type, user_id, data)
    VALUES (p_event_ids[1], p_project,
            CASE WHEN v_ok THEN 'transaction.started' ELSE 'transaction.denied' END, p_user,
            v_event::jsonb);
    IF v_ok AND p_hold <> 0 THEN
        PERFORM creditd_balance_events(p_project, p_user, v_available, v_balance, p_thresholds,
                                       p_event_ids[2], p_event_ids[3]);
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (project_id, key, method, path, request_hash, status_code,
                                      headers, body, expires_at)
        VALUES (p_project, p_key, p_key_method, p_key_path, p_key_hash, 201, p_key_headers,
                convert_to(v_body, 'UTF8'), now() + p_key_ttl);
    END IF;
    RETURN v_body;
END
$$
"""

# A completion of a pending transaction on a user's own account: lock the transaction and
# the account, release the hold and charge (burning grants soonest-expiring first, the rest
# becoming debt), record the completion, its event, the day's usage and the key's stored
# response. Returns the response body; NULL when the transaction is not (or no longer) the
# pending one the caller read (nothing written).
_COMPLETE = """
CREATE FUNCTION creditd_fast_complete(
    p_project uuid, p_txn uuid, p_status text, p_kind text, p_charge numeric,
    p_release numeric, p_finalized jsonb, p_metadata jsonb, p_hash text, p_thresholds text[],
    p_event_ids uuid[], p_body text, p_event text, p_usage boolean,
    p_key text, p_key_method text, p_key_path text, p_key_hash text, p_key_headers jsonb,
    p_key_ttl interval
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_account uuid;
    v_user text;
    v_model text;
    v_feature text;
    v_total numeric;
    v_held numeric;
    v_balance numeric;
    v_burned numeric;
    v_body text;
BEGIN
    SELECT t.account_id, t.user_id, t.model, t.feature_identifier, a.total, a.held
    INTO v_account, v_user, v_model, v_feature, v_total, v_held
    FROM transactions t JOIN accounts a ON a.id = t.account_id
    WHERE t.project_id = p_project AND t.id = p_txn AND t.status = 'pending'
      AND t.team_id IS NULL AND t.hold_amount = p_release AND a.closed_at IS NULL
    FOR UPDATE OF t, a;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_balance := v_total - v_held + p_release - p_charge;
    v_body := creditd_fill(p_body, v_balance, NULL);
    IF p_charge <> 0 OR p_release <> 0 THEN
        SELECT creditd_burn(v_account, p_charge) INTO v_burned;
        UPDATE accounts
        SET total = total - p_charge, held = held - p_release, updated_at = now(),
            debt = debt + p_charge - v_burned
        WHERE id = v_account;
        INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                                    total_after, held_after, transaction_id, grant_id, reason,
                                    team_id, created_at)
        VALUES (p_project, v_account, v_user, p_kind, -p_charge, -p_release,
                v_total - p_charge, v_held - p_release, p_txn, NULL, NULL, NULL,
                clock_timestamp());
    END IF;
    UPDATE transactions
    SET status = p_status, credits_used = p_charge, finalized_tokens = p_finalized,
        metadata = p_metadata, late = false, completion_hash = p_hash,
        completion_result = v_body::jsonb, completed_at = now(), updated_at = now()
    WHERE project_id = p_project AND id = p_txn;
    INSERT INTO events (id, project_id, type, user_id, data)
    VALUES (p_event_ids[1], p_project, 'transaction.' || p_status, v_user,
            creditd_fill(p_event, v_balance, NULL)::jsonb);
    IF p_usage THEN
        INSERT INTO usage_daily AS u (project_id, day, user_id, model, feature, credits,
                                      transactions)
        VALUES (p_project, (now() AT TIME ZONE 'UTC')::date, v_user, v_model,
                coalesce(v_feature, ''), p_charge, 1)
        ON CONFLICT (project_id, day, user_id, model, feature) DO UPDATE
        SET credits = u.credits + EXCLUDED.credits,
            transactions = u.transactions + EXCLUDED.transactions;
    END IF;
    IF p_charge <> 0 OR p_release <> 0 THEN
        PERFORM creditd_balance_events(p_project, v_user, v_total - v_held, v_balance,
                                       p_thresholds, p_event_ids[2], p_event_ids[3]);
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (project_id, key, method, path, request_hash, status_code,
                                      headers, body, expires_at)
        VALUES (p_project, p_key, p_key_method, p_key_path, p_key_hash, 200, p_key_headers,
                convert_to(v_body, 'UTF8'), now() + p_key_ttl);
    END IF;
    RETURN v_body;
END
$$
"""

# One-shot usage on the user's own account: lock it, charge in full (no admission: the usage
# happened; burning grants, the rest debt), write the completed transaction, its event, the
# day's usage and the key's stored response, at the time the lock was got. Returns the body;
# NULL when the user or account is gone (nothing written).
_USAGE = """
CREATE FUNCTION creditd_fast_usage(
    p_project uuid, p_user text, p_txn uuid, p_name text, p_feature text, p_charge numeric,
    p_finalized jsonb, p_metadata jsonb, p_snapshot jsonb, p_job boolean,
    p_thresholds text[], p_event_ids uuid[], p_body text, p_event text,
    p_key text, p_key_method text, p_key_path text, p_key_hash text, p_key_headers jsonb,
    p_key_ttl interval
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_account uuid;
    v_total numeric;
    v_held numeric;
    v_balance numeric;
    v_burned numeric;
    v_now timestamptz;
    v_body text;
BEGIN
    SELECT a.id, a.total, a.held INTO v_account, v_total, v_held
    FROM users u JOIN accounts a ON a.id = u.account_id
    WHERE u.project_id = p_project AND u.id = p_user AND u.deleted_at IS NULL
      AND a.closed_at IS NULL
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_now := clock_timestamp();  -- as the general path: once the lock is held
    v_balance := v_total - v_held - p_charge;
    v_body := creditd_fill(p_body, v_balance, NULL);
    IF p_charge <> 0 THEN
        SELECT creditd_burn(v_account, p_charge) INTO v_burned;
        UPDATE accounts
        SET total = total - p_charge, updated_at = now(), debt = debt + p_charge - v_burned
        WHERE id = v_account;
        INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                                    total_after, held_after, transaction_id, grant_id, reason,
                                    team_id, created_at)
        VALUES (p_project, v_account, p_user, 'usage', -p_charge, 0, v_total - p_charge, v_held,
                p_txn, NULL, NULL, NULL, clock_timestamp());
    END IF;
    INSERT INTO transactions (id, project_id, account_id, user_id, model, feature_identifier,
        status, reason, hold_amount, credits_used, provisional_tokens, finalized_tokens,
        metadata, expires_at, completed_at, team_id, price_snapshot, job)
    VALUES (p_txn, p_project, v_account, p_user, p_name, p_feature, 'completed', NULL, 0,
            p_charge, NULL, p_finalized, p_metadata, NULL, v_now, NULL, p_snapshot, p_job);
    INSERT INTO events (id, project_id, type, user_id, data)
    VALUES (p_event_ids[1], p_project, 'transaction.completed', p_user,
            creditd_fill(p_event, v_balance, NULL)::jsonb);
    INSERT INTO usage_daily AS u (project_id, day, user_id, model, feature, credits,
                                  transactions)
    VALUES (p_project, (v_now AT TIME ZONE 'UTC')::date, p_user, p_name,
            coalesce(p_feature, ''), p_charge, 1)
    ON CONFLICT (project_id, day, user_id, model, feature) DO UPDATE
    SET credits = u.credits + EXCLUDED.credits,
        transactions = u.transactions + EXCLUDED.transactions;
    IF p_charge <> 0 THEN
        PERFORM creditd_balance_events(p_project, p_user, v_total - v_held, v_balance,
                                       p_thresholds, p_event_ids[2], p_event_ids[3]);
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (project_id, key, method, path, request_hash, status_code,
                                      headers, body, expires_at)
        VALUES (p_project, p_key, p_key_method, p_key_path, p_key_hash, 201, p_key_headers,
                convert_to(v_body, 'UTF8'), now() + p_key_ttl);
    END IF;
    RETURN v_body;
END
$$
"""


def upgrade() -> None:
    op.execute(_BURN)
    op.execute(_FILL)
    op.execute(_BALANCE_EVENTS)
    op.execute(_START)
    op.execute(_COMPLETE)
    op.execute(_USAGE)


def downgrade() -> None:
    op.execute("DROP FUNCTION creditd_fast_usage")
    op.execute("DROP FUNCTION creditd_fast_complete")
    op.execute("DROP FUNCTION creditd_fast_start")
    op.execute("DROP FUNCTION creditd_balance_events")
    op.execute("DROP FUNCTION creditd_fill")
    op.execute("DROP FUNCTION creditd_burn")

"""All SQL of the ledger export (read-only: the credits service writes the ledger)."""

from __future__ import annotations

# The export's horizon: no ledger entry with created_at before it can still commit.
# created_at defaults to now(), the writing transaction's start, which pg_stat_activity shows as
# xact_start from the moment the transaction starts (before it writes anything or holds an
# xid). So every transaction that could still commit an entry dated before the horizon is
# listed here with xact_start before it, and the horizon is the oldest such start. Any client
# session counts (one that has not written yet may still write); other databases' sessions and
# server processes (autovacuum) do not. The margin covers the instant between a transaction's
# start and its appearance in pg_stat_activity, and small steps of the clock.
# Sessions of other roles show no xact_start without pg_read_all_stats: every ledger writer
# connects as creditd's role, so they are visible.
HORIZON = """
    WITH c AS (SELECT clock_timestamp() - make_interval(secs => $1) AS t)
    SELECT least((SELECT t FROM c),
                 (SELECT min(xact_start) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND backend_type = 'client backend' AND xact_start IS NOT NULL))
"""

# The key (created_at, id) of a project's entry, to resume after it.
ENTRY_KEY = """
    SELECT created_at FROM ledger_entries WHERE project_id = $1 AND id = $2
"""

# Every entry of the project in [since, horizon) after the key ($4, $5), in (created_at, id)
# order. Values come as text, ready for the line: amounts are NUMERIC(38,6)'s plain text.
# No index serves this order: the plan is a scan of the project's rows and one sort in
# PostgreSQL's work_mem (spilling to disk), once per export -- see README "Ledger export".
EXPORT = """
    SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts,
           user_id, team_id, kind, amount::text AS amount, held_amount::text AS held_amount,
           total_after::text AS total_after, held_after::text AS held_after,
           transaction_id::text AS transaction_id, grant_id::text AS grant_id, reason
    FROM ledger_entries
    WHERE project_id = $1 AND created_at >= $2 AND created_at < $3
      AND (created_at, id) > ($4::timestamptz, $5::bigint)
    ORDER BY created_at, id
"""

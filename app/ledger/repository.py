"""All SQL of the ledger export (read-only: the credits service writes the ledger)."""

from __future__ import annotations

# The export's horizon: no ledger entry with created_at before it can still commit.
# created_at defaults to clock_timestamp(), read as the row is built, right before the row is
# inserted: the insert is the transaction's first write (which assigns it an xid, shown at once
# in pg_stat_activity.backend_xid) or comes after it. So a transaction that holds an xid can only
# commit entries dated at or after its xact_start, and one without an xid only entries dated
# after the moment it next writes. The horizon is the oldest xact_start of the sessions that
# hold an xid, and at most now - margin; the margin covers a row built an instant before this
# read whose xid was not yet visible, and small steps of the clock. Sessions without an xid (an
# idle `BEGIN; SELECT 1`, a BI query, another export) do not hold it back. Any session of this
# database counts; sessions of other roles show no xact_start without pg_read_all_stats: every
# ledger writer connects as creditd's role, so they are visible. See README "Completeness".
HORIZON = """
    WITH c AS (SELECT clock_timestamp() - make_interval(secs => $1) AS t)
    SELECT least((SELECT t FROM c),
                 (SELECT min(xact_start) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND backend_xid IS NOT NULL))
"""

# The key (created_at, id) of a project's entry, to resume after it.
ENTRY_KEY = """
    SELECT created_at FROM ledger_entries WHERE project_id = $1 AND id = $2
"""

# One batch: the next $6 entries of the project in [since, horizon) after the key ($4, $5), in
# (created_at, id) order. Every entry dated before the horizon is committed (see HORIZON), so
# this range never changes: each batch runs in a short transaction of its own and the next one
# resumes after the last key. ix_ledger_entries_project_id_created_at_id serves it: an index
# range scan that stops after $6 rows, no sort (README "Ledger export", "Cost"). Values come as
# text, ready for the line: amounts are NUMERIC(38,6)'s plain text.
EXPORT_BATCH = """
    SELECT id, created_at,
           to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts,
           user_id, team_id, kind, amount::text AS amount, held_amount::text AS held_amount,
           total_after::text AS total_after, held_after::text AS held_after,
           transaction_id::text AS transaction_id, grant_id::text AS grant_id, reason
    FROM ledger_entries
    WHERE project_id = $1 AND created_at >= $2 AND created_at < $3
      AND (created_at, id) > ($4::timestamptz, $5::bigint)
    ORDER BY created_at, id
    LIMIT $6
"""

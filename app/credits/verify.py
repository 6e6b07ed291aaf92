"""`creditd verify`: every money invariant of DESIGN.md, checked with SQL over all accounts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Each check selects the offending rows: (project_id, subject id, detail). No rows = it holds.
CHECKS: dict[str, str] = {
    "total_equals_sum_of_ledger": """
        SELECT a.project_id, a.id::text, format('total=%s ledger=%s', a.total, coalesce(l.s, 0))
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS s FROM ledger_entries GROUP BY account_id) l
               ON l.account_id = a.id
        WHERE a.total <> coalesce(l.s, 0)""",
    "held_equals_sum_of_ledger_holds": """
        SELECT a.project_id, a.id::text, format('held=%s ledger=%s', a.held, coalesce(l.s, 0))
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(held_amount) AS s
                   FROM ledger_entries GROUP BY account_id) l ON l.account_id = a.id
        WHERE a.held <> coalesce(l.s, 0)""",
    "held_equals_open_holds": """
        SELECT a.project_id, a.id::text, format('held=%s pending=%s', a.held, coalesce(t.s, 0))
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(hold_amount) AS s FROM transactions
                   WHERE status = 'pending' GROUP BY account_id) t ON t.account_id = a.id
        WHERE a.held <> coalesce(t.s, 0)""",
    "grants_minus_debt_equals_total": """
        SELECT a.project_id, a.id::text,
               format('total=%s grants=%s debt=%s', a.total, coalesce(g.s, 0), a.debt)
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(remaining) AS s FROM grants GROUP BY account_id) g
               ON g.account_id = a.id
        WHERE coalesce(g.s, 0) - a.debt <> a.total""",
    # Usage creates debt only once every grant is spent. A clawback is the exception: what it
    # cannot take from its own grant becomes debt while other grants keep their credits.
    "debt_only_when_grants_are_spent": """
        SELECT a.project_id, a.id::text, format('debt=%s grants=%s', a.debt, g.s)
        FROM accounts a
        JOIN (SELECT account_id, sum(remaining) AS s FROM grants GROUP BY account_id) g
          ON g.account_id = a.id
        WHERE a.debt > 0 AND g.s > 0
          AND a.id NOT IN (SELECT account_id FROM ledger_entries WHERE kind = 'clawback')""",
    "ledger_running_balances": """
        SELECT project_id, id::text, format('total_after=%s running=%s held_after=%s running=%s',
               total_after, rt, held_after, rh)
        FROM (SELECT project_id, id, total_after, held_after,
                     sum(amount) OVER w AS rt, sum(held_amount) OVER w AS rh
              FROM ledger_entries WINDOW w AS (PARTITION BY account_id ORDER BY id)) x
        WHERE total_after <> rt OR held_after <> rh""",
    "grant_remaining_within_amount": """
        SELECT project_id, id::text, format('amount=%s remaining=%s', amount, remaining)
        FROM grants WHERE remaining < 0 OR remaining > amount""",
    "refunds_within_credits_used": """
        SELECT t.project_id, t.id::text,
               format('credits_used=%s refunded_total=%s refunds=%s',
                      t.credits_used, t.refunded_total, coalesce(r.s, 0))
        FROM transactions t
        LEFT JOIN (SELECT transaction_id, sum(amount) AS s FROM refunds GROUP BY transaction_id) r
               ON r.transaction_id = t.id
        WHERE t.refunded_total > t.credits_used OR t.refunded_total <> coalesce(r.s, 0)""",
    # Payments: credited at most once (also a unique index: this catches corruption), the
    # grant is exactly what was credited, and clawbacks are what the ledger says, within it.
    "payment_credited_at_most_once": """
        SELECT project_id, payment_id::text, format('grants=%s', count(*))
        FROM grants WHERE payment_id IS NOT NULL
        GROUP BY project_id, payment_id HAVING count(*) > 1""",
    "payment_credits_granted_equal_its_grant": """
        SELECT p.project_id, p.id::text,
               format('credits_granted=%s grant=%s grant_amount=%s payment.grant_id=%s',
                      p.credits_granted, g.id, coalesce(g.amount, 0), p.grant_id)
        FROM payments p
        LEFT JOIN LATERAL (SELECT id, amount FROM grants
                           WHERE project_id = p.project_id AND payment_id = p.id
                           ORDER BY id LIMIT 1) g ON true
        WHERE p.credits_granted <> coalesce(g.amount, 0)
           OR p.grant_id IS DISTINCT FROM g.id""",
    "payment_clawbacks_within_credits_granted": """
        SELECT project_id, id::text,
               format('credits_granted=%s credits_clawed_back=%s',
                      credits_granted, credits_clawed_back)
        FROM payments
        WHERE credits_clawed_back < 0 OR credits_clawed_back > credits_granted""",
    "payment_clawbacks_equal_ledger": """
        SELECT p.project_id, p.id::text,
               format('credits_clawed_back=%s ledger=%s', p.credits_clawed_back, coalesce(l.s, 0))
        FROM payments p
        LEFT JOIN grants g ON g.project_id = p.project_id AND g.payment_id = p.id
        LEFT JOIN (SELECT grant_id, -sum(amount) AS s FROM ledger_entries
                   WHERE kind IN ('clawback', 'clawback_reversal') GROUP BY grant_id) l
               ON l.grant_id = g.id
        WHERE p.credits_clawed_back <> coalesce(l.s, 0)""",
    "pending_transactions_have_expiry": """
        SELECT project_id, id::text, 'pending without expires_at'
        FROM transactions WHERE status = 'pending' AND expires_at IS NULL""",
    "non_pending_transactions_hold_nothing_open": """
        SELECT t.project_id, t.id::text, format('status=%s hold ledger=%s', t.status, l.s)
        FROM transactions t
        JOIN (SELECT transaction_id, sum(held_amount) AS s FROM ledger_entries
              WHERE transaction_id IS NOT NULL GROUP BY transaction_id) l ON l.transaction_id = t.id
        WHERE t.status <> 'pending' AND l.s <> 0""",
    # Closed UTC days: the per-user and per-model day tables hold exactly usage_daily's sums,
    # the per-user week table the sums of its closed weeks, and nothing later is there.
    "closed_user_days_equal_usage_daily": """
        WITH closed AS (SELECT closed_through AS day FROM usage_rollup WHERE id = 1),
        f AS (SELECT project_id, day, user_id, sum(credits) AS credits,
                     sum(transactions) AS transactions
              FROM usage_daily WHERE day <= (SELECT day FROM closed)
              GROUP BY project_id, day, user_id)
        SELECT coalesce(c.project_id, f.project_id), coalesce(c.user_id, f.user_id),
               format('day=%s closed=%s/%s usage_daily=%s/%s', coalesce(c.day, f.day),
                      c.credits, c.transactions, f.credits, f.transactions)
        FROM usage_user_days c
        FULL JOIN f ON (f.project_id, f.day, f.user_id) = (c.project_id, c.day, c.user_id)
        WHERE c.credits IS DISTINCT FROM f.credits
           OR c.transactions IS DISTINCT FROM f.transactions""",
    "closed_user_weeks_equal_user_days": """
        WITH closed AS (SELECT closed_through AS day FROM usage_rollup WHERE id = 1),
        w AS (SELECT project_id, day - (extract(isodow FROM day)::int - 1) AS week, user_id,
                     credits, transactions
              FROM usage_user_days),
        f AS (SELECT project_id, week, user_id,
                     sum(credits) AS credits, sum(transactions) AS transactions
              FROM w WHERE week + 6 <= (SELECT day FROM closed)
              GROUP BY 1, 2, 3)
        SELECT coalesce(c.project_id, f.project_id), coalesce(c.user_id, f.user_id),
               format('week=%s closed=%s/%s user days=%s/%s', coalesce(c.week, f.week),
                      c.credits, c.transactions, f.credits, f.transactions)
        FROM usage_user_weeks c
        FULL JOIN f ON (f.project_id, f.week, f.user_id) = (c.project_id, c.week, c.user_id)
        WHERE c.credits IS DISTINCT FROM f.credits
           OR c.transactions IS DISTINCT FROM f.transactions""",
    "closed_model_days_equal_usage_daily": """
        WITH closed AS (SELECT closed_through AS day FROM usage_rollup WHERE id = 1),
        f AS (SELECT project_id, day, model, feature, sum(credits) AS credits,
                     sum(transactions) AS transactions
              FROM usage_daily WHERE day <= (SELECT day FROM closed)
              GROUP BY project_id, day, model, feature)
        SELECT coalesce(c.project_id, f.project_id),
               format('%s/%s', coalesce(c.model, f.model), coalesce(c.feature, f.feature)),
               format('day=%s closed=%s/%s usage_daily=%s/%s', coalesce(c.day, f.day),
                      c.credits, c.transactions, f.credits, f.transactions)
        FROM usage_model_days c
        FULL JOIN f ON (f.project_id, f.day, f.model, f.feature)
                     = (c.project_id, c.day, c.model, c.feature)
        WHERE c.credits IS DISTINCT FROM f.credits
           OR c.transactions IS DISTINCT FROM f.transactions""",
    # Rows of a team's account name that team; rows of a user's account name none.
    "team_id_names_the_accounts_team": """
        SELECT x.project_id, x.subject, format('team_id=%s account team=%s', x.team_id, t.id)
        FROM (SELECT project_id, 'ledger entry ' || id AS subject, account_id, team_id
              FROM ledger_entries
              UNION ALL SELECT project_id, 'grant ' || id, account_id, team_id FROM grants
              UNION ALL SELECT project_id, 'transaction ' || id, account_id, team_id
              FROM transactions) x
        LEFT JOIN teams t ON t.account_id = x.account_id
        WHERE x.team_id IS DISTINCT FROM t.id""",
    # A team's usage per member and UTC day is what its completed transactions of that day
    # charged, less their refunds (which come off the day of the charge).
    "team_usage_equals_team_transactions": """
        WITH t AS (SELECT project_id, team_id, user_id,
                          (completed_at AT TIME ZONE 'UTC')::date AS day,
                          sum(credits_used - refunded_total) AS credits
                   FROM transactions WHERE team_id IS NOT NULL AND status = 'completed'
                   GROUP BY 1, 2, 3, 4)
        SELECT coalesce(d.project_id, t.project_id),
               format('%s/%s', coalesce(d.team_id, t.team_id), coalesce(d.user_id, t.user_id)),
               format('day=%s usage=%s transactions=%s', coalesce(d.day, t.day), d.credits,
                      t.credits)
        FROM usage_team_daily d
        FULL JOIN t ON (t.project_id, t.team_id, t.user_id, t.day)
                     = (d.project_id, d.team_id, d.user_id, d.day)
        WHERE coalesce(d.credits, 0) <> coalesce(t.credits, 0)""",
}


@dataclass(frozen=True)
class Violation:
    check: str
    project_id: uuid.UUID
    subject: str
    detail: str


async def verify(
    session: AsyncSession, *, limit_per_check: int = 100
) -> tuple[int, list[Violation]]:
    """Run every check; returns (accounts checked, violations)."""
    violations: list[Violation] = []
    for name, sql in CHECKS.items():
        rows = await session.execute(text(f"{sql} LIMIT :limit"), {"limit": limit_per_check})
        violations.extend(Violation(name, r[0], r[1], r[2]) for r in rows)
    accounts = (await session.execute(text("SELECT count(*) FROM accounts"))).scalar_one()
    return int(accounts), violations

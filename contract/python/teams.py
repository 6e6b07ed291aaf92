"""Teams, expression prices, jobs, the price preview and the ledger export (issue 11) through the
generated client, in a project of their own (the outbound webhooks of flow.py count every event
of theirs, so nothing here may write into that project).

- a model priced by an expression; three users; a team; two members, one with a day spend cap
  of 5; 100 team credits;
- a member starts and completes with ``team_id``: the team's balance pays, its ledger names the
  member, the member's own account is untouched; the capped member's next start is refused
  (``spend_cap_reached``, also by ``/v1/check``); a non-member gets 403 ``not_a_team_member``;
- ``/v1/pricing/evaluate`` previews a usage (an ``ExpressionBreakdown``) and a one-shot
  ``/v1/usage`` with ``team_id`` charges exactly that, digit for digit;
- a job ``PUT`` and charged with ``quantity`` 3;
- ``GET /v1/ledger/export``: the spec publishes the JSON lines as bytes (``format: binary``,
  the line schema as ``contentSchema``), so the generated function returns a ``File``; every
  line is read with the generated ``LedgerExportEntry`` / ``LedgerExportEnd``, its SHA-256
  chain verified as the README defines it, the entries compared with the team's ledger and
  the trailer checked; the same export streamed through the generated client's httpx client
  gives the same entry lines, and resuming after the trailer chains on with no entry.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from decimal import Decimal
from typing import Any

from checks import exact, exact_body, expect, parsed
from creditd_client import AuthenticatedClient
from creditd_client.api.jobs import jobs_get, jobs_put
from creditd_client.api.ledger import ledger_export
from creditd_client.api.models import models_put, pricing_evaluate
from creditd_client.api.operator import admin_projects_create
from creditd_client.api.teams import (
    teams_create,
    teams_get,
    teams_grant_credits,
    teams_list_ledger,
    teams_list_members,
    teams_put_member,
)
from creditd_client.api.usage import (
    transactions_complete,
    transactions_start,
    usage_check,
    usage_record,
)
from creditd_client.api.users import users_create, users_get
from creditd_client.models import (
    CheckIn,
    CheckOut,
    CompleteIn,
    CompleteOut,
    CreditIn,
    EvaluateIn,
    EvaluateOut,
    ExpressionBreakdown,
    JobIn,
    JobOut,
    LedgerExportEnd,
    LedgerExportEntry,
    MemberIn,
    MemberInRole,
    MemberOut,
    MemberSpendCap,
    MemberSpendCapPeriod,
    ModelPriceIn,
    ModelPriceOut,
    PageLedgerEntryOut,
    PageMemberOut,
    Problem,
    ProjectCreate,
    ProjectCreated,
    StartIn,
    StartOut,
    TeamCreate,
    TeamOut,
    TokenUsage,
    UsageIn,
    UsageOut,
    UserCreate,
    UserOut,
)
from creditd_client.types import File

EXPRESSION = (
    "input_tokens * 0.01 + output_tokens * 0.03 + search_queries * 0.5 - cache_read_tokens * 0.0045"
)
GENESIS = "0" * 64
WAIT_SECONDS = 30.0


def run(base_url: str, admin_token: str) -> int:
    """The flow; returns how many export lines it verified."""
    operator = AuthenticatedClient(base_url=base_url, token=admin_token)
    created = admin_projects_create.sync_detailed(
        client=operator, body=ProjectCreate(name="contract-python-teams")
    )
    project = parsed(created, ProjectCreated, 201)
    with AuthenticatedClient(base_url=base_url, token=project.api_key.key) as api:
        return _flow(api, project.id)


def _flow(api: AuthenticatedClient, project_id: uuid.UUID) -> int:
    put = models_put.sync_detailed("metered", client=api, body=ModelPriceIn(expression=EXPRESSION))
    model = parsed(put, ModelPriceOut, 200)
    expect(model.expression == EXPRESSION, f"expression {model.expression}")
    expect(model.input_price_per_1k is None and model.output_price_per_1k is None, "no per-1K")

    suffix = uuid.uuid4().hex[:12]
    alice, bob, carol = (f"{name}_{suffix}" for name in ("alice", "bob", "carol"))
    for user_id in (alice, bob, carol):
        parsed(users_create.sync_detailed(client=api, body=UserCreate(id=user_id)), UserOut, 201)

    team_id = f"t_{suffix}"
    team = parsed(
        teams_create.sync_detailed(client=api, body=TeamCreate(id=team_id, name="Research")),
        TeamOut,
        201,
    )
    expect(team.id == team_id and team.name == "Research", "team created")
    expect(team.balance.total == 0, "a new team has no credits")
    again = teams_create.sync_detailed(client=api, body=TeamCreate(id=team_id))
    expect(parsed(again, Problem, 409).code == "team_exists", "team_exists")

    owner = parsed(
        teams_put_member.sync_detailed(
            team_id, alice, client=api, body=MemberIn(role=MemberInRole.OWNER)
        ),
        MemberOut,
        200,
    )
    expect(owner.role.value == "owner" and owner.spend_caps == [], "owner without caps")
    capped_put = teams_put_member.sync_detailed(
        team_id,
        bob,
        client=api,
        body=MemberIn(spend_caps=[MemberSpendCap(period=MemberSpendCapPeriod.DAY, limit="5")]),
    )
    capped = parsed(capped_put, MemberOut, 200)
    expect(capped.role.value == "member", "default role: member")
    caps = exact(capped_put)["spend_caps"]
    expect(caps == [{"period": "day", "limit": Decimal("5")}], f"bob's caps {caps}")
    expect([c.period.value for c in capped.spend_caps] == ["day"], "typed cap period")
    members = parsed(teams_list_members.sync_detailed(team_id, client=api), PageMemberOut, 200)
    expect(sorted(m.user_id for m in members.data) == sorted([alice, bob]), "two members")

    grant = teams_grant_credits.sync_detailed(
        team_id, client=api, body=CreditIn(amount="100", reason="contract team")
    )
    expect(exact(grant)["balance"] == Decimal("100"), f"team grant {grant.content!r}")

    # bob (day cap 5) holds 100 x 0.01 + 100 x 0.03 = 4 on the team
    first = transactions_start.sync_detailed(
        client=api,
        body=StartIn(
            user_id=bob,
            model="metered",
            team_id=team_id,
            provisional_tokens=TokenUsage(input_tokens=100, output_tokens=100),
        ),
    )
    started = parsed(first, StartOut, 201)
    expect(started.continue_, f"bob admitted: {first.content!r}")
    expect(exact(first)["hold_amount"] == Decimal("4"), f"hold {exact(first)['hold_amount']}")
    # and is charged 50 x 0.01 + 50 x 0.03 + 1 x 0.5 = 2.5
    done = transactions_complete.sync_detailed(
        str(started.transaction_id),
        client=api,
        body=CompleteIn(
            success=True,
            finalized_tokens=TokenUsage(input_tokens=50, output_tokens=50, search_queries=1),
        ),
    )
    completed = parsed(done, CompleteOut, 200)
    expect(completed.status.value == "completed", "completed")
    expect(exact(done)["credits_used"] == Decimal("2.5"), f"charge {done.content!r}")
    expect(exact(done)["balance"] == Decimal("97.5"), "the team's balance after")

    # 2.5 charged today + a hold of 4 > bob's cap of 5
    wanted = TokenUsage(input_tokens=100, output_tokens=100)
    check = usage_check.sync_detailed(
        client=api,
        body=CheckIn(user_id=bob, model="metered", team_id=team_id, provisional_tokens=wanted),
    )
    checked = parsed(check, CheckOut, 200)
    reason = checked.reason.value if checked.reason else None
    expect(not checked.allowed and reason == "spend_cap_reached", f"check: {check.content!r}")
    refused = transactions_start.sync_detailed(
        client=api,
        body=StartIn(user_id=bob, model="metered", team_id=team_id, provisional_tokens=wanted),
    )
    denied = parsed(refused, StartOut, 201)
    denied_reason = denied.reason.value if denied.reason else None
    expect(not denied.continue_ and denied_reason == "spend_cap_reached", "cap refuses a start")
    uncapped = usage_check.sync_detailed(
        client=api,
        body=CheckIn(user_id=alice, model="metered", team_id=team_id, provisional_tokens=wanted),
    )
    expect(parsed(uncapped, CheckOut, 200).allowed, "alice has no cap")

    for outsider in (
        transactions_start.sync_detailed(
            client=api,
            body=StartIn(
                user_id=carol, model="metered", team_id=team_id, provisional_tokens=wanted
            ),
        ),
        usage_record.sync_detailed(
            client=api,
            body=UsageIn(user_id=carol, model="metered", team_id=team_id, tokens=wanted),
        ),
    ):
        problem = parsed(outsider, Problem, 403)
        expect(problem.code == "not_a_team_member", f"non-member: {problem.code}")

    # The preview, then a one-shot usage that charges exactly it:
    # 1234 x 0.01 + 567 x 0.03 + 3 x 0.5 - 100 x 0.0045 = 12.34 + 17.01 + 1.5 - 0.45 = 30.4
    tokens = TokenUsage(
        input_tokens=1234, output_tokens=567, search_queries=3, cache_read_tokens=100
    )
    preview = pricing_evaluate.sync_detailed(
        client=api, body=EvaluateIn(model="metered", tokens=tokens, user_id=alice)
    )
    evaluated = parsed(preview, EvaluateOut, 200)
    breakdown = evaluated.breakdown
    expect(isinstance(breakdown, ExpressionBreakdown), f"breakdown {preview.content!r}")
    assert isinstance(breakdown, ExpressionBreakdown)
    expect(breakdown.expression == EXPRESSION, "breakdown expression")
    variables = exact(preview)["breakdown"]["variables"]
    expect(variables["input_tokens"] == 1234 and variables["search_queries"] == 3, "variables")
    # the metrics the expression reads, and only those
    names = ["cache_read_tokens", "input_tokens", "output_tokens", "search_queries"]
    expect(sorted(variables) == names and variables["cache_read_tokens"] == 100, f"{variables}")
    price = exact(preview)["credits"]
    expect(price == Decimal("30.4") and evaluated.credits_ == 30.4, f"preview {price}")
    expect(exact(preview)["breakdown"]["multiplier"] == 1, "default tier multiplier")

    used = usage_record.sync_detailed(
        client=api, body=UsageIn(user_id=alice, model="metered", team_id=team_id, tokens=tokens)
    )
    parsed(used, UsageOut, 201)
    expect(exact(used)["credits_used"] == price, f"usage charges the preview: {used.content!r}")
    expect(exact(used)["balance"] == Decimal("67.1"), "97.5 - 30.4")

    job = parsed(
        jobs_put.sync_detailed("batch_job", client=api, body=JobIn(price="2.5")), JobOut, 200
    )
    expect(job.name == "batch_job" and job.price == 2.5, "job put")
    expect(parsed(jobs_get.sync_detailed("batch_job", client=api), JobOut, 200).price == 2.5, "job")
    charged = usage_record.sync_detailed(
        client=api, body=UsageIn(user_id=alice, job="batch_job", quantity=3, team_id=team_id)
    )
    parsed(charged, UsageOut, 201)
    expect(exact(charged)["credits_used"] == Decimal("7.5"), f"job x 3: {charged.content!r}")
    expect(exact(charged)["balance"] == Decimal("59.6"), "67.1 - 7.5")

    read = teams_get.sync_detailed(team_id, client=api)
    parsed(read, TeamOut, 200)
    balance = exact(read)["balance"]
    expect(
        (balance["available"], balance["held"], balance["total"])
        == (Decimal("59.6"), 0, Decimal("59.6")),
        f"team balance {balance}",
    )
    own = users_get.sync_detailed(bob, client=api)
    expect(exact(own)["balance"]["total"] == 0, "the member's own account is untouched")

    ledger = teams_list_ledger.sync_detailed(team_id, client=api, limit=100)
    entries = parsed(ledger, PageLedgerEntryOut, 200).data
    rows = [(e["kind"], e.get("user_id"), e["amount"]) for e in exact(ledger)["data"]]
    wanted_rows = [
        ("grant", None, Decimal("100")),
        ("hold", bob, Decimal("0")),
        ("usage", bob, Decimal("-2.5")),
        ("usage", alice, Decimal("-30.4")),
        ("usage", alice, Decimal("-7.5")),
    ]
    expect(rows == wanted_rows, f"team ledger {rows}")
    expect(entries[2].transaction_id == started.transaction_id, "the member's usage entry")

    return _export(api, project_id, team_id, exact(ledger)["data"])


def _chain(lines: list[bytes], prev: str) -> str:
    """Verify the README's SHA-256 chain over ``lines``; returns the last hash."""
    for number, line in enumerate(lines, 1):
        expect(line.endswith(b'"}') and line[-154:-140] == b',"prev_hash":"', f"line {number}")
        expect(line[-140:-76].decode() == prev, f"line {number}: chain broken")
        prev = hashlib.sha256(prev.encode() + line[:-154] + b"}").hexdigest()
        expect(line[-66:-2].decode() == prev, f"line {number}: hash mismatch")
    return prev


def _read_lines(
    lines: list[bytes], prev: str
) -> tuple[list[tuple[LedgerExportEntry, Any]], LedgerExportEnd, Any]:
    """Typed and exact readings of an export's entry lines, and its trailer."""
    expect(len(lines) >= 1, "an export has at least its trailer")
    last = _chain(lines, prev)
    entries = []
    for line in lines[:-1]:
        raw = json.loads(line)
        expect(raw["object"] == "ledger_entry", f"entry line {line!r}")
        entries.append((LedgerExportEntry.from_dict(raw), exact_body(line)))
    raw_end = json.loads(lines[-1])
    expect(raw_end["object"] == "ledger_export_end", f"trailer {lines[-1]!r}")
    end = LedgerExportEnd.from_dict(raw_end)
    expect(end.hash_ == last and end.entries == len(entries), "trailer: hash and count")
    return entries, end, exact_body(lines[-1])


def _export(
    api: AuthenticatedClient, project_id: uuid.UUID, team_id: str, ledger: list[Any]
) -> int:
    # The export ends at a horizon about a second back: wait until it covers every entry.
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        answer = ledger_export.sync_detailed(client=api)
        body = parsed(answer, File, 200)
        expect(answer.headers.get("content-type") == "application/x-ndjson", "x-ndjson")
        raw = body.payload.read()
        expect(raw.endswith(b"\n"), "every line ends with a newline")
        lines = raw.splitlines()
        entries, end, exact_end = _read_lines(lines, GENESIS)
        if len(entries) >= len(ledger) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expect(len(entries) == len(ledger), f"export: {len(entries)} entries, ledger {len(ledger)}")
    expect(end.project_id == project_id and end.after is None, "trailer: project, no resume")
    expect(end.since is None and end.until is None, "trailer: whole range")
    expect(exact_end["next_after"] == entries[-1][0].id, "next_after: the last entry")
    for (entry, text), listed in zip(entries, ledger, strict=True):
        expect(entry.id == listed["id"] and entry.kind == listed["kind"], f"entry {entry.id}")
        expect(entry.team_id == team_id, f"entry {entry.id}: team_id {entry.team_id}")
        expect(entry.user_id == listed.get("user_id"), f"entry {entry.id}: the member")
        expect(
            entry.transaction_id
            == (uuid.UUID(listed["transaction_id"]) if listed["transaction_id"] else None),
            f"entry {entry.id}: transaction",
        )
        for name in ("amount", "held_amount", "total_after", "held_after"):
            expect(text[name] == listed[name], f"entry {entry.id}: {name} {text[name]}")
        expect(entry.amount == float(text["amount"]), f"entry {entry.id}: typed amount")
        expect(len(str(text["amount"]).partition(".")[2]) == 6, "amounts carry 6 decimals")
        expect(entry.created_at.endswith("Z") and len(entry.created_at) == 27, "microseconds")

    # The same export streamed through the generated client's own httpx client (same auth):
    # the entry lines are byte for byte the ones above.
    streamed: list[bytes] = []
    with api.get_httpx_client().stream("GET", "/v1/ledger/export") as response:
        expect(response.status_code == 200, f"stream: {response.status_code}")
        streamed.extend(line.encode() for line in response.iter_lines())
    expect(streamed[:-1] == lines[:-1], "streamed entry lines are the same bytes")
    _read_lines(streamed, GENESIS)

    # Resuming after a complete export chains on from its trailer, with nothing new.
    resumed = ledger_export.sync_detailed(client=api, after=end.next_after, prev_hash=end.hash_)
    tail = parsed(resumed, File, 200).payload.read().splitlines()
    more, later, _ = _read_lines(tail, end.hash_)
    expect(more == [] and later.after == end.next_after, f"resumed: {tail!r}")
    return len(lines) + len(streamed) + len(tail)

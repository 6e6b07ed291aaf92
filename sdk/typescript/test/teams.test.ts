/** Teams, expression prices, jobs, pricing.evaluate and the streamed ledger export, live. */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";

import {
  CreditdApiError,
  CreditdExportIncompleteError,
  type Creditd,
  type FetchLike,
  type LedgerExportEnd,
  type LedgerExportEntry,
} from "@creditd/sdk";

import { baseUrl, newClient, sleep, userId } from "./helpers.js";

const EXPRESSION = "input_tokens * 0.01 + output_tokens * 0.03 + search_queries * 0.5";

/** The README's chain: hash = SHA-256(prev_hash ‖ line[:-154] + "}"); returns the last hash. */
function verifyChain(lines: string[], prev = "0".repeat(64)): string {
  lines.forEach((line, i) => {
    assert.equal(line.slice(-140, -76), prev, `line ${i + 1}: chain broken`);
    prev = createHash("sha256").update(prev).update(Buffer.from(line.slice(0, -154), "utf8")).update("}").digest("hex");
    assert.equal(line.slice(-66, -2), prev, `line ${i + 1}: hash mismatch`);
  });
  return prev;
}

/** Export until the horizon (about a second back) covers `entries` entries. */
async function exportAll(client: Creditd, entries: number): Promise<string[]> {
  for (let tries = 0; ; tries++) {
    const lines: string[] = [];
    for await (const line of client.ledger.exportLines()) lines.push(line);
    if (lines.length - 1 >= entries || tries > 60) return lines;
    await sleep(500);
  }
}

async function teamWithCharges(client: Creditd): Promise<{ teamId: string; alice: string; bob: string; carol: string }> {
  await client.models.put("metered", { expression: EXPRESSION });
  const [alice, bob, carol] = [userId("alice"), userId("bob"), userId("carol")];
  for (const id of [alice, bob, carol]) await client.users.create({ id });
  const teamId = userId("t");
  const team = await client.teams.create({ id: teamId, name: "Research" });
  assert.equal(team.balance.total, "0");
  await client.teams.putMember(teamId, alice, { role: "owner" });
  const bobMember = await client.teams.putMember(teamId, bob, { spend_caps: [{ period: "day", limit: "5" }] });
  assert.deepEqual(bobMember.spend_caps, [{ period: "day", limit: "5" }]);
  await client.teams.grantCredits(teamId, { amount: "100" });
  return { teamId, alice, bob, carol };
}

describe("teams", () => {
  it("members charge the team's balance, caps and membership are enforced", async () => {
    const { client } = await newClient();
    const { teamId, alice, bob, carol } = await teamWithCharges(client);
    const tokens = { input_tokens: 100, output_tokens: 100 }; // 1 + 3 = 4
    const started = await client.transactions.start({ user_id: bob, model: "metered", team_id: teamId, provisional_tokens: tokens });
    assert.equal(started.continue, true);
    assert.equal(started.hold_amount, "4");
    const done = await client.transactions.complete(started.transaction_id, {
      success: true,
      finalized_tokens: { input_tokens: 50, output_tokens: 50, search_queries: 1 }, // 2.5
    });
    assert.equal(done.credits_used, "2.5");
    assert.equal((await client.teams.get(teamId)).balance.available, "97.5");
    assert.equal((await client.users.get(bob)).balance.total, "0");

    const check = await client.usage.check({ user_id: bob, model: "metered", team_id: teamId, provisional_tokens: tokens });
    assert.equal(check.allowed, false);
    assert.equal(check.reason, "spend_cap_reached");
    const denied = await client.transactions.start({ user_id: bob, model: "metered", team_id: teamId, provisional_tokens: tokens });
    assert.equal(denied.continue, false);
    assert.equal((await client.usage.check({ user_id: alice, model: "metered", team_id: teamId, provisional_tokens: tokens })).allowed, true);

    await assert.rejects(
      client.usage.record({ user_id: carol, model: "metered", team_id: teamId, tokens }),
      (e: unknown) => e instanceof CreditdApiError && e.status === 403 && e.code === "not_a_team_member",
    );
    const ledger = await client.teams.ledger(teamId);
    assert.deepEqual(
      ledger.data.map((e) => [e.kind, e.user_id ?? null, e.amount]),
      [["grant", null, "100"], ["hold", bob, "0"], ["usage", bob, "-2.5"]],
    );
    const members = await client.teams.members(teamId);
    assert.deepEqual(members.data.map((m) => m.user_id).sort(), [alice, bob].sort());
  });

  it("pricing.evaluate previews exactly what a usage charges; jobs charge price x quantity", async () => {
    const { client } = await newClient();
    const { teamId, alice } = await teamWithCharges(client);
    const tokens = { input_tokens: 1234, output_tokens: 567, search_queries: 3 }; // 12.34 + 17.01 + 1.5
    const preview = await client.pricing.evaluate({ model: "metered", tokens, user_id: alice });
    assert.equal(preview.credits, "30.85");
    assert.equal(preview.breakdown.kind, "expression");
    assert.equal(preview.breakdown.multiplier, "1");
    const used = await client.usage.record({ user_id: alice, model: "metered", team_id: teamId, tokens });
    assert.equal(used.credits_used, preview.credits);
    const job = await client.jobs.put("batch_job", { price: "2.5" });
    assert.equal(job.price, "2.5");
    const charged = await client.usage.record({ user_id: alice, job: "batch_job", quantity: 3, team_id: teamId });
    assert.equal(charged.credits_used, "7.5");
    assert.equal(charged.balance, "61.65"); // 100 - 30.85 - 7.5
  });
});

describe("ledger export", () => {
  it("streams every line with a valid SHA-256 chain and the trailer; resumes from it", async () => {
    const { client, projectId } = await newClient();
    const { teamId, alice } = await teamWithCharges(client);
    await client.usage.record({ user_id: alice, model: "metered", team_id: teamId, tokens: { input_tokens: 100 } });
    const lines = await exportAll(client, 2); // the team's grant and alice's usage
    const last = verifyChain(lines);
    const end = JSON.parse(lines.at(-1) ?? "") as LedgerExportEnd;
    assert.equal(end.object, "ledger_export_end");
    assert.equal(end.project_id, projectId);
    assert.equal(end.entries, 2);
    assert.equal(end.hash, last);

    const parsed = [];
    for await (const line of client.ledger.export()) parsed.push(line);
    assert.equal(parsed.length, 3);
    const usage = parsed[1] as LedgerExportEntry;
    assert.equal(usage.object, "ledger_entry");
    assert.equal(usage.kind, "usage");
    assert.equal(usage.amount, "-1.000000"); // exact text: 6 decimals, as written
    assert.equal(usage.team_id, teamId);
    assert.equal(usage.user_id, alice);
    assert.equal(end.next_after, usage.id);

    const resumed: string[] = [];
    for await (const line of client.ledger.exportLines({ after: end.next_after ?? 0, prevHash: end.hash })) resumed.push(line);
    assert.equal(resumed.length, 1);
    verifyChain(resumed, end.hash);
    assert.equal((JSON.parse(resumed[0] ?? "") as LedgerExportEnd).entries, 0);
  });

  it("throws export_incomplete when the stream ends without its trailer, and problems as errors", async () => {
    const { client: real, apiKey } = await newClient();
    await assert.rejects(
      (async () => {
        for await (const _ of real.ledger.exportLines({ since: "2030-01-01T00:00:00Z", until: "2020-01-01T00:00:00Z" })) void _;
      })(),
      (e: unknown) => e instanceof CreditdApiError && e.status === 422,
    );
    // A fetch that drops the trailer line, as a connection cut after the entries would.
    const cut: FetchLike = async (input, init) => {
      const answer = await fetch(input, init);
      const text = await answer.text();
      const kept = text.split("\n").filter((l) => l !== "" && !l.includes('"ledger_export_end"'));
      return new Response(kept.map((l) => `${l}\n`).join(""), { status: answer.status, headers: answer.headers });
    };
    const { Creditd } = await import("@creditd/sdk");
    const client = new Creditd({ apiKey, baseUrl: baseUrl(), fetch: cut, spool: false });
    await client.users.create({ id: userId() });
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const line of client.ledger.exportLines()) seen.push(line);
      })(),
      (e: unknown) => e instanceof CreditdExportIncompleteError && e.code === "export_incomplete" && e.lastHash === (seen.at(-1)?.slice(-66, -2) ?? null),
    );
  });
});

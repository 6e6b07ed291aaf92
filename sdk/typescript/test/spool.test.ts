/**
 * The durable completion spool against a creditd server of its own, which the tests stop and
 * start again on the same port: usage is never lost while creditd is briefly unreachable, and
 * never charged twice however often the spool is replayed.
 */

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import {
  CompletionSpooledError,
  CreditdConnectionError,
  Creditd,
  FileSpool,
  NotFoundError,
  ServerError,
  type CreditdOptions,
  type Spool,
  type SpoolEntry,
  type SpoolEvent,
} from "@creditd/sdk";

import { FaultProxy, newProject, problemBody, ServerProcess, sleep, userId } from "./helpers.js";

let server: ServerProcess;
let apiKey: string;
let admin: Creditd; // for setup and assertions; no spool

before(async () => {
  server = await ServerProcess.start("spool");
  ({ apiKey } = await newProject(server.baseUrl, "spool"));
  admin = new Creditd({ apiKey, baseUrl: server.baseUrl, spool: false });
  await admin.models.put("_default", { input_price_per_1k: "1", output_price_per_1k: "2" });
});

after(async () => {
  await server.stop();
});

function spoolDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), "creditd-spool-test-"));
}

function spooled(dir: string, options: Partial<CreditdOptions> = {}, url = server.baseUrl): Creditd {
  return new Creditd({
    apiKey,
    baseUrl: url,
    spool: dir,
    autoFlushSpool: false,
    maxRetries: 2,
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 50,
    timeoutMs: 3_000,
    ...options,
  });
}

async function fundedUser(credits = "10"): Promise<string> {
  const u = userId("spool");
  await admin.createUser(u);
  await admin.users.grantCredits(u, { amount: credits });
  return u;
}

async function usageEntries(u: string): Promise<string[]> {
  const ledger = await admin.users.ledger(u, { limit: 100 });
  return ledger.data.filter((e) => e.kind === "usage").map((e) => e.amount);
}

async function ledgerLength(u: string): Promise<number> {
  return (await admin.users.ledger(u, { limit: 100 })).data.length;
}

describe("the completion spool", () => {
  it("spools a completion while the server is down and delivers it exactly once after the restart", async () => {
    const dir = spoolDir();
    const events: SpoolEvent[] = [];
    const client = spooled(dir, { onSpoolEvent: (e) => events.push(e) });
    const u = await fundedUser("10");
    const started = await client.startUsageTransaction({
      userId: u,
      model: "gpt-4o",
      provisionalTokens: { inputTokens: 1000, outputTokens: 1000 },
    });
    assert.equal(started.hold_amount, "3");

    await server.stop();
    const err = await client
      .completeUsageTransaction(started.transaction_id, { finalizedTokens: { inputTokens: 500, outputTokens: 250 } })
      .then(
        () => assert.fail("the server is down"),
        (e: unknown) => e,
      );
    assert.ok(err instanceof CompletionSpooledError);
    assert.equal(err.transactionId, started.transaction_id);
    assert.ok(err.cause instanceof CreditdConnectionError);

    // On disk, whole: one JSON file with the body and the original key.
    const files = readdirSync(dir).filter((f) => f.endsWith(".json"));
    assert.equal(files.length, 1);
    const entry = JSON.parse(readFileSync(path.join(dir, files[0]!), "utf8")) as SpoolEntry;
    assert.equal(entry.transactionId, started.transaction_id);
    assert.equal(entry.idempotencyKey, err.idempotencyKey);
    assert.deepEqual(JSON.parse(entry.body), {
      success: true,
      finalized_tokens: { input_tokens: 500, output_tokens: 250 },
    });
    assert.deepEqual(
      events.map((e) => e.type),
      ["spooled"],
    );

    // While it is down, a flush keeps the entry.
    const whileDown = await client.flushSpool({ maxRetries: 0 });
    assert.equal(whileDown.delivered.length, 0);
    assert.equal(whileDown.pending, 1);
    assert.ok(whileDown.error instanceof CreditdConnectionError);

    await server.start();
    const pending = await admin.getTransaction(started.transaction_id);
    assert.equal(pending.status, "pending", "nothing reached the server before the flush");
    assert.deepEqual(await usageEntries(u), []);

    const flushed = await client.flushSpool();
    assert.equal(flushed.delivered.length, 1);
    assert.equal(flushed.pending, 0);
    const result = flushed.delivered[0]!.result;
    assert.deepEqual([result.status, result.credits_used, result.balance, result.late], ["completed", "1", "9", false]);

    const txn = await admin.getTransaction(started.transaction_id);
    assert.equal(txn.status, "completed");
    assert.equal(txn.credits_used, "1");
    assert.deepEqual(await usageEntries(u), ["-1"], "exactly one charge");
    assert.deepEqual((await admin.getUser(u)).balance, { available: "9", held: "0", total: "9" });
    assert.deepEqual(await new FileSpool(dir).list(), []);

    // Flushing again changes nothing.
    const entries = await ledgerLength(u);
    const again = await client.flushSpool();
    assert.deepEqual([again.delivered.length, again.rejected.length, again.pending], [0, 0, 0]);
    assert.equal(await ledgerLength(u), entries);
  });

  it("replays a completion that had landed (response lost) without charging twice, from a new process", async () => {
    const dir = spoolDir();
    const u = await fundedUser("10");
    const started = await admin.startUsageTransaction({ userId: u, model: "m", provisionalTokens: { outputTokens: 1000 } });
    // Every completion reaches the server, but no answer comes back: the client spools it.
    const proxy = await new FaultProxy(server.baseUrl, (_n, req) =>
      req.url.endsWith("/complete") ? { kind: "forward_then_drop" } : { kind: "forward" },
    ).start();
    try {
      const viaProxy = spooled(dir, {}, proxy.baseUrl);
      await assert.rejects(
        viaProxy.completeUsageTransaction(started.transaction_id, { finalizedTokens: { outputTokens: 500 } }),
        CompletionSpooledError,
      );
      assert.deepEqual(
        proxy.upstream.map((r) => r.replayed),
        [false, true, true],
        "the first attempt landed; the retries were replays",
      );
    } finally {
      await proxy.stop();
    }
    assert.equal((await admin.getTransaction(started.transaction_id)).status, "completed");
    assert.deepEqual(await usageEntries(u), ["-1"]);

    // A new client on the same directory (the app restarted), and a second one: both flush at once.
    const first = spooled(dir);
    const second = spooled(dir);
    const [a, b, c] = await Promise.all([first.flushSpool(), first.flushSpool(), second.flushSpool()]);
    assert.equal(a, b, "one flush at a time per client");
    const delivered = [...a.delivered, ...c.delivered];
    assert.ok(delivered.length >= 1);
    for (const d of delivered) {
      assert.deepEqual([d.result.status, d.result.credits_used, d.result.balance], ["completed", "1", "9"]);
    }
    assert.deepEqual(await usageEntries(u), ["-1"], "still exactly one charge");
    assert.deepEqual(await new FileSpool(dir).list(), []);
  });

  it("an entry replayed with a new key after the completion landed is answered with the first result", async () => {
    const dir = spoolDir();
    const u = await fundedUser("10");
    const client = spooled(dir);
    const started = await client.startUsageTransaction({ userId: u, model: "m", provisionalTokens: { outputTokens: 1000 } });
    const body = '{"success":true,"finalized_tokens":{"output_tokens":250}}';
    const done = await client.transactions.complete(started.transaction_id, JSON.parse(body) as { success: boolean });
    const spool = new FileSpool(dir);
    await spool.put({
      id: "0001-copy",
      transactionId: started.transaction_id,
      body,
      idempotencyKey: "another-key",
      createdAt: new Date().toISOString(),
    });
    const flushed = await client.flushSpool();
    assert.equal(flushed.delivered.length, 1);
    assert.deepEqual(flushed.delivered[0]?.result, done);
    assert.deepEqual(await usageEntries(u), ["-0.5"]);
  });

  it("captureUsage spools the completion when creditd goes away during the model call; the next calls deliver it", async () => {
    const dir = spoolDir();
    const events: SpoolEvent[] = [];
    const client = spooled(dir, { autoFlushSpool: true, onSpoolEvent: (e) => events.push(e) });
    const u = await fundedUser("10");
    const out = await client.captureUsage(
      { userId: u, model: "gpt-4o", provisionalTokens: { inputTokens: 1000, outputTokens: 1000 } },
      async () => {
        await server.stop(); // the outage happens while the model runs
        return { usage: { prompt_tokens: 1000, completion_tokens: 500 } };
      },
    );
    assert.equal(out.status, "executed_success");
    assert.equal(out.spooled, true);
    assert.equal(out.completion, undefined);
    assert.equal((await new FileSpool(dir).list()).length, 1);

    await server.start();
    // Any call that reaches the server starts a background flush.
    await client.getUser(u);
    await waitFor(() => events.some((e) => e.type === "delivered"));
    await client.close();
    assert.deepEqual(await usageEntries(u), ["-2"]);
    assert.equal((await admin.getTransaction(out.transaction!.transaction_id)).status, "completed");
    assert.deepEqual(await new FileSpool(dir).list(), []);
  });

  it("a late completion (hold expired while creditd was down) is still charged once", async () => {
    const dir = spoolDir();
    const client = spooled(dir);
    const u = await fundedUser("10");
    const started = await client.startUsageTransaction({
      userId: u,
      model: "m",
      provisionalTokens: { outputTokens: 1000 },
      holdTtlSeconds: 1,
    });
    await server.stop();
    await assert.rejects(
      client.completeUsageTransaction(started.transaction_id, { finalizedTokens: { outputTokens: 1500 } }),
      CompletionSpooledError,
    );
    await sleep(1_100); // past expires_at
    await server.start();
    // The server's sweeper releases the expired hold; wait for it, then deliver.
    await waitFor(async () => (await admin.getTransaction(started.transaction_id)).status === "expired");
    assert.deepEqual((await admin.getUser(u)).balance, { available: "10", held: "0", total: "10" });
    const flushed = await client.flushSpool();
    assert.equal(flushed.delivered[0]?.result.late, true);
    assert.equal(flushed.delivered[0]?.result.credits_used, "3");
    assert.deepEqual(await usageEntries(u), ["-3"]);
    assert.deepEqual((await admin.getUser(u)).balance, { available: "7", held: "0", total: "7" });
    await client.flushSpool();
    assert.deepEqual(await usageEntries(u), ["-3"]);
  });

  it("spools on 5xx answers into a Spool of your own, and the interval flush delivers it", async () => {
    const u = await fundedUser("10");
    const started = await admin.startUsageTransaction({ userId: u, model: "m", provisionalTokens: { outputTokens: 1000 } });
    let outage = true;
    const proxy = await new FaultProxy(server.baseUrl, (_n, req) =>
      outage && req.url.endsWith("/complete")
        ? { kind: "respond", status: 503, headers: { "retry-after": "0" }, body: problemBody(503, "service_unavailable") }
        : { kind: "forward" },
    ).start();
    const stored = new Map<string, SpoolEntry>();
    const calls: string[] = [];
    const memory: Spool = {
      put: async (e) => void (calls.push("put"), stored.set(e.id, e)),
      list: async () => [...stored.values()],
      remove: async (id) => void (calls.push("remove"), stored.delete(id)),
    };
    const events: SpoolEvent[] = [];
    const client = spooled("", { spool: memory, spoolFlushIntervalMs: 100, onSpoolEvent: (e) => events.push(e) }, proxy.baseUrl);
    try {
      const err = await client.completeUsageTransaction(started.transaction_id, { finalizedTokens: { outputTokens: 500 } }).then(
        () => assert.fail("the server answers 503"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof CompletionSpooledError);
      assert.ok(err.cause instanceof ServerError);
      assert.equal(stored.size, 1);
      const keys = proxy.requests.filter((r) => r.url.endsWith("/complete")).map((r) => r.headers["idempotency-key"]);
      assert.equal(new Set(keys).size, 1, "every attempt used the same key");
      assert.equal((await admin.getTransaction(started.transaction_id)).status, "pending");

      outage = false;
      await waitFor(() => events.some((e) => e.type === "delivered"));
      const replayKey = proxy.requests.filter((r) => r.url.endsWith("/complete")).at(-1)?.headers["idempotency-key"];
      assert.equal(replayKey, keys[0], "the replay sent the original key");
    } finally {
      await client.close();
      await proxy.stop();
    }
    assert.deepEqual(calls, ["put", "remove"]);
    assert.deepEqual(await usageEntries(u), ["-1"]);
    assert.equal((await admin.getTransaction(started.transaction_id)).status, "completed");
  });

  it("does not spool a completion the server refused for good", async () => {
    const dir = spoolDir();
    const client = spooled(dir);
    await assert.rejects(
      client.completeUsageTransaction("00000000-0000-0000-0000-000000000000", { success: true }),
      NotFoundError,
    );
    assert.deepEqual(await new FileSpool(dir).list(), []);
  });

  it("moves an entry the server refuses for good to rejected/", async () => {
    const dir = spoolDir();
    const client = spooled(dir);
    const spool = new FileSpool(dir);
    await spool.put({
      id: "0001-unknown",
      transactionId: "00000000-0000-0000-0000-000000000000",
      body: '{"success":true}',
      idempotencyKey: "k-unknown",
      createdAt: new Date().toISOString(),
    });
    const flushed = await client.flushSpool();
    assert.equal(flushed.rejected.length, 1);
    assert.equal(flushed.rejected[0]?.error.code, "transaction_not_found");
    assert.deepEqual(await spool.list(), []);
    assert.ok(existsSync(path.join(dir, "rejected", "0001-unknown.json")));
  });
});

async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(100);
  }
}

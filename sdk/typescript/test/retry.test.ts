/**
 * Retries through a fault-injecting proxy in front of a live creditd: whatever fails on the
 * way, a call has exactly one effect (same Idempotency-Key on every attempt).
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import {
  Creditd,
  CreditdAdmin,
  CreditdConnectionError,
  CreditdTimeoutError,
  RateLimitError,
  ValidationError,
  type RetryInfo,
} from "@creditd/sdk";

import { ADMIN_TOKEN, baseUrl, FaultProxy, newClient, priceDefault, problemBody, userId, type ProxyAction } from "./helpers.js";

let direct: Creditd;
let apiKey: string;
const proxies: FaultProxy[] = [];

before(async () => {
  ({ client: direct, apiKey } = await newClient());
  await priceDefault(direct);
});

after(async () => {
  await Promise.all(proxies.map((p) => p.stop()));
});

/** A proxy applying `first` to the first request matching `match`, forwarding everything else. */
async function proxyWith(
  first: ProxyAction | ProxyAction[],
  match: (method: string, url: string) => boolean = (m) => m === "POST",
): Promise<{ proxy: FaultProxy; client: Creditd; retries: RetryInfo[] }> {
  const faults = Array.isArray(first) ? [...first] : [first];
  const proxy = await new FaultProxy(baseUrl(), (_n, req) => {
    if (match(req.method, req.url) && faults.length > 0) return faults.shift()!;
    return { kind: "forward" };
  }).start();
  proxies.push(proxy);
  const retries: RetryInfo[] = [];
  const client = new Creditd({
    apiKey,
    baseUrl: proxy.baseUrl,
    spool: false,
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 50,
    timeoutMs: 2_000,
    onRetry: (info) => retries.push(info),
  });
  return { proxy, client, retries };
}

async function grants(u: string): Promise<string[]> {
  const ledger = await direct.users.ledger(u, { limit: 100 });
  return ledger.data.filter((e) => e.kind === "grant").map((e) => e.amount);
}

function keysOf(proxy: FaultProxy): string[] {
  return proxy.requests.filter((r) => r.method === "POST").map((r) => String(r.headers["idempotency-key"]));
}

describe("retries have one effect", () => {
  it("a response lost after the server applied the request: the retry is replayed, not reapplied", async () => {
    const u = userId("drop");
    await direct.createUser(u);
    const { proxy, client, retries } = await proxyWith({ kind: "forward_then_drop" });
    const grant = await client.users.grantCredits(u, { amount: "5" });
    assert.equal(grant.balance, "5");
    const keys = keysOf(proxy);
    assert.equal(keys.length, 2);
    assert.equal(keys[0], keys[1], "the same Idempotency-Key on both attempts");
    assert.match(keys[0]!, /^[0-9a-f-]{36}$/);
    assert.equal(proxy.requests[0]?.body, proxy.requests[1]?.body);
    assert.deepEqual(proxy.upstream, [
      { status: 201, replayed: false },
      { status: 201, replayed: true },
    ]);
    assert.equal(retries.length, 1);
    assert.ok(retries[0]?.error instanceof CreditdConnectionError);
    assert.deepEqual(await grants(u), ["5"], "one grant in the ledger");
    assert.equal((await direct.getUser(u)).balance.available, "5");
  });

  it("a completion whose response was lost is charged once", async () => {
    const u = userId("dropc");
    await direct.createUser(u);
    await direct.users.grantCredits(u, { amount: "10" });
    const started = await direct.startUsageTransaction({ userId: u, model: "m", provisionalTokens: { outputTokens: 1000 } });
    const { proxy, client } = await proxyWith({ kind: "forward_then_drop" }, (m, url) => m === "POST" && url.endsWith("/complete"));
    const done = await client.completeUsageTransaction(started.transaction_id, { finalizedTokens: { outputTokens: 500 } });
    assert.deepEqual([done.status, done.credits_used, done.balance], ["completed", "1", "9"]);
    assert.equal(proxy.upstream[1]?.replayed, true);
    const ledger = await direct.users.ledger(u);
    assert.deepEqual(
      ledger.data.filter((e) => e.kind === "usage").map((e) => e.amount),
      ["-1"],
    );
  });

  it("503 once: retried with the same key, one effect", async () => {
    const u = userId("503");
    await direct.createUser(u);
    const { proxy, client, retries } = await proxyWith({
      kind: "respond",
      status: 503,
      headers: { "retry-after": "0" },
      body: problemBody(503, "service_unavailable"),
    });
    await client.users.grantCredits(u, { amount: "1.5" });
    assert.equal(retries[0]?.status, 503);
    const keys = keysOf(proxy);
    assert.equal(keys.length, 2);
    assert.equal(keys[0], keys[1]);
    assert.deepEqual(await grants(u), ["1.5"]);
  });

  it("409 idempotency_key_in_flight: waits and retries with the same key", async () => {
    const u = userId("inflight");
    await direct.createUser(u);
    const { proxy, client, retries } = await proxyWith([
      { kind: "respond", status: 409, body: problemBody(409, "idempotency_key_in_flight") },
      { kind: "respond", status: 409, body: problemBody(409, "idempotency_key_in_flight") },
    ]);
    await client.users.grantCredits(u, { amount: "2" });
    assert.deepEqual(
      retries.map((r) => r.status),
      [409, 409],
    );
    const keys = keysOf(proxy);
    assert.equal(new Set(keys).size, 1);
    assert.equal(keys.length, 3);
    assert.deepEqual(await grants(u), ["2"]);
  });

  it("429 honours Retry-After, and a RateLimitError carries retryAfter once retries run out", async () => {
    const u = userId("429");
    await direct.createUser(u);
    const limited: ProxyAction = {
      kind: "respond",
      status: 429,
      headers: { "retry-after": "1" },
      body: problemBody(429, "rate_limited"),
    };
    const { client, retries } = await proxyWith(limited);
    await client.users.grantCredits(u, { amount: "1" });
    assert.equal(retries.length, 1);
    assert.equal(retries[0]?.status, 429);
    assert.ok(retries[0]!.delayMs >= 1000, `waited ${retries[0]!.delayMs} ms for Retry-After: 1`);
    assert.deepEqual(await grants(u), ["1"]);

    const again = await proxyWith([limited, limited]);
    const err = await again.client.users.grantCredits(u, { amount: "1" }, { maxRetries: 0 }).then(
      () => assert.fail("expected a 429"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof RateLimitError);
    assert.equal(err.retryAfter, 1);
    assert.equal(err.code, "rate_limited");
    assert.deepEqual(await grants(u), ["1"], "the refused call had no effect");
  });

  it("a hung request times out and is retried", async () => {
    const u = userId("hang");
    await direct.createUser(u);
    const hang = await new FaultProxy(baseUrl(), (n) => (n === 0 ? { kind: "hang" } : { kind: "forward" })).start();
    proxies.push(hang);
    const seen: RetryInfo[] = [];
    const c = new Creditd({ apiKey, baseUrl: hang.baseUrl, spool: false, timeoutMs: 300, retryBaseDelayMs: 10, onRetry: (i) => seen.push(i) });
    const grant = await c.users.grantCredits(u, { amount: "3" });
    assert.equal(grant.balance, "3");
    assert.ok(seen[0]?.error instanceof CreditdTimeoutError);
    assert.deepEqual(await grants(u), ["3"]);
  });

  it("GETs are retried after a dropped connection; client errors are not retried", async () => {
    const u = userId("get");
    await direct.createUser(u);
    const { proxy, client } = await proxyWith({ kind: "drop" }, (m) => m === "GET");
    assert.equal((await client.getUser(u)).id, u);
    assert.equal(proxy.requests.length, 2);

    const bad = await proxyWith([]);
    await assert.rejects(bad.client.users.grantCredits(u, { amount: "-1" }), ValidationError);
    assert.equal(bad.proxy.requests.length, 1);
  });

  it("an operator create (no idempotency) is not repeated after an ambiguous failure", async () => {
    const proxy = await new FaultProxy(baseUrl(), () => ({ kind: "forward_then_drop" })).start();
    proxies.push(proxy);
    const admin = new CreditdAdmin({ adminToken: ADMIN_TOKEN, baseUrl: proxy.baseUrl });
    await assert.rejects(admin.projects.create({ name: "once" }), CreditdConnectionError);
    assert.equal(proxy.requests.length, 1);
    assert.equal(proxy.requests[0]?.headers["idempotency-key"], undefined);
  });
});

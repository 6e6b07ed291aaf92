/** The client against a live creditd: credly-named CRUD, every resource, typed errors. */

import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import {
  ConflictError,
  Creditd,
  CreditdApiError,
  CreditdConnectionError,
  ForbiddenError,
  InsufficientCreditsError,
  NotFoundError,
  paginate,
  UnauthorizedError,
  ValidationError,
} from "@creditd/sdk";

import { baseUrl, counted, freePort, newClient, priceDefault, userId } from "./helpers.js";

let client: Creditd;
let apiKey: string;

before(async () => {
  ({ client, apiKey } = await newClient());
  await priceDefault(client);
});

describe("credly-named user methods", () => {
  it("createUser, getUser, getUsers, changeUserTier, deleteUser", async () => {
    const a = userId("crud");
    const b = userId("crud");
    const created = await client.createUser(a);
    assert.equal(created.id, a);
    assert.deepEqual(created.balance, { available: "0", held: "0", total: "0" });

    await client.tiers.create({ id: "pro", name: "Pro", credits: "50" });
    const withMeta = await client.createUser({ userId: b, metadata: { plan: "x" } });
    assert.deepEqual(withMeta.metadata, { plan: "x" });

    const got = await client.getUser(a);
    assert.equal(got.id, a);
    assert.equal(got.tier_id, null);

    const listed: string[] = [];
    for await (const u of paginate((p) => client.getUsers({ ...p, limit: 1 }))) listed.push(u.id);
    assert.ok(listed.includes(a) && listed.includes(b), "paginate walks every page");
    const page = await client.getUsers({ limit: 1 });
    assert.equal(page.data.length, 1);
    assert.equal(page.has_more, true);
    const next = await client.getUsers({ limit: 1, startingAfter: page.next_cursor! });
    assert.notEqual(next.data[0]?.id, page.data[0]?.id);

    const moved = await client.changeUserTier(a, "pro");
    assert.equal(moved.tier_id, "pro");
    assert.equal(moved.balance.available, "50", "the tier's allocation was granted");
    const movedBack = await client.changeUserTier({ userId: b, tierId: "pro", resetBalance: true });
    assert.equal(movedBack.tier_id, "pro");

    await client.deleteUser(b);
    await assert.rejects(client.getUser(b), NotFoundError);
  });

  it("createUser twice is a ConflictError with the user_exists code", async () => {
    const id = userId("dup");
    await client.createUser({ id });
    await assert.rejects(client.createUser({ id }), (err: unknown) => {
      assert.ok(err instanceof ConflictError);
      assert.equal(err.code, "user_exists");
      assert.equal(err.status, 409);
      return true;
    });
  });
});

describe("credly-named transaction methods", () => {
  it("startUsageTransaction, completeUsageTransaction, getTransactions, getTransaction", async () => {
    const u = userId("txn");
    await client.createUser(u);
    await client.users.grantCredits(u, { amount: "100" });
    const started = await client.startUsageTransaction({
      userId: u,
      model: "gpt-4o",
      provisionalTokens: { inputTokens: 1000, outputTokens: 1000 },
      featureIdentifier: "chat",
      metadata: { conversation: "c1" },
    });
    assert.equal(started.continue, true);
    assert.equal(started.status, "pending");
    assert.equal(started.hold_amount, "3");
    assert.equal(started.balance, "97");

    const done = await client.completeUsageTransaction(started.transaction_id, {
      finalizedTokens: { inputTokens: 500, outputTokens: 250 },
    });
    assert.deepEqual(
      { status: done.status, credits_used: done.credits_used, balance: done.balance, adj: done.balance_adjustment, late: done.late },
      { status: "completed", credits_used: "1", balance: "99", adj: "2", late: false },
    );
    // The object form, snake_case, completing again with the same body: the first result.
    const again = await client.completeUsageTransaction({
      transaction_id: started.transaction_id,
      success: true,
      finalized_tokens: { input_tokens: 500, output_tokens: 250 },
    });
    assert.deepEqual(again, done);

    const one = await client.getTransaction(started.transaction_id);
    assert.equal(one.status, "completed");
    assert.equal(one.credits_used, "1");
    assert.equal(one.feature_identifier, "chat");
    assert.deepEqual(counted(one.finalized_tokens), { input_tokens: 500, output_tokens: 250 });

    const mine = await client.getTransactions({ userId: u });
    assert.deepEqual(
      mine.data.map((t) => t.id),
      [started.transaction_id],
    );
    const none = await client.getTransactions({ userId: u, status: "pending" });
    assert.equal(none.data.length, 0);

    const ledger = await client.users.ledger(u);
    assert.deepEqual(
      ledger.data.map((e) => [e.kind, e.amount, e.balance_after]),
      [
        ["grant", "100", "100"],
        ["hold", "0", "97"],
        ["usage", "-1", "99"],
      ],
    );
  });
});

describe("every resource", () => {
  it("project, api keys, models", async () => {
    const project = await client.project.get();
    assert.equal(project.settings.auto_create_users, true);
    const patched = await client.project.update({ settings: { low_balance_thresholds: ["10", "2.5"] } });
    assert.deepEqual(patched.settings.low_balance_thresholds, ["10", "2.5"]);

    const key = await client.apiKeys.create({ name: "reader", scopes: ["read"] });
    assert.match(key.key, /.+/);
    const keys = await client.apiKeys.list({ limit: 100 });
    assert.ok(keys.data.some((k) => k.id === key.id && !("key" in k)));
    await client.apiKeys.revoke(key.id);
    const revoked = new Creditd({ apiKey: key.key, baseUrl: baseUrl(), spool: false });
    await assert.rejects(revoked.getUsers(), UnauthorizedError);

    const model = await client.models.put("gpt-4o-mini", {
      input_price_per_1k: "0.15",
      output_price_per_1k: 0.6,
      cached_input_price_per_1k: "0.075",
    });
    assert.deepEqual(
      [model.input_price_per_1k, model.output_price_per_1k, model.cached_input_price_per_1k, model.request_price],
      ["0.15", "0.6", "0.075", "0"],
    );
    assert.equal((await client.models.get("gpt-4o-mini")).id, "gpt-4o-mini");
    assert.ok((await client.models.list()).data.some((m) => m.id === "_default"));
    await client.models.delete("gpt-4o-mini");
    await assert.rejects(client.models.get("gpt-4o-mini"), NotFoundError);
  });

  it("users, credits, debits, grants, ledger, usage, check, extend, refund", async () => {
    const u = userId("res");
    await client.users.create({ id: u, metadata: { a: 1 } });
    assert.deepEqual((await client.users.update(u, { metadata: { a: 2 } })).metadata, { a: 2 });
    const grant = await client.users.grantCredits(u, { amount: "10", reason: "welcome", expires_at: new Date(Date.now() + 86_400_000) });
    assert.deepEqual([grant.amount, grant.remaining, grant.balance, grant.reason], ["10", "10", "10", "welcome"]);
    const debit = await client.users.debit(u, { amount: "2.5", reason: "manual" });
    assert.deepEqual([debit.amount, debit.balance], ["2.5", "7.5"]);
    await assert.rejects(client.users.debit(u, { amount: "1000" }), (err: unknown) => {
      assert.ok(err instanceof InsufficientCreditsError);
      assert.equal(err.status, 402);
      assert.equal(err.code, "insufficient_credits");
      return true;
    });
    const grants = await client.users.grants(u);
    assert.equal(grants.data[0]?.remaining, "7.5");

    const check = await client.usage.check({ user_id: u, amount: "7.5" });
    assert.deepEqual([check.allowed, check.available, check.required], [true, "7.5", "7.5"]);
    const denied = await client.usage.check({ user_id: u, amount: "7.500001" });
    assert.deepEqual([denied.allowed, denied.reason], [false, "insufficient_credits"]);

    const used = await client.usage.record({ user_id: u, model: "any", tokens: { input_tokens: 1000, output_tokens: 500 } });
    assert.deepEqual([used.status, used.credits_used, used.balance], ["completed", "2", "5.5"]);
    const refund = await client.transactions.refund(used.transaction_id, { amount: "0.5", reason: "sorry" });
    assert.deepEqual([refund.amount, refund.refunded_total, refund.balance], ["0.5", "0.5", "6"]);

    const started = await client.transactions.start({ user_id: u, model: "any", provisional_tokens: { output_tokens: 1000 } });
    const extended = await client.transactions.extend(started.transaction_id, { hold_ttl_seconds: 3600 });
    assert.equal(extended.status, "pending");
    assert.ok(Date.parse(extended.expires_at!) > Date.now() + 3_000_000);
    const released = await client.transactions.complete(started.transaction_id, { success: false });
    assert.deepEqual([released.status, released.credits_used, released.balance], ["failed", "0", "6"]);

    const ledger = await client.users.ledger(u, { limit: 100 });
    assert.deepEqual(
      ledger.data.map((e) => e.kind),
      ["grant", "debit", "usage", "refund", "hold", "hold_release"],
    );
    assert.equal(ledger.data.at(-1)?.balance_after, "6");
  });

  it("tiers, plans, subscriptions", async () => {
    const tier = await client.tiers.create({
      id: "gold",
      name: "Gold",
      credits: "100",
      refill_interval: "month",
      allow_overage: true,
      overage_limit: "5",
      price_multiplier: "0.5",
      model_overrides: { "gpt-4o": { input_price_per_1k: "3" } },
    });
    assert.deepEqual(
      [tier.credits, tier.overage_limit, tier.price_multiplier, tier.model_overrides["gpt-4o"]?.input_price_per_1k],
      ["100", "5", "0.5", "3"],
    );
    assert.equal((await client.tiers.update("gold", { name: "Gold+" })).name, "Gold+");
    assert.equal((await client.tiers.get("gold")).name, "Gold+");
    assert.ok((await client.tiers.list()).data.some((t) => t.id === "gold"));

    const plan = await client.plans.create({
      id: "monthly",
      name: "Monthly",
      price: { amount: "9.99", currency: "USD" },
      interval: "month",
      credits_per_period: "1000",
      tier_id: "gold",
    });
    assert.deepEqual([plan.price.amount, plan.credits_per_period], ["9.99", "1000"]);
    assert.equal((await client.plans.update("monthly", { name: "Monthly 2" })).name, "Monthly 2");
    assert.equal((await client.plans.get("monthly")).id, "monthly");
    assert.ok((await client.plans.list()).data.some((p) => p.id === "monthly"));

    const u = userId("sub");
    await client.createUser(u);
    const created = await client.subscriptions.create(u, { plan_id: "monthly", provider: "manual" });
    assert.equal(created.subscription.status, "active");
    // The plan's tier allocation (100) and the first period's credits (1000).
    assert.equal((await client.getUser(u)).balance.available, "1100");
    assert.equal((await client.subscriptions.list(u)).data.length, 1);
    assert.equal((await client.subscriptions.get(created.subscription.id)).plan_id, "monthly");
    const canceled = await client.subscriptions.cancel(created.subscription.id, { at_period_end: true });
    assert.equal(canceled.cancel_at_period_end, true);

    const spare = await client.tiers.create({ id: "spare", name: "Spare" });
    await client.tiers.delete(spare.id);
    await assert.rejects(client.tiers.get("spare"), NotFoundError);
    await client.plans.create({ id: "spare", name: "S", price: { amount: 1, currency: "EUR" }, interval: "year", credits_per_period: 1 });
    await client.plans.delete("spare");
    await assert.rejects(client.plans.get("spare"), NotFoundError);
  });

  it("payment providers, payments, paid grants, liability", async () => {
    const patched = await client.project.update({ settings: { credits_per_unit: { USD: "100.5" } } });
    assert.deepEqual(patched.settings.credits_per_unit, { USD: "100.5" });

    const rzp = await client.providers.putRazorpay({
      key_id: "rzp_test_sdkts0001",
      key_secret: "rzp-secret-0001",
      webhook_secret: "rzp-whsec-0001",
      webhook_secret_grace_seconds: 60,
    });
    assert.deepEqual([rzp.provider, rzp.key_id], ["razorpay", "rzp_test_sdkts0001"]);
    assert.notEqual(rzp.secret_key, "rzp-secret-0001", "secrets come back masked");
    const stripe = await client.providers.putStripe({ secret_key: "sk_test_sdkts0001", webhook_secret: "whsec_sdkts0001" });
    assert.equal(stripe.provider, "stripe");
    assert.deepEqual((await client.providers.list()).data.map((a) => a.provider).sort(), ["razorpay", "stripe"]);
    await client.providers.delete("stripe");
    assert.deepEqual((await client.providers.list()).data.map((a) => a.provider), ["razorpay"]);

    const u = userId("pay");
    await client.createUser(u);
    // Without a Stripe account the top-up is refused before any provider is called.
    await assert.rejects(
      client.payments.create({
        user_id: u, provider: "stripe", amount: "9.99", currency: "USD", credits: "1000",
        success_url: "https://example.com/paid",
      }),
      (err: unknown) => {
        assert.ok(err instanceof ConflictError);
        assert.equal(err.code, "provider_not_configured");
        return true;
      },
    );
    const page = await client.payments.list({ user_id: u, provider: "stripe", status: "created", limit: 10 });
    assert.deepEqual(page.data, []);
    await assert.rejects(client.payments.get("00000000-0000-4000-8000-000000000000"), NotFoundError);
    await client.providers.delete("razorpay");

    const grant = await client.users.grantCredits(u, { amount: "5.25", category: "paid" });
    assert.deepEqual(
      [grant.category, grant.payment_id, grant.cost_basis, grant.cost_currency],
      ["paid", null, null, null],
    );
    const liability = await client.analytics.liability();
    assert.equal(liability.paid_unpriced_credits, "5.25", "a hand-made paid grant has no price");
    assert.equal(typeof liability.promotional_credits, "string");
    assert.equal(typeof liability.debt, "string");
    assert.ok(liability.paid.every((p) => typeof p.credits === "string" && typeof p.value === "string"));
  });

  it("promos, spend caps, events, analytics", async () => {
    const promo = await client.promos.create({ code: "Welcome10", credits: "10.5", max_redemptions: 5 });
    assert.equal(promo.credits, "10.5");
    assert.equal((await client.promos.get("WELCOME10")).code.toLowerCase(), "welcome10");
    assert.equal((await client.promos.update("welcome10", { description: "hi" })).description, "hi");
    assert.ok((await client.promos.list()).data.length >= 1);
    const u = userId("promo");
    await client.createUser(u);
    assert.deepEqual(await client.promos.eligibility("welcome10", u), { eligible: true, reason: null });
    const claim = await client.promos.claim("welcome10", u);
    assert.deepEqual([claim.grant.amount, claim.balance], ["10.5", "10.5"]);
    await assert.rejects(client.promos.claim("welcome10", u), (err: unknown) => {
      assert.ok(err instanceof ConflictError);
      assert.equal(err.code, "already_claimed");
      return true;
    });
    assert.equal((await client.promos.redemptions("welcome10")).data[0]?.user_id, u);
    await client.promos.create({ code: "gone", credits: 1 });
    await client.promos.delete("gone");
    await assert.rejects(client.promos.get("gone"), NotFoundError);

    const cap = await client.spendCaps.put(u, "day", { limit: "5", action: "deny" });
    assert.deepEqual([cap.period, cap.limit, cap.action], ["day", "5", "deny"]);
    assert.equal((await client.spendCaps.list(u)).data.length, 1);
    const capped = await client.startUsageTransaction({ userId: u, model: "m", provisionalTokens: { outputTokens: 3000 } });
    assert.deepEqual([capped.continue, capped.reason], [false, "spend_cap_reached"]);
    await client.spendCaps.delete(u, "day");
    assert.equal((await client.spendCaps.list(u)).data.length, 0);

    const events = await client.events.list({ user_id: u, limit: 100 });
    const claimed = events.data.find((e) => e.type === "promo.claimed");
    assert.ok(claimed, "the claim left an event");
    assert.equal(claimed.data.amount, "10.5", "amounts inside event data are exact too");
    assert.equal((await client.events.get(claimed.id)).id, claimed.id);

    const spend = await client.analytics.spend({ group_by: "user", start: new Date(Date.now() - 86_400_000) });
    assert.equal(spend.group_by, "user");
    assert.ok(Array.isArray(spend.data));
    const summary = await client.analytics.summary();
    assert.equal(typeof summary.credits_consumed, "string");
    assert.equal((await client.health()).status, "ok");
  });
});

describe("typed errors", () => {
  it("a 404 is a NotFoundError carrying the problem fields", async () => {
    const err = await client.getTransaction("00000000-0000-0000-0000-000000000000").then(
      () => assert.fail("expected a 404"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof NotFoundError);
    assert.ok(err instanceof CreditdApiError);
    assert.equal(err.status, 404);
    assert.equal(err.code, "transaction_not_found");
    assert.equal(err.type, "/errors/transaction_not_found");
    assert.equal(typeof err.title, "string");
    assert.ok(err.title.length > 0);
    assert.ok(err.detail.length > 0);
    assert.equal(err.instance, "/v1/transactions/00000000-0000-0000-0000-000000000000");
    assert.match(err.request_id ?? "", /.+/);
    assert.equal(err.requestId, err.request_id);
  });

  it("a 422 is a ValidationError listing the fields", async () => {
    const err = await client.users.grantCredits(userId("v"), { amount: "0.0000001" }).then(
      () => assert.fail("expected a 422"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ValidationError);
    assert.equal(err.status, 422);
    assert.equal(err.code, "validation_error");
    assert.ok(err.errors?.some((e) => JSON.stringify(e.loc).includes("amount")));
  });

  it("401 UnauthorizedError for an unknown key, 403 ForbiddenError for a missing scope", async () => {
    const bad = new Creditd({ apiKey: "ck_nope", baseUrl: baseUrl(), spool: false });
    await assert.rejects(bad.getUsers(), (e: unknown) => e instanceof UnauthorizedError && e.status === 401);
    const reader = await client.apiKeys.create({ name: "r", scopes: ["read"] });
    const readOnly = new Creditd({ apiKey: reader.key, baseUrl: baseUrl(), spool: false });
    await assert.rejects(readOnly.createUser(userId("f")), (e: unknown) => e instanceof ForbiddenError && e.status === 403);
    const wrongProject = new Creditd({ apiKey, baseUrl: baseUrl(), projectId: "00000000-0000-0000-0000-000000000000", spool: false });
    await assert.rejects(wrongProject.getUsers(), ForbiddenError);
  });

  it("an unreachable server is a CreditdConnectionError after the retries", async () => {
    const port = await freePort();
    let retries = 0;
    const dead = new Creditd({
      apiKey,
      baseUrl: `http://127.0.0.1:${port}`,
      spool: false,
      maxRetries: 2,
      retryBaseDelayMs: 1,
      onRetry: () => (retries += 1),
    });
    await assert.rejects(dead.getUsers(), CreditdConnectionError);
    assert.equal(retries, 2);
  });
});

describe("amounts: number", () => {
  it("returns JS numbers when asked", async () => {
    const numeric = new Creditd({ apiKey, baseUrl: baseUrl(), amounts: "number", spool: false });
    const u = userId("num");
    await numeric.createUser(u);
    const grant = await numeric.users.grantCredits(u, { amount: 1.25 });
    const balance: number = grant.balance; // typed as number in this mode
    assert.equal(balance, 1.25);
    assert.equal((await numeric.getUser(u)).balance.available, 1.25);
  });
});

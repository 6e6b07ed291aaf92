/** captureUsage against a live creditd: success, model error, refusal, failed start. */

import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import { ConflictError, Creditd, ValidationError } from "@creditd/sdk";

import { counted, newClient, priceDefault, userId } from "./helpers.js";

let client: Creditd;

before(async () => {
  ({ client } = await newClient());
  await priceDefault(client); // 1 credit per 1k input tokens, 2 per 1k output tokens
});

/** A user holding `credits`. */
async function funded(credits: string): Promise<string> {
  const u = userId("cap");
  await client.createUser(u);
  await client.users.grantCredits(u, { amount: credits });
  return u;
}

async function kinds(u: string): Promise<[string, string][]> {
  const ledger = await client.users.ledger(u, { limit: 100 });
  return ledger.data.map((e) => [e.kind, e.amount]);
}

describe("captureUsage", () => {
  it("on success charges the real usage from an OpenAI-style result", async () => {
    const u = await funded("10");
    let calls = 0;
    const response = {
      choices: [{ message: { content: "hi" } }],
      usage: { prompt_tokens: 1300, completion_tokens: 400, prompt_tokens_details: { cached_tokens: 1000 } },
    };
    const out = await client.captureUsage(
      { userId: u, model: "gpt-4o", provisionalTokens: { inputTokens: 1000, outputTokens: 2000 } },
      async (txn) => {
        calls += 1;
        assert.equal(txn.hold_amount, "5", "the function runs once the hold is in place");
        return response;
      },
    );
    assert.equal(calls, 1);
    assert.equal(out.status, "executed_success");
    assert.equal(out.reason, null);
    assert.equal(out.result, response);
    assert.equal(out.spooled, false);
    // 300 uncached input + 1000 cached input (priced as input: no cached price) = 1.3, 400 output = 0.8.
    assert.equal(out.completion?.credits_used, "2.1");
    assert.equal(out.completion?.balance, "7.9");
    assert.equal(out.completion?.balance_adjustment, "2.9");
    const user = await client.getUser(u);
    assert.deepEqual(user.balance, { available: "7.9", held: "0", total: "7.9" });
    const txn = await client.getTransaction(out.transaction!.transaction_id);
    assert.equal(txn.status, "completed");
    assert.deepEqual(counted(txn.finalized_tokens), { input_tokens: 300, output_tokens: 400, cached_input_tokens: 1000 });
    assert.deepEqual(await kinds(u), [
      ["grant", "10"],
      ["hold", "0"],
      ["usage", "-2.1"],
    ]);
  });

  it("takes the finalized tokens from a token object, or from extractTokens", async () => {
    const u = await funded("10");
    const direct = await client.captureUsage(
      { user_id: u, model: "m", provisional_tokens: { input_tokens: 10, output_tokens: 10 } },
      () => ({ input_tokens: 2000, output_tokens: 0 }),
    );
    assert.equal(direct.completion?.credits_used, "2", "charged in full even above the hold");
    const extracted = await client.captureUsage(
      { userId: u, model: "m", provisionalTokens: { outputTokens: 1000 } },
      async () => ({ text: "ok", n: { a: 500, b: 500 } }),
      { extractTokens: (r) => ({ inputTokens: r.n.a, outputTokens: r.n.b }), completionMetadata: { via: "sdk" } },
    );
    assert.equal(extracted.status, "executed_success");
    assert.equal(extracted.completion?.credits_used, "1.5");
    const txn = await client.getTransaction(extracted.transaction!.transaction_id);
    assert.deepEqual(txn.metadata, { via: "sdk" });
    assert.equal((await client.getUser(u)).balance.available, "6.5");
  });

  it("on a model error releases the hold and charges nothing", async () => {
    const u = await funded("10");
    const boom = new Error("model unavailable");
    const out = await client.captureUsage(
      { userId: u, model: "gpt-4o", provisionalTokens: { inputTokens: 1000, outputTokens: 2000 } },
      async () => {
        throw boom;
      },
    );
    assert.equal(out.status, "executed_error");
    assert.equal(out.error, boom);
    assert.equal(out.result, undefined);
    assert.equal(out.completion?.status, "failed");
    assert.equal(out.completion?.credits_used, "0");
    assert.deepEqual((await client.getUser(u)).balance, { available: "10", held: "0", total: "10" });
    assert.equal((await client.getTransaction(out.transaction!.transaction_id)).status, "failed");
    assert.deepEqual(await kinds(u), [
      ["grant", "10"],
      ["hold", "0"],
      ["hold_release", "0"],
    ]);
  });

  it("on insufficient credits does not call the function", async () => {
    const u = await funded("1");
    let calls = 0;
    const out = await client.captureUsage(
      { userId: u, model: "gpt-4o", provisionalTokens: { inputTokens: 1000, outputTokens: 2000 } },
      () => {
        calls += 1;
        return "never";
      },
    );
    assert.equal(calls, 0);
    assert.equal(out.status, "insufficient_credits");
    assert.equal(out.reason, "insufficient_credits");
    assert.equal(out.transaction?.continue, false);
    assert.equal(out.transaction?.status, "denied");
    assert.equal(out.completion, undefined);
    assert.deepEqual((await client.getUser(u)).balance, { available: "1", held: "0", total: "1" });
    assert.deepEqual(await kinds(u), [["grant", "1"]]);
  });

  it("reports other refusals in `reason`, without calling the function", async () => {
    const u = await funded("100");
    await client.spendCaps.put(u, "day", { limit: "1", action: "deny" });
    let calls = 0;
    const out = await client.captureUsage({ userId: u, model: "m", provisionalTokens: { outputTokens: 1000 } }, () => {
      calls += 1;
    });
    assert.equal(calls, 0);
    assert.equal(out.status, "insufficient_credits");
    assert.equal(out.reason, "spend_cap_reached");
  });

  it("when the start fails, reports start_failed and does not call the function", async () => {
    let calls = 0;
    const out = await client.captureUsage({ userId: "has space", model: "m" }, () => {
      calls += 1;
    });
    assert.equal(calls, 0);
    assert.equal(out.status, "start_failed");
    assert.ok(out.error instanceof ValidationError);
    assert.equal(out.transaction, undefined);
  });

  it("reports a refused completion: execution_error_completion_failed / executed_success_completion_failed", async () => {
    const u = await funded("10");
    // The function settles the transaction itself, so the SDK's own completion is refused (409).
    const failed = await client.captureUsage({ userId: u, model: "m", provisionalTokens: { outputTokens: 500 } }, async (txn) => {
      await client.completeUsageTransaction(txn.transaction_id, { finalizedTokens: { outputTokens: 100 } });
      throw new Error("after completing");
    });
    assert.equal(failed.status, "execution_error_completion_failed");
    assert.ok(failed.completionError instanceof ConflictError);
    assert.equal(failed.completionError.code, "transaction_already_completed");

    const succeeded = await client.captureUsage({ userId: u, model: "m", provisionalTokens: { outputTokens: 500 } }, async (txn) => {
      await client.completeUsageTransaction(txn.transaction_id, { success: false });
      return { outputTokens: 100 };
    });
    assert.equal(succeeded.status, "executed_success_completion_failed");
    assert.ok(succeeded.completionError instanceof ConflictError);
    // Exactly one charge (0.2) from the two transactions.
    assert.equal((await client.getUser(u)).balance.available, "9.8");
  });
});

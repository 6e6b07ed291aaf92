/** Exact amounts both ways against a live creditd. */

import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import { Creditd } from "@creditd/sdk";

import { baseUrl, newClient, priceDefault, userId } from "./helpers.js";

let client: Creditd;
let apiKey: string;

before(async () => {
  ({ client, apiKey } = await newClient());
  await priceDefault(client);
});

describe("exact amounts", () => {
  it("a grant of 0.1 and one of 0.2 read back as 0.3", async () => {
    const u = userId("sum");
    await client.createUser(u);
    await client.users.grantCredits(u, { amount: 0.1 });
    const second = await client.users.grantCredits(u, { amount: 0.2 });
    assert.equal(second.balance, "0.3");
    assert.notEqual(0.1 + 0.2, 0.3, "what floats would have said");
    assert.deepEqual((await client.getUser(u)).balance, { available: "0.3", held: "0", total: "0.3" });
    const ledger = await client.users.ledger(u);
    assert.deepEqual(
      ledger.data.map((e) => e.balance_after),
      ["0.1", "0.3"],
    );
  });

  it("123456789012345.123456 stays exact in and out", async () => {
    const u = userId("big");
    await client.createUser(u);
    const exact = "123456789012345.123456";
    const grant = await client.users.grantCredits(u, { amount: exact });
    assert.equal(grant.amount, exact);
    assert.equal(grant.balance, exact);
    const debit = await client.users.debit(u, { amount: "0.000001" });
    assert.equal(debit.balance, "123456789012345.123455");
    assert.equal((await client.getUser(u)).balance.total, "123456789012345.123455");
    assert.equal((await client.users.grants(u)).data[0]?.remaining, "123456789012345.123455");

    // The same balance as a JS number is not that value: why strings are the default.
    const numeric = new Creditd({ apiKey, baseUrl: baseUrl(), amounts: "number", spool: false });
    const rounded = (await numeric.getUser(u)).balance.total;
    assert.equal(typeof rounded, "number");
    assert.notEqual(String(rounded), "123456789012345.123455");
  });

  it("prices and costs at 6 fractional digits are exact", async () => {
    await client.models.put("tiny", { input_price_per_1k: "0.000001", output_price_per_1k: "999999.999999" });
    const model = await client.models.get("tiny");
    assert.deepEqual([model.input_price_per_1k, model.output_price_per_1k], ["0.000001", "999999.999999"]);
    const u = userId("price");
    await client.createUser(u);
    await client.users.grantCredits(u, { amount: "1000000" });
    // 1000 output tokens at 999999.999999 per 1k, 1000 input at 0.000001 per 1k.
    const used = await client.usage.record({ user_id: u, model: "tiny", tokens: { input_tokens: 1000, output_tokens: 1000 } });
    assert.equal(used.credits_used, "1000000");
    assert.equal(used.balance, "0");
  });

  it("over-precise amount strings are refused by the server, not rounded by the client", async () => {
    const u = userId("precise");
    await client.createUser(u);
    await assert.rejects(client.users.grantCredits(u, { amount: "0.0000001" }), { status: 422 });
    assert.equal((await client.getUser(u)).balance.total, "0");
  });
});

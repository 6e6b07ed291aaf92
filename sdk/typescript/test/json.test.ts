/** The exact-amount JSON reader and writer, without a server. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { parseJson, stringifyJson } from "@creditd/sdk";

describe("parseJson", () => {
  it("keeps amounts as their exact decimal text", () => {
    const text = '{"amount": 123456789012345.123456, "balance": 0.3, "remaining": -2.2, "total": 100}';
    assert.deepEqual(parseJson(text), {
      amount: "123456789012345.123456",
      balance: "0.3",
      remaining: "-2.2",
      total: "100",
    });
    // What JSON.parse would have made of it: rounded.
    assert.notEqual(String((JSON.parse(text) as { amount: number }).amount), "123456789012345.123456");
  });

  it("leaves non-amount numbers as numbers", () => {
    const parsed = parseJson('{"id": 7, "ledger_entry_id": 12, "transactions": 3, "status": 402, "amount": 1.5}');
    assert.deepEqual(parsed, { id: 7, ledger_entry_id: 12, transactions: 3, status: 402, amount: "1.5" });
  });

  it("finds amounts in nested objects and arrays of amounts", () => {
    const parsed = parseJson(
      '{"data":[{"balance":{"available":94.5,"held":5.5,"total":100}}],' +
        '"settings":{"low_balance_thresholds":[10, 2.5]},"price":{"amount":9.99,"currency":"USD"},' +
        '"model_overrides":{"gpt-4o":{"input_price_per_1k":0.000001}}}',
    );
    assert.deepEqual(parsed, {
      data: [{ balance: { available: "94.5", held: "5.5", total: "100" } }],
      settings: { low_balance_thresholds: ["10", "2.5"] },
      price: { amount: "9.99", currency: "USD" },
      model_overrides: { "gpt-4o": { input_price_per_1k: "0.000001" } },
    });
  });

  it("reads every member of an amount map (credits_per_unit) as an amount", () => {
    const parsed = parseJson('{"settings":{"credits_per_unit":{"USD":100.5,"INR":0.000001}},"value":19.98}');
    assert.deepEqual(parsed, { settings: { credits_per_unit: { USD: "100.5", INR: "0.000001" } }, value: "19.98" });
    assert.equal(stringifyJson({ credits_per_unit: { USD: "100.50" } }), '{"credits_per_unit":{"USD":100.50}}');
  });

  it("never touches the caller's metadata or token counts", () => {
    const parsed = parseJson(
      '{"metadata":{"amount":5,"nested":{"balance":1.25}},"provisional_tokens":{"input_tokens":10},"amount":5}',
    );
    assert.deepEqual(parsed, {
      metadata: { amount: 5, nested: { balance: 1.25 } },
      provisional_tokens: { input_tokens: 10 },
      amount: "5",
    });
  });

  it("reads strings with escapes, literals and whitespace like JSON.parse", () => {
    const text = ' { "a" : "x\\"y\\\\z\\u00e9\\n" , "b" : [ true , false , null ] , "c" : { } , "d" : [ ] , "e": -1.5e3 } ';
    assert.deepEqual(parseJson(text), JSON.parse(text));
  });

  it("keeps a __proto__ member as data", () => {
    const parsed = parseJson('{"__proto__": {"amount": 1}}') as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(parsed), Object.prototype);
    assert.deepEqual(Object.keys(parsed), ["__proto__"]);
  });

  it("rejects malformed JSON", () => {
    for (const bad of ['{"a":1', '{"a" 1}', "[1,]", '"abc', "01", "{} x", "", '{"a":tru}']) {
      assert.throws(() => parseJson(bad), SyntaxError, bad);
    }
  });

  it("is plain JSON.parse in number mode", () => {
    assert.deepEqual(parseJson('{"amount": 0.5}', "number"), { amount: 0.5 });
  });
});

describe("stringifyJson", () => {
  it("writes decimal strings in amount positions as number literals, digit for digit", () => {
    assert.equal(
      stringifyJson({ amount: "123456789012345.123456", reason: "0.1" }),
      '{"amount":123456789012345.123456,"reason":"0.1"}',
    );
  });

  it("writes numbers as their shortest text and leaves malformed amounts as strings", () => {
    assert.equal(stringifyJson({ amount: 0.1 }), '{"amount":0.1}');
    assert.equal(stringifyJson({ amount: "1e5" }), '{"amount":"1e5"}');
    assert.equal(stringifyJson({ amount: " 1" }), '{"amount":" 1"}');
  });

  it("handles nested amounts, arrays, Dates and undefined like JSON.stringify", () => {
    const at = new Date("2030-01-02T03:04:05.000Z");
    assert.equal(
      stringifyJson({
        price: { amount: "9.99", currency: "USD" },
        settings: { low_balance_thresholds: ["10", 2.5] },
        expires_at: at,
        skipped: undefined,
        list: [1, undefined],
      }),
      '{"price":{"amount":9.99,"currency":"USD"},"settings":{"low_balance_thresholds":[10,2.5]},' +
        '"expires_at":"2030-01-02T03:04:05.000Z","list":[1,null]}',
    );
  });

  it("leaves metadata exactly as given", () => {
    assert.equal(stringifyJson({ metadata: { amount: "5" }, amount: "5" }), '{"metadata":{"amount":"5"},"amount":5}');
  });

  it("round-trips through parseJson", () => {
    const body = { amount: "0.000001", balance: { available: "-12.5", held: "0", total: "-12.5" }, metadata: { n: 1 } };
    assert.deepEqual(parseJson(stringifyJson(body)), body);
  });
});

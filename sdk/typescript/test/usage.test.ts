/** Reading token counts from model SDK results, without a server. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { toTokenUsage, tokensFromUsage } from "@creditd/sdk";

describe("tokensFromUsage", () => {
  it("reads OpenAI chat usage (prompt tokens include the cached ones)", () => {
    assert.deepEqual(
      tokensFromUsage({ prompt_tokens: 1200, completion_tokens: 300, prompt_tokens_details: { cached_tokens: 1000 } }),
      { input_tokens: 200, output_tokens: 300, cached_input_tokens: 1000 },
    );
  });

  it("reads OpenAI Responses usage (input tokens include the cached ones)", () => {
    assert.deepEqual(
      tokensFromUsage({ input_tokens: 500, output_tokens: 20, input_tokens_details: { cached_tokens: 100 } }),
      { input_tokens: 400, output_tokens: 20, cached_input_tokens: 100 },
    );
  });

  it("reads Anthropic usage (cache reads apart, cache writes as input)", () => {
    assert.deepEqual(
      tokensFromUsage({ input_tokens: 50, output_tokens: 10, cache_read_input_tokens: 700, cache_creation_input_tokens: 25 }),
      { input_tokens: 75, output_tokens: 10, cached_input_tokens: 700 },
    );
  });

  it("finds nothing in anything else", () => {
    assert.equal(tokensFromUsage(undefined), undefined);
    assert.equal(tokensFromUsage({ total: 3 }), undefined);
  });
});

describe("toTokenUsage", () => {
  it("sends camelCase or snake_case counts in the API's spelling", () => {
    assert.deepEqual(toTokenUsage({ inputTokens: 1, outputTokens: 2, cachedInputTokens: 3 }), {
      input_tokens: 1,
      output_tokens: 2,
      cached_input_tokens: 3,
    });
    assert.deepEqual(toTokenUsage({ output_tokens: 5 }), { output_tokens: 5 });
  });
});

/** Outbound webhook endpoints and redelivery against a live creditd. */

import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import { ConflictError, Creditd, NotFoundError, ValidationError } from "@creditd/sdk";

import { newClient, userId } from "./helpers.js";

// A reserved name (RFC 2606): it never resolves, so nothing is ever sent anywhere.
const HOOK_URL = "https://hooks.invalid/sdk-ts";

let client: Creditd;

before(async () => {
  ({ client } = await newClient());
});

describe("webhook endpoints", () => {
  it("create shows the secret once; get, list, update, rotateSecret, delete", async () => {
    const created = await client.webhookEndpoints.create({ url: HOOK_URL, events: ["credits.*"], metadata: { team: "core" } });
    assert.match(created.secret, /^whsec_[A-Za-z0-9+/=]+$/);
    assert.ok(Buffer.from(created.secret.slice("whsec_".length), "base64").length >= 24);
    assert.deepEqual([created.events, created.enabled, created.disabled_reason], [["credits.*"], true, null]);
    const got = await client.webhookEndpoints.get(created.id);
    assert.equal("secret" in got, false, "the secret is shown only on create and rotate");
    assert.ok((await client.webhookEndpoints.list({ limit: 100 })).data.some((e) => e.id === created.id));

    const updated = await client.webhookEndpoints.update(created.id, { description: "billing", metadata: { team: null } });
    assert.deepEqual([updated.description, updated.metadata], ["billing", {}]);
    const disabled = await client.webhookEndpoints.update(created.id, { enabled: false });
    assert.deepEqual([disabled.enabled, disabled.disabled_reason], [false, "manual"]);

    const rotated = await client.webhookEndpoints.rotateSecret(created.id, { grace_seconds: 60 });
    assert.notEqual(rotated.secret, created.secret);
    assert.ok(rotated.previous_secret_expires_at !== null);
    const retired = await client.webhookEndpoints.rotateSecret(created.id, { grace_seconds: 0 });
    assert.equal(retired.previous_secret_expires_at, null);

    await client.webhookEndpoints.delete(created.id);
    await assert.rejects(client.webhookEndpoints.get(created.id), (err: unknown) => {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, "webhook_endpoint_not_found");
      return true;
    });
  });

  it("test, deliveries and events.redeliver", async () => {
    const endpoint = await client.webhookEndpoints.create({ url: HOOK_URL });
    const test = await client.webhookEndpoints.test(endpoint.id);
    assert.deepEqual([test.type, test.delivery_status, test.data.endpoint_id], ["webhook.test", "pending", endpoint.id]);
    const attempts = await client.webhookEndpoints.deliveries(endpoint.id, { event_id: test.id, limit: 10 });
    // A dispatcher may have tried already; hooks.invalid never answers.
    assert.ok(attempts.data.every((a) => a.event_id === test.id && !a.succeeded));

    const u = userId("hook");
    await client.createUser(u);
    await client.users.grantCredits(u, { amount: "1.5" });
    const granted = (await client.events.list({ user_id: u, type: "credits.granted" })).data[0];
    assert.ok(granted);
    const again = await client.events.redeliver(granted.id);
    assert.deepEqual(again.deliveries.map((d) => [d.endpoint_id, d.status, d.attempts]), [[endpoint.id, "pending", 0]]);
    const only = await client.events.redeliver(granted.id, { endpoint_id: endpoint.id });
    assert.equal(only.deliveries.length, 1);
    assert.equal((await client.events.get(granted.id)).delivery_status, "pending");
    await client.webhookEndpoints.delete(endpoint.id);
  });

  it("refused URLs and disabled endpoints are typed errors with their codes", async () => {
    await assert.rejects(client.webhookEndpoints.create({ url: "http://hooks.invalid/x" }), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.equal(err.code, "invalid_webhook_url");
      return true;
    });
    await assert.rejects(client.webhookEndpoints.create({ url: HOOK_URL, events: ["nope.*"] }), ValidationError);
    const off = await client.webhookEndpoints.create({ url: HOOK_URL, enabled: false });
    await assert.rejects(client.webhookEndpoints.test(off.id), (err: unknown) => {
      assert.ok(err instanceof ConflictError);
      assert.equal(err.code, "webhook_endpoint_disabled");
      return true;
    });
    await client.webhookEndpoints.delete(off.id);
  });
});

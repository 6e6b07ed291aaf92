// Outbound webhooks through the generated client, received by a node `http` server on
// 127.0.0.1 and verified with the Standard Webhooks library (npm `standardwebhooks`).
//
// flow.ts registers an endpoint (`register`) before it writes any event, runs its flow, then
// `prove` checks what arrived against what the API reports:
//  - every event whose type the endpoint subscribes to arrived, and nothing else; each request
//    verifies with `new Webhook(secret).verify(body, headers)`, its `webhook-id` is the id that
//    `eventsList` reports, its body has the envelope of the generated event types (the spec's
//    `webhooks` section) and, read losslessly, the event's exact `data` from the API;
//    `sequence` orders the user's events;
//  - the receiver answers 500 to the first attempt of `transaction.started`: the retry has the
//    same `webhook-id` and bytes, and `webhookEndpointsListDeliveries` shows both attempts;
//  - `delivery_status` is `succeeded` for the delivered events, `not_sent` for the others;
//  - `webhookEndpointsTest` sends a `webhook.test`; after `webhookEndpointsRotateSecret` (no
//    body: the optional body is optional here) a request carries two signatures, the new
//    secret's first, each verifying with its own secret only;
//  - the deliveries list holds every request the receiver saw, with its status code.
// The server runs with a short retry schedule (run.sh). Every wait is bounded (WAIT_MS).

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { isLosslessNumber, parse } from 'lossless-json';
import { Webhook, WebhookVerificationError } from 'standardwebhooks';

import type { createClient } from '../build/ts/client/client/index.js';
import {
  eventsGet,
  eventsList,
  webhookEndpointsCreate,
  webhookEndpointsGet,
  webhookEndpointsListDeliveries,
  webhookEndpointsRotateSecret,
  webhookEndpointsTest,
} from '../build/ts/client/index.js';
import type {
  CreditsGrantedEvent,
  EventOut,
  PageEventOut,
  TransactionCompletedEvent,
  TransactionStartedEvent,
  WebhookAttemptOut,
  WebhookEndpointWithSecret,
  WebhookTestEvent,
} from '../build/ts/client/index.js';

import { expect, ok } from './checks.js';

type Client = ReturnType<typeof createClient>;

const WAIT_MS = 30_000;
const PATH = '/hooks/creditd';
const SUBSCRIBED = ['transaction.*', 'credits.granted', 'webhook.test'];
const FAIL_FIRST = 'transaction.started'; // its first attempt is answered 500
const RETRY_BODY = 'try again';
const ENVELOPE = ['created_at', 'data', 'id', 'sequence', 'timestamp', 'type', 'user_id'];

/** The webhooks this endpoint can receive, as the spec's `webhooks` section types them. */
type Outbound =
  | CreditsGrantedEvent
  | TransactionStartedEvent
  | TransactionCompletedEvent
  | WebhookTestEvent;

function subscribed(type: string): boolean {
  return SUBSCRIBED.some(
    (p) => type === p || (p.endsWith('.*') && type.startsWith(p.slice(0, -1))),
  );
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Wait until `condition` holds; a mismatch after WAIT_MS (`what` may say what it saw last). */
async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  what: string | (() => string),
): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) {
      expect(false, `waited ${WAIT_MS / 1000} s for ${typeof what === 'string' ? what : what()}`);
    }
    await sleep(100);
  }
}

// --- the receiver ------------------------------------------------------------------------------

export type Received = {
  path: string;
  headers: Record<string, string>; // lower-case names
  body: string;
  answered: number; // the status the receiver gave
  at: number; // Date.now() on arrival
};

/** The body's `type`, read unverified: only to decide the answer and to group. */
function typeOf(body: string): string {
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed !== null && typeof parsed === 'object' && 'type' in parsed) {
      return typeof parsed.type === 'string' ? parsed.type : '';
    }
  } catch {
    // not JSON
  }
  return '';
}

/** An HTTP server on 127.0.0.1 that records every request. It answers 200, except 500 to the
 *  first attempt of the FAIL_FIRST event. */
export class Receiver {
  url = '';
  readonly requests: Received[] = [];
  private readonly failed = new Set<string>();
  private readonly server = createServer((req, res) => this.handle(req, res));

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}${PATH}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections(); // the dispatcher keeps its connections alive
    await new Promise<void>((resolve, reject) =>
      this.server.close((error) => (error ? reject(error) : resolve())),
    );
  }

  of(eventId: string): Received[] {
    return this.requests.filter((r) => r.headers['webhook-id'] === eventId);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(req.headers)) {
        if (value !== undefined) {
          headers[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
        }
      }
      const id = headers['webhook-id'] ?? '';
      let answered = 200;
      if (typeOf(body) === FAIL_FIRST && !this.failed.has(id)) {
        this.failed.add(id);
        answered = 500;
      }
      this.requests.push({ path: req.url ?? '', headers, body, answered, at: Date.now() });
      res.writeHead(answered, { 'Content-Type': 'text/plain' });
      res.end(answered === 200 ? 'ok' : RETRY_BODY);
    });
  }
}

// --- checks -------------------------------------------------------------------------------------

function signatures(request: Received): string[] {
  return (request.headers['webhook-signature'] ?? '').split(' ');
}

/** `standardwebhooks` accepts the request (with only `signature`, if given). */
function verifies(secret: string, request: Received, signature?: string): boolean {
  const headers = { ...request.headers };
  if (signature !== undefined) {
    headers['webhook-signature'] = signature;
  }
  try {
    new Webhook(secret).verify(request.body, headers);
    return true;
  } catch (error) {
    if (error instanceof WebhookVerificationError) {
      return false;
    }
    throw error;
  }
}

/** A number's exact decimal text, written one way (no trailing fraction zeros). */
function decimal(digits: string): string {
  return digits.includes('.') && !/e/i.test(digits) ? digits.replace(/\.?0+$/, '') : digits;
}

/** A value parsed by lossless-json, written one way: keys sorted, numbers exact and
 *  normalized. Two JSON values are equal exactly when these are. */
function canonical(value: unknown): string {
  if (isLosslessNumber(value)) {
    return decimal(value.value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(canonical).join(',')}]`;
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The exact `data` of each event of an events page (its unparsed text), by event id. */
function exactData(pageText: string): Map<string, string> {
  const page = parse(pageText) as { data: { id: string; data: unknown }[] };
  return new Map(page.data.map((e) => [e.id, canonical(e.data)]));
}

/** One request carries `event` (`data`: its exact data from the API, canonical), signed with
 *  `secret`; the verified body has exactly the envelope of the generated event types. */
function checkRequest(request: Received, secret: string, event: EventOut, data: string): Outbound {
  const what = `${event.type} ${event.id}`;
  expect(request.path === PATH, `${what}: path ${request.path}`);
  expect(
    (request.headers['content-type'] ?? '').startsWith('application/json'),
    `${what}: content-type ${request.headers['content-type']}`,
  );
  expect(verifies(secret, request), `${what}: standardwebhooks refuses the signature`);
  const payload = new Webhook(secret).verify(request.body, request.headers) as Outbound;
  expect(request.headers['webhook-id'] === event.id, `${what}: webhook-id`);
  const stamp = request.headers['webhook-timestamp'] ?? '';
  expect(/^[0-9]+$/.test(stamp) && Math.abs(Number(stamp) * 1000 - request.at) < 60_000, stamp);
  expect(Object.keys(payload).sort().join() === ENVELOPE.join(), `${what}: envelope keys`);
  expect(payload.id === event.id && payload.type === event.type, `${what}: id, type`);
  expect(
    Date.parse(payload.timestamp) === Date.parse(event.created_at) &&
      payload.created_at === payload.timestamp,
    `${what}: timestamp ${payload.timestamp}, created_at ${event.created_at}`,
  );
  expect(payload.user_id === event.user_id, `${what}: user_id ${payload.user_id}`);
  // null only for events written before webhooks existed; every event here is newer.
  expect(
    typeof payload.sequence === 'number' && Number.isInteger(payload.sequence) && payload.sequence > 0,
    `${what}: sequence`,
  );
  const exactBody = parse(request.body) as { data: unknown };
  const sent = canonical(exactBody.data);
  expect(sent === data, `${what}: data ${sent} != ${data}`);
  return payload;
}

/** The event as `eventsGet` reports it, and its exact `data` (canonical). */
async function eventWithData(api: Client, eventId: string): Promise<[EventOut, string]> {
  const answer = await eventsGet({ client: api, path: { event_id: eventId }, parseAs: 'text' });
  const text: unknown = answer.data; // parseAs: 'text' returns the body unparsed
  expect(answer.response.status === 200 && typeof text === 'string', `event ${eventId}`);
  const event = JSON.parse(text) as EventOut;
  return [event, canonical((parse(text) as { data: unknown }).data)];
}

async function waitForStatus(api: Client, eventId: string, status: string): Promise<void> {
  let last = '';
  await waitUntil(async () => {
    const event = ok(await eventsGet({ client: api, path: { event_id: eventId } }), 200);
    last = event.delivery_status;
    return last === status;
  }, () => `delivery_status ${status} of ${eventId} (last: ${last})`);
}

async function attempts(
  api: Client,
  endpointId: string,
  eventId?: string,
): Promise<WebhookAttemptOut[]> {
  const page = ok(
    await webhookEndpointsListDeliveries({
      client: api,
      path: { endpoint_id: endpointId },
      query: { limit: 100, ...(eventId === undefined ? {} : { event_id: eventId }) },
    }),
    200,
  );
  expect(!page.has_more, 'one page of attempts');
  return page.data;
}

// --- the flow -----------------------------------------------------------------------------------

/** Register the receiver for SUBSCRIBED: the secret is shown once, here. */
export async function register(
  api: Client,
  receiver: Receiver,
): Promise<WebhookEndpointWithSecret> {
  const endpoint = ok(
    await webhookEndpointsCreate({
      client: api,
      body: { url: receiver.url, events: SUBSCRIBED, description: 'contract' },
    }),
    201,
  );
  expect(endpoint.url === receiver.url, 'endpoint url');
  expect(endpoint.events.join() === SUBSCRIBED.join(), `endpoint events ${endpoint.events}`);
  expect(endpoint.enabled && endpoint.disabled_reason === null, 'endpoint enabled');
  expect(endpoint.secret.startsWith('whsec_'), 'a Standard Webhooks secret');
  expect(endpoint.previous_secret_expires_at === null, 'one secret');
  const path = { endpoint_id: endpoint.id };
  const shown = ok(await webhookEndpointsGet({ client: api, path }), 200);
  expect(!('secret' in shown), 'the secret is shown only once');
  return endpoint;
}

/** `webhookEndpointsTest`: one `webhook.test` for this endpoint arrives, signed with its
 *  current secret; returns the request. */
async function sendTest(
  api: Client,
  receiver: Receiver,
  endpoint: WebhookEndpointWithSecret,
): Promise<Received> {
  const path = { endpoint_id: endpoint.id };
  const sent = ok(await webhookEndpointsTest({ client: api, path }), 202);
  expect(sent.type === 'webhook.test', `test event ${sent.type}`);
  await waitUntil(() => receiver.of(sent.id).length > 0, 'the webhook.test delivery');
  const requests = receiver.of(sent.id);
  const request = requests[0];
  expect(requests.length === 1 && request !== undefined, `webhook.test: ${requests.length} times`);
  const [event, data] = await eventWithData(api, sent.id);
  const payload = checkRequest(request, endpoint.secret, event, data);
  expect(payload.type === 'webhook.test', 'a WebhookTestEvent');
  expect(payload.data.endpoint_id === endpoint.id, 'webhook.test names the endpoint');
  await waitForStatus(api, sent.id, 'succeeded');
  return request;
}

/** Check every delivery of the flow's events; returns how many requests arrived. */
export async function prove(
  api: Client,
  receiver: Receiver,
  endpoint: WebhookEndpointWithSecret,
  userId: string,
  transactionId: string,
): Promise<number> {
  const page: PageEventOut = ok(await eventsList({ client: api, query: { limit: 100 } }), 200);
  expect(!page.has_more, 'one page of events');
  const listed = await eventsList({ client: api, query: { limit: 100 }, parseAs: 'text' });
  const listedText: unknown = listed.data;
  expect(typeof listedText === 'string', 'events as text');
  const dataOf = exactData(listedText);
  const wanted = page.data.filter((e) => subscribed(e.type));
  const others = page.data.filter((e) => !subscribed(e.type));
  const types = wanted.map((e) => e.type);
  expect(
    [...types].sort().join() ===
      'credits.granted,credits.granted,transaction.completed,transaction.started',
    `subscribed events written: ${types}`,
  );
  expect(
    others.some((e) => e.type === 'payment.succeeded'),
    `others: ${others.map((e) => e.type)}`,
  );

  // Every subscribed event arrives and is answered 200 (the retry of the failed one included).
  await waitUntil(() => {
    const delivered = new Set(
      receiver.requests.filter((r) => r.answered === 200).map((r) => r.headers['webhook-id']),
    );
    return wanted.every((e) => delivered.has(e.id));
  }, `deliveries of ${types}`);
  for (const event of wanted) {
    await waitForStatus(api, event.id, 'succeeded');
  }
  for (const event of others) {
    const [now] = await eventWithData(api, event.id);
    const status = now.delivery_status;
    expect(status === 'not_sent', `${event.type}: delivery_status ${status}`);
  }

  // Nothing else arrived: no unsubscribed type, no request for an event not listed.
  const wantedIds = new Set(wanted.map((e) => e.id));
  const strays = receiver.requests.filter((r) => !wantedIds.has(r.headers['webhook-id'] ?? ''));
  expect(
    strays.length === 0,
    `unsubscribed or unknown events arrived: ${strays.map((r) => typeOf(r.body))}`,
  );

  const sequences: number[] = [];
  for (const event of wanted) {
    const requests = receiver.of(event.id);
    const first = requests[0];
    expect(first !== undefined && signatures(first).length === 1, `${event.type}: one signature`);
    let payload: Outbound | undefined;
    for (const request of requests) {
      payload = checkRequest(request, endpoint.secret, event, dataOf.get(event.id) ?? '');
      expect(request.body === first.body, `${event.type}: the same bytes on every attempt`);
    }
    expect(payload !== undefined && payload.user_id === userId, `${event.type}: the flow's user`);
    // The generated types name each event's data: the API's transaction is in both.
    if (payload.type === 'transaction.started' || payload.type === 'transaction.completed') {
      expect(payload.data.transaction_id === transactionId, `${payload.type}: transaction_id`);
    }
    sequences.push(payload.sequence ?? 0);
  }
  expect(
    sequences.every((s, i) => i === 0 || s > (sequences[i - 1] ?? s)),
    `sequence orders the user's events ${sequences}`,
  );

  // The first attempt of transaction.started was answered 500: retried, same id.
  const started = wanted.find((e) => e.type === FAIL_FIRST);
  expect(started !== undefined, FAIL_FIRST);
  const tries = receiver.of(started.id).map((r) => r.answered);
  expect(tries.join() === '500,200', `retry: ${tries}`);
  let shown: WebhookAttemptOut[] = [];
  await waitUntil(async () => {
    shown = await attempts(api, endpoint.id, started.id);
    return shown.length === 2;
  }, `two attempts of ${started.id} in the deliveries list`);
  const [second, firstTry] = shown; // newest first
  expect(second !== undefined && firstTry !== undefined, 'two attempts');
  expect(second.delivery_id === firstTry.delivery_id, 'one delivery, two attempts');
  expect(
    firstTry.attempt === 1 && firstTry.status_code === 500 && !firstTry.succeeded,
    `attempt 1: ${JSON.stringify(firstTry)}`,
  );
  expect(firstTry.response_excerpt === RETRY_BODY, `excerpt ${firstTry.response_excerpt}`);
  expect(firstTry.next_attempt_at !== null, 'attempt 1 scheduled a retry');
  expect(
    second.attempt === 2 &&
      second.status_code === 200 &&
      second.succeeded &&
      second.next_attempt_at === null,
    `attempt 2: ${JSON.stringify(second)}`,
  );
  expect(shown.every((a) => a.event_id === started.id && a.event_type === FAIL_FIRST), 'event');

  // webhook.test goes to this endpoint only, signed with the one secret.
  const test = await sendTest(api, receiver, endpoint);
  expect(signatures(test).length === 1, 'before the rotation: one signature');

  // Rotation (the optional body left out): both secrets sign, the new one first.
  const old = endpoint.secret;
  const rotated = ok(
    await webhookEndpointsRotateSecret({ client: api, path: { endpoint_id: endpoint.id } }),
    200,
  );
  const fresh = rotated.secret;
  expect(fresh.startsWith('whsec_') && fresh !== old, 'a new secret');
  expect(rotated.previous_secret_expires_at !== null, 'the old secret still signs a while');
  const after = await sendTest(api, receiver, rotated);
  const both = signatures(after);
  expect(both.length === 2, `two signatures: ${both}`);
  const [sigNew, sigOld] = both as [string, string];
  expect(verifies(old, after), 'standardwebhooks verifies with the old secret');
  expect(verifies(fresh, after, sigNew) && !verifies(old, after, sigNew), '1st signature: new');
  expect(verifies(old, after, sigOld) && !verifies(fresh, after, sigOld), '2nd signature: old');

  // The deliveries list holds every request the receiver saw, with its status code.
  const received = [...receiver.requests];
  let everything: WebhookAttemptOut[] = [];
  await waitUntil(async () => {
    everything = await attempts(api, endpoint.id);
    return everything.length === received.length;
  }, () => `${received.length} attempts in the deliveries list (${everything.length} there)`);
  const fromApi = everything.map((a) => `${a.event_id} ${a.status_code}`).sort();
  const seen = received.map((r) => `${r.headers['webhook-id']} ${r.answered}`).sort();
  expect(fromApi.join('\n') === seen.join('\n'), 'the deliveries list matches the receiver');
  // Newest first by id (uuid7, minted when the attempt is recorded; created_at is its start).
  const ids = everything.map((a) => a.id);
  expect(ids.every((id, i) => i === 0 || id < (ids[i - 1] ?? '')), 'deliveries: newest first');
  return received.length;
}

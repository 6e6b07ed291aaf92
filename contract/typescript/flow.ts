// The contract flow through the client that @hey-api/openapi-ts generates, untouched.
//
// Run by contract/run.sh against a live server (CREDITD_URL, CREDITD_ADMIN_TOKEN) whose Stripe is
// the test fake of tests/fakes/stripe_server.py (CONTRACT_STRIPE_URL, CONTRACT_STRIPE_SECRET_KEY,
// CONTRACT_STRIPE_WEBHOOK_SECRET). It imports only the generated client (build/ts/client) and
// lossless-json, is checked with `tsc --strict --noEmit`, and exits non-zero on the first
// mismatch.
//
// Keeping amounts exact in JavaScript. The server writes amounts as exact JSON numbers
// (`type: number, format: decimal`); JSON.parse turns them into binary floats, so the generated
// types say `number` and a value such as 123456789012345.123456 would lose digits. Two things
// keep them exact here:
//  - inputs: every amount field accepts `number | string` (the spec's anyOf), so amounts are
//    sent as decimal strings ("10.5") and never pass through a float;
//  - outputs: the generated client's `parseAs: 'text'` option returns the body unparsed, and
//    lossless-json's `parse(text, null, (digits) => digits)` reads it with every number kept as
//    its exact text (a string to hand to a decimal library, or to compare, as below). The
//    `Exact<T>` type below is the generated type with those numbers as strings. (A
//    `responseTransformer` cannot do this: it runs after JSON.parse has already rounded.)
// The typed `number` fields are checked too: for the amounts used here (at most 15
// significant digits) the float is the nearest double of the exact text, i.e. `Number(text)`.

import { createClient } from '../build/ts/client/client/index.js';
import {
  adminProjectsCreate,
  analyticsLiability,
  creditsGrant,
  creditsListLedger,
  modelsPut,
  paymentsCreate,
  paymentsGet,
  paymentsList,
  providersList,
  providersPutStripe,
  transactionsComplete,
  transactionsStart,
  usersCreate,
  usersGet,
} from '../build/ts/client/index.js';
import type {
  LiabilityOut,
  PageLedgerEntryOut,
  PaymentOut,
  PaymentsCreateError,
  StartIn,
  UserOut,
  UsersGetError,
  WebhookReceived,
  WebhooksStripeErrors,
  WebhooksStripeResponses,
} from '../build/ts/client/index.js';

import { Mismatch, exact, expect, ok } from './checks.js';
import * as outbound from './outbound.js';
import * as teams from './teams.js';

/** The exact text is `wanted`, and the generated `number` field holds its nearest float. */
function sameAmount(typed: number, text: string, wanted: string): boolean {
  return text === wanted && typed === Number(wanted);
}

/** The flow; returns how many webhook requests the receiver checked. */
async function run(baseUrl: string, adminToken: string): Promise<number> {
  // The security schemes (OperatorToken; ApiKeyBearer or ApiKeyHeader) make the generated
  // client send whatever its `auth` option returns: no header is set by hand.
  const operator = createClient({ baseUrl, auth: adminToken });
  const project = ok(
    await adminProjectsCreate({ client: operator, body: { name: 'contract-typescript' } }),
    201,
  );
  expect(project.api_key.scopes.join() === 'admin', 'admin key scopes');

  const api = createClient({ baseUrl, auth: project.api_key.key });

  // Without the auth option the same call is refused: the key above is what authenticated it.
  const anonymous = createClient({ baseUrl });
  const refused = await usersGet({ client: anonymous, path: { user_id: 'anyone' } });
  expect(refused.response.status === 401, `no auth: ${refused.response.status}`);
  expect(refused.error?.code === 'invalid_api_key', `no auth: ${refused.error?.code}`);

  // Registered before any event is written: an endpoint gets the events written after it.
  const receiver = new outbound.Receiver();
  await receiver.start();
  try {
    const endpoint = await outbound.register(api, receiver);
    const moved = await moveCredits(api, project.id);
    await payWithStripe(api, baseUrl, project.id, moved.userId);
    return await outbound.prove(api, receiver, endpoint, moved.userId, moved.id);
  } finally {
    await receiver.stop();
  }
}

/** Price a model, create a user, grant, start and complete a transaction, read it all back;
 *  returns the user and the transaction. */
async function moveCredits(
  api: Client,
  projectId: string,
): Promise<{ userId: string; id: string }> {
  const model = ok(
    await modelsPut({
      client: api,
      path: { model_id: 'gpt-4o' },
      body: { input_price_per_1k: '0.123456', output_price_per_1k: '0.654321' },
      headers: { 'X-Project-Id': projectId },
    }),
    200,
  );
  expect(model.id === 'gpt-4o', 'model id');

  const userId = `u_${crypto.randomUUID()}`;
  const user = ok(await usersCreate({ client: api, body: { id: userId } }), 201);
  expect(user.id === userId, 'user id');

  const grant = ok(
    await creditsGrant({
      client: api,
      path: { user_id: userId },
      body: { amount: '10.5', reason: 'contract' },
    }),
    201,
  );
  expect(grant.amount === 10.5 && grant.balance === 10.5, `grant ${grant.amount}`);

  // 1000 x 0.123456/1k + 2000 x 0.654321/1k = 0.123456 + 1.308642 = 1.432098
  const startBody: StartIn = {
    user_id: userId,
    model: 'gpt-4o',
    provisional_tokens: { input_tokens: 1000, output_tokens: 2000 },
  };
  const key = `contract-${crypto.randomUUID()}`;
  // The key is this call's own header parameter; the shared client is not changed.
  const first = await transactionsStart({
    client: api,
    body: startBody,
    headers: { 'Idempotency-Key': key },
  });
  const started = ok(first, 201);
  expect(started.continue && started.status === 'pending', 'admitted');
  expect(started.hold_amount === Number('1.432098'), `hold ${started.hold_amount}`);
  expect(first.response.headers.get('Idempotent-Replayed') === null, 'first start is no replay');

  const again = await transactionsStart({
    client: api,
    body: startBody,
    headers: { 'Idempotency-Key': key },
  });
  const replayed = ok(again, 201);
  expect(replayed.transaction_id === started.transaction_id, 'replay: same transaction');
  expect(again.response.headers.get('Idempotent-Replayed') === 'true', 'replay header');

  // 800 x 0.123456/1k + 1200 x 0.654321/1k = 0.0987648 + 0.7851852 = 0.88395
  const completed = ok(
    await transactionsComplete({
      client: api,
      path: { transaction_id: started.transaction_id },
      body: { success: true, finalized_tokens: { input_tokens: 800, output_tokens: 1200 } },
    }),
    200,
  );
  expect(completed.status === 'completed', 'completed');
  expect(completed.credits_used === Number('0.88395'), `charge ${completed.credits_used}`);

  const typedUser = ok(await usersGet({ client: api, path: { user_id: userId } }), 200);
  const exactUser = exact<UserOut>(
    await usersGet({ client: api, path: { user_id: userId }, parseAs: 'text' }),
    200,
  );
  for (const [name, wanted] of [
    ['available', '9.61605'],
    ['held', '0'],
    ['total', '9.61605'],
  ] as const) {
    expect(
      sameAmount(typedUser.balance[name], exactUser.balance[name], wanted),
      `balance.${name}: ${exactUser.balance[name]}`,
    );
  }

  const typedLedger = ok(await creditsListLedger({ client: api, path: { user_id: userId } }), 200);
  const exactLedger = exact<PageLedgerEntryOut>(
    await creditsListLedger({ client: api, path: { user_id: userId }, parseAs: 'text' }),
    200,
  );
  const rows = exactLedger.data.map((e) =>
    [e.kind, e.amount, e.held_amount, e.balance_after, e.total_after].join(' '),
  );
  const wantedRows = [
    'grant 10.5 0 10.5 10.5',
    'hold 0 1.432098 9.067902 10.5',
    'usage -0.88395 -1.432098 9.61605 9.61605',
  ];
  expect(rows.join('\n') === wantedRows.join('\n'), `ledger:\n${rows.join('\n')}`);
  expect(
    typedLedger.data.every((e, i) => {
      const text = exactLedger.data[i];
      return text !== undefined && sameAmount(e.amount, text.amount, text.amount);
    }),
    'typed ledger amounts',
  );
  expect(typedLedger.data[2]?.transaction_id === started.transaction_id, 'usage transaction');

  const missing = await usersGet({
    client: api,
    path: { user_id: `nobody-${crypto.randomUUID()}` },
  });
  const problem: UsersGetError | undefined = missing.error;
  expect(missing.response.status === 404 && problem !== undefined, 'unknown user: 404');
  expect(problem.code === 'user_not_found', `problem code ${problem.code}`);
  expect(problem.status === 404, 'problem status');
  return { userId, id: started.transaction_id };
}

type Client = ReturnType<typeof createClient>;

function env(name: string): string {
  const value = process.env[name];
  expect(value !== undefined && value !== '', `set ${name}`);
  return value;
}

/** Configure Stripe, top up 10.00 USD for 100 credits, pay it at the fake Stripe and deliver
 *  the signed webhook: the payment succeeds once and the user's balance grows by 100. */
async function payWithStripe(
  api: Client,
  baseUrl: string,
  projectId: string,
  userId: string,
): Promise<void> {
  const secretKey = env('CONTRACT_STRIPE_SECRET_KEY');
  const webhookSecret = env('CONTRACT_STRIPE_WEBHOOK_SECRET');
  const account = ok(
    await providersPutStripe({
      client: api,
      body: { secret_key: secretKey, webhook_secret: webhookSecret },
    }),
    200,
  );
  expect(account.provider === 'stripe' && account.key_id === null, 'stripe account');
  for (const [name, shown, real] of [
    ['secret_key', account.secret_key, secretKey],
    ['webhook_secret', account.webhook_secret, webhookSecret],
  ] as const) {
    expect(shown !== real && shown.endsWith(real.slice(-4)), `${name} masked: ${shown}`);
  }
  expect(!account.livemode, 'test keys are not live');
  const accounts = ok(await providersList({ client: api }), 200);
  expect(accounts.data.map((a) => a.provider).join() === 'stripe', 'one provider account');
  expect(accounts.data[0]?.secret_key === account.secret_key, 'listed account is masked');

  const notConfigured = await paymentsCreate({
    client: api,
    body: { user_id: userId, provider: 'razorpay', amount: '10', currency: 'inr', credits: '100' },
  });
  const refusal: PaymentsCreateError | undefined = notConfigured.error;
  expect(notConfigured.response.status === 409 && refusal !== undefined, 'razorpay: 409');
  expect(refusal.code === 'provider_not_configured', `razorpay: ${refusal.code}`);

  const createBody = {
    user_id: userId,
    provider: 'stripe',
    amount: '10.00',
    currency: 'usd',
    credits: '100',
    success_url: 'https://example.com/paid',
  } as const;
  const idempotencyKey = `contract-pay-${crypto.randomUUID()}`;
  const payment = ok(
    await paymentsCreate({
      client: api,
      body: createBody,
      headers: { 'Idempotency-Key': idempotencyKey },
    }),
    201,
  );
  // The same key again replays the stored answer: the exact text of the one payment.
  const exactPayment = exact<PaymentOut>(
    await paymentsCreate({
      client: api,
      body: createBody,
      headers: { 'Idempotency-Key': idempotencyKey },
      parseAs: 'text',
    }),
    201,
  );
  expect(exactPayment.id === payment.id, 'replay: same payment');
  expect(payment.status === 'created', `payment status ${payment.status}`);
  expect(payment.kind === 'top_up' && payment.provider === 'stripe', 'top-up');
  expect(typeof payment.checkout_url === 'string' && payment.checkout_url !== '', 'checkout_url');
  // Sent as "10.00"; amounts are written normalized, without trailing zeros.
  expect(sameAmount(payment.amount, exactPayment.amount, '10'), `amount ${exactPayment.amount}`);
  expect(sameAmount(payment.credits, exactPayment.credits, '100'), 'credits');
  expect(payment.currency === 'USD' && payment.amount_minor === 1000, 'currency, minor units');
  expect(sameAmount(payment.credits_granted, exactPayment.credits_granted, '0'), 'nothing yet');
  const sessionId = payment.provider_reference;
  expect(typeof sessionId === 'string' && sessionId.startsWith('cs_'), `session ${sessionId}`);

  const page = ok(await paymentsList({ client: api, query: { user_id: userId } }), 200);
  expect(page.data.map((p) => p.id).join() === payment.id && !page.has_more, 'payments page');

  // The fake's control path (it exists only in the test fake) pays the checkout and returns
  // the checkout.session.completed delivery exactly as Stripe would send it.
  const control = await fetch(`${env('CONTRACT_STRIPE_URL')}/_test/pay/${sessionId}`, {
    method: 'POST',
  });
  const controlText = await control.text();
  expect(control.status === 200, `fake Stripe: ${control.status} ${controlText}`);
  const delivery = JSON.parse(controlText) as { body: string; signature: string };
  // The spec cannot describe the webhook's body (only the exact bytes verify), so the generated
  // webhooksStripe takes none (`body?: never`): the raw text goes through the generated client's
  // own request method, with its serializer off, and the answer keeps the generated types.
  const stripeSide = createClient({ baseUrl });
  const received = await stripeSide.post<WebhooksStripeResponses, WebhooksStripeErrors, false>({
    url: '/v1/webhooks/stripe/{project_id}',
    path: { project_id: projectId },
    body: delivery.body,
    bodySerializer: null,
    headers: {
      'Stripe-Signature': delivery.signature,
      'Content-Type': 'application/json; charset=utf-8',
    },
  });
  const outcome: WebhookReceived = ok(received, 200);
  expect(!outcome.duplicate && outcome.outcome === 'applied', `webhook ${JSON.stringify(outcome)}`);

  const succeeded = ok(await paymentsGet({ client: api, path: { payment_id: payment.id } }), 200);
  const exactSucceeded = exact<PaymentOut>(
    await paymentsGet({ client: api, path: { payment_id: payment.id }, parseAs: 'text' }),
    200,
  );
  expect(succeeded.status === 'succeeded', `paid status ${succeeded.status}`);
  expect(
    sameAmount(succeeded.credits_granted, exactSucceeded.credits_granted, '100'),
    `credits_granted ${exactSucceeded.credits_granted}`,
  );
  expect(succeeded.provider_payment_id !== null, 'payment intent recorded');

  const exactUser = exact<UserOut>(
    await usersGet({ client: api, path: { user_id: userId }, parseAs: 'text' }),
    200,
  );
  // 9.61605 left from the usage above + the 100 paid credits
  expect(exactUser.balance.available === '109.61605', `+100: ${exactUser.balance.available}`);

  const owed = ok(await analyticsLiability({ client: api }), 200);
  const exactOwed = exact<LiabilityOut>(
    await analyticsLiability({ client: api, parseAs: 'text' }),
    200,
  );
  expect(owed.paid.map((p) => p.currency).join() === 'USD', 'paid currencies');
  const usd = exactOwed.paid[0];
  expect(usd !== undefined && Number(usd.credits) === 100, `paid credits ${usd?.credits}`);
  expect(Number(usd.value) === 10 && owed.paid[0]?.value === 10, `deferred revenue ${usd.value}`);
}

async function main(): Promise<number> {
  const baseUrl = process.env.CREDITD_URL;
  const adminToken = process.env.CREDITD_ADMIN_TOKEN;
  if (!baseUrl || !adminToken) {
    console.error('set CREDITD_URL and CREDITD_ADMIN_TOKEN');
    return 2;
  }
  let requests: number;
  let lines: number;
  try {
    requests = await run(baseUrl, adminToken);
    lines = await teams.run(baseUrl, adminToken);
  } catch (error) {
    if (error instanceof Mismatch) {
      console.error(`typescript contract flow: MISMATCH: ${error.message}`);
      return 1;
    }
    throw error;
  }
  console.log(
    'typescript contract flow: ok (generated @hey-api client, auth option, exact amounts,' +
      ` typed 404, Stripe top-up, ${requests} outbound webhook requests verified with` +
      ` standardwebhooks; teams, expression prices, jobs, evaluate, ${lines} ledger export` +
      ' lines chained)',
  );
  return 0;
}

process.exitCode = await main();

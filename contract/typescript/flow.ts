// The contract flow through the client that @hey-api/openapi-ts generates, untouched.
//
// Run by contract/run.sh against a live server (CREDITD_URL, CREDITD_ADMIN_TOKEN). It imports
// only the generated client (build/ts/client) and lossless-json, is checked with
// `tsc --strict --noEmit`, and exits non-zero on the first mismatch.
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

import { parse } from 'lossless-json';

import { createClient } from '../build/ts/client/client/index.js';
import {
  adminProjectsCreate,
  creditsGrant,
  creditsListLedger,
  modelsPut,
  transactionsComplete,
  transactionsStart,
  usersCreate,
  usersGet,
} from '../build/ts/client/index.js';
import type {
  PageLedgerEntryOut,
  StartIn,
  UserOut,
  UsersGetError,
} from '../build/ts/client/index.js';

class Mismatch extends Error {}

function expect(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Mismatch(what);
  }
}

/** The body of a successful call; anything else is a mismatch (with the problem it got). */
function ok<T>(result: { data?: T; error?: unknown; response: Response }, status: number): T {
  expect(
    result.response.status === status && result.data !== undefined,
    `expected ${status}, got ${result.response.status}: ${JSON.stringify(result.error)}`,
  );
  return result.data;
}

/** A generated type with every number read as its exact decimal text. */
type Exact<T> = T extends number
  ? string
  : T extends (infer U)[]
    ? Exact<U>[]
    : T extends object
      ? { [K in keyof T]: Exact<T[K]> }
      : T;

/** The unparsed body of a call made with `parseAs: 'text'`, read losslessly. */
function exact<T>(result: { data?: T; response: Response }, status: number): Exact<T> {
  const raw: unknown = result.data;
  expect(result.response.status === status, `expected ${status}, got ${result.response.status}`);
  expect(typeof raw === 'string', 'parseAs: text returns the body unparsed');
  return parse(raw, null, (digits: string) => digits) as Exact<T>;
}

/** The exact text is `wanted`, and the generated `number` field holds its nearest float. */
function sameAmount(typed: number, text: string, wanted: string): boolean {
  return text === wanted && typed === Number(wanted);
}

async function run(baseUrl: string, adminToken: string): Promise<void> {
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

  const model = ok(
    await modelsPut({
      client: api,
      path: { model_id: 'gpt-4o' },
      body: { input_price_per_1k: '0.123456', output_price_per_1k: '0.654321' },
      headers: { 'X-Project-Id': project.id },
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
}

async function main(): Promise<number> {
  const baseUrl = process.env.CREDITD_URL;
  const adminToken = process.env.CREDITD_ADMIN_TOKEN;
  if (!baseUrl || !adminToken) {
    console.error('set CREDITD_URL and CREDITD_ADMIN_TOKEN');
    return 2;
  }
  try {
    await run(baseUrl, adminToken);
  } catch (error) {
    if (error instanceof Mismatch) {
      console.error(`typescript contract flow: MISMATCH: ${error.message}`);
      return 1;
    }
    throw error;
  }
  console.log('typescript contract flow: ok (generated @hey-api client, auth option, exact amounts, typed 404)');
  return 0;
}

process.exitCode = await main();

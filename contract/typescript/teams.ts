// Teams, expression prices, jobs, the price preview and the ledger export (issue 11) through the
// generated client, in a project of their own (outbound.ts counts every event of the first
// project, so nothing here writes into it):
//  - a model priced by an expression; three users; a team; two members, one with a day spend cap
//    of 5; 100 team credits;
//  - a member starts and completes with `team_id`: the team pays, its ledger names the member,
//    the member's own account is untouched; the capped member's next start is refused
//    (`spend_cap_reached`, also by `usageCheck`); a non-member gets 403 `not_a_team_member`;
//  - `pricingEvaluate` previews a usage (an expression breakdown) and a one-shot `usageRecord`
//    with `team_id` charges exactly that, digit for digit;
//  - a job put and charged with `quantity` 3;
//  - `ledgerExport`: the spec publishes the JSON lines as bytes (`format: binary`, the line
//    schema as `contentSchema`), so the generated type is `Blob | File`, which is what the fetch
//    client returns for application/x-ndjson. The flow reads that Blob, and streams the same
//    export (`parseAs: 'stream'`, the Response's body read chunk by chunk); every line's SHA-256
//    chain is verified as the README defines it, the entries are read with the generated line
//    types (and losslessly) and compared with the team's ledger, the trailer is checked, and
//    resuming after the trailer chains on with no entry.

import { createHash } from 'node:crypto';

import { createClient } from '../build/ts/client/client/index.js';
import {
  adminProjectsCreate,
  jobsGet,
  jobsPut,
  ledgerExport,
  modelsPut,
  pricingEvaluate,
  teamsCreate,
  teamsGet,
  teamsGrantCredits,
  teamsListLedger,
  teamsListMembers,
  teamsPutMember,
  transactionsComplete,
  transactionsStart,
  usageCheck,
  usageRecord,
  usersCreate,
  usersGet,
} from '../build/ts/client/index.js';
import type {
  CompleteOut,
  EvaluateOut,
  GrantCreated,
  LedgerExportEnd,
  LedgerExportEntry,
  MemberOut,
  PageLedgerEntryOut,
  StartOut,
  TeamOut,
  TokenUsage,
  UsageOut,
  UserOut,
} from '../build/ts/client/index.js';

import { type Exact, exact, exactText, expect, ok } from './checks.js';

type Client = ReturnType<typeof createClient>;
type Line = LedgerExportEntry | LedgerExportEnd;

const EXPRESSION =
  'input_tokens * 0.01 + output_tokens * 0.03 + search_queries * 0.5 - cache_read_tokens * 0.0045';
const GENESIS = '0'.repeat(64);
const WAIT_MS = 30_000;

/** The flow, in a project of its own; returns how many export lines it verified. */
export async function run(baseUrl: string, adminToken: string): Promise<number> {
  const operator = createClient({ baseUrl, auth: adminToken });
  const project = ok(
    await adminProjectsCreate({ client: operator, body: { name: 'contract-typescript-teams' } }),
    201,
  );
  const api = createClient({ baseUrl, auth: project.api_key.key });
  const model = ok(
    await modelsPut({ client: api, path: { model_id: 'metered' }, body: { expression: EXPRESSION } }),
    200,
  );
  expect(model.expression === EXPRESSION, `expression ${model.expression}`);
  expect(model.input_price_per_1k === null && model.output_price_per_1k === null, 'no per-1K');

  const suffix = crypto.randomUUID().slice(0, 12);
  const [alice, bob, carol] = ['alice', 'bob', 'carol'].map((name) => `${name}_${suffix}`) as [
    string,
    string,
    string,
  ];
  for (const id of [alice, bob, carol]) {
    ok(await usersCreate({ client: api, body: { id } }), 201);
  }

  const teamId = `t_${suffix}`;
  const team = ok(await teamsCreate({ client: api, body: { id: teamId, name: 'Research' } }), 201);
  expect(team.id === teamId && team.name === 'Research' && team.balance.total === 0, 'team');
  const again = await teamsCreate({ client: api, body: { id: teamId } });
  expect(again.response.status === 409 && again.error?.code === 'team_exists', 'team_exists');

  const owner = ok(
    await teamsPutMember({
      client: api,
      path: { team_id: teamId, user_id: alice },
      body: { role: 'owner' },
    }),
    200,
  );
  expect(owner.role === 'owner' && owner.spend_caps.length === 0, 'owner without caps');
  const capped = exact<MemberOut>(
    await teamsPutMember({
      client: api,
      path: { team_id: teamId, user_id: bob },
      body: { spend_caps: [{ period: 'day', limit: '5' }] },
      parseAs: 'text',
    }),
    200,
  );
  expect(capped.role === 'member', 'default role: member');
  expect(JSON.stringify(capped.spend_caps) === '[{"period":"day","limit":"5"}]', 'bob: day cap 5');
  const members = ok(await teamsListMembers({ client: api, path: { team_id: teamId } }), 200);
  expect(members.data.map((m) => m.user_id).sort().join() === [alice, bob].sort().join(), 'two');

  const grant = exact<GrantCreated>(
    await teamsGrantCredits({
      client: api,
      path: { team_id: teamId },
      body: { amount: '100', reason: 'contract team' },
      parseAs: 'text',
    }),
    201,
  );
  expect(grant.balance === '100', `team grant ${grant.balance}`);

  // bob (day cap 5) holds 100 x 0.01 + 100 x 0.03 = 4 on the team ...
  const wanted: TokenUsage = { input_tokens: 100, output_tokens: 100 };
  const started = exact<StartOut>(
    await transactionsStart({
      client: api,
      body: { user_id: bob, model: 'metered', team_id: teamId, provisional_tokens: wanted },
      parseAs: 'text',
    }),
    201,
  );
  expect(started.continue && started.hold_amount === '4', `hold ${started.hold_amount}`);
  // ... and is charged 50 x 0.01 + 50 x 0.03 + 1 x 0.5 = 2.5
  const completed = exact<CompleteOut>(
    await transactionsComplete({
      client: api,
      path: { transaction_id: started.transaction_id },
      body: {
        success: true,
        finalized_tokens: { input_tokens: 50, output_tokens: 50, search_queries: 1 },
      },
      parseAs: 'text',
    }),
    200,
  );
  expect(completed.credits_used === '2.5' && completed.balance === '97.5', 'charged 2.5');

  // 2.5 charged today + a hold of 4 > bob's cap of 5
  const check = ok(
    await usageCheck({
      client: api,
      body: { user_id: bob, model: 'metered', team_id: teamId, provisional_tokens: wanted },
    }),
    200,
  );
  expect(!check.allowed && check.reason === 'spend_cap_reached', `check ${check.reason}`);
  const denied = ok(
    await transactionsStart({
      client: api,
      body: { user_id: bob, model: 'metered', team_id: teamId, provisional_tokens: wanted },
    }),
    201,
  );
  expect(!denied.continue && denied.reason === 'spend_cap_reached', 'the cap refuses a start');
  const free = ok(
    await usageCheck({
      client: api,
      body: { user_id: alice, model: 'metered', team_id: teamId, provisional_tokens: wanted },
    }),
    200,
  );
  expect(free.allowed, 'alice has no cap');

  const outsiders = [
    await transactionsStart({
      client: api,
      body: { user_id: carol, model: 'metered', team_id: teamId, provisional_tokens: wanted },
    }),
    await usageRecord({
      client: api,
      body: { user_id: carol, model: 'metered', team_id: teamId, tokens: wanted },
    }),
  ];
  for (const outsider of outsiders) {
    expect(outsider.response.status === 403, `non-member: ${outsider.response.status}`);
    expect(outsider.error?.code === 'not_a_team_member', `non-member: ${outsider.error?.code}`);
  }

  // The preview, then a one-shot usage that charges exactly it:
  // 1234 x 0.01 + 567 x 0.03 + 3 x 0.5 - 100 x 0.0045 = 12.34 + 17.01 + 1.5 - 0.45 = 30.4
  const tokens: TokenUsage = {
    input_tokens: 1234,
    output_tokens: 567,
    search_queries: 3,
    cache_read_tokens: 100,
  };
  const typedPreview = ok(
    await pricingEvaluate({ client: api, body: { model: 'metered', tokens, user_id: alice } }),
    200,
  );
  const breakdown = typedPreview.breakdown;
  expect(breakdown.kind === 'expression', `breakdown ${breakdown.kind}`);
  expect(breakdown.expression === EXPRESSION, 'breakdown expression');
  // the metrics the expression reads, and only those
  const names = 'cache_read_tokens,input_tokens,output_tokens,search_queries';
  expect(Object.keys(breakdown.variables).sort().join() === names, 'variables');
  expect(breakdown.variables.cache_read_tokens === 100, 'cache_read_tokens');
  const preview = exact<EvaluateOut>(
    await pricingEvaluate({
      client: api,
      body: { model: 'metered', tokens, user_id: alice },
      parseAs: 'text',
    }),
    200,
  );
  expect(preview.credits === '30.4' && typedPreview.credits === 30.4, `preview ${preview.credits}`);

  const used = exact<UsageOut>(
    await usageRecord({
      client: api,
      body: { user_id: alice, model: 'metered', team_id: teamId, tokens },
      parseAs: 'text',
    }),
    201,
  );
  expect(used.credits_used === preview.credits, `usage charges the preview: ${used.credits_used}`);
  expect(used.balance === '67.1', `97.5 - 30.4: ${used.balance}`);

  const job = ok(
    await jobsPut({ client: api, path: { name: 'batch_job' }, body: { price: '2.5' } }),
    200,
  );
  expect(job.name === 'batch_job' && job.price === 2.5, 'job put');
  expect(ok(await jobsGet({ client: api, path: { name: 'batch_job' } }), 200).price === 2.5, 'job');
  const charged = exact<UsageOut>(
    await usageRecord({
      client: api,
      body: { user_id: alice, job: 'batch_job', quantity: 3, team_id: teamId },
      parseAs: 'text',
    }),
    201,
  );
  expect(charged.credits_used === '7.5' && charged.balance === '59.6', 'job x 3 = 7.5');

  const read = exact<TeamOut>(
    await teamsGet({ client: api, path: { team_id: teamId }, parseAs: 'text' }),
    200,
  );
  const balance = [read.balance.available, read.balance.held, read.balance.total].join();
  expect(balance === '59.6,0,59.6', `team balance ${balance}`);
  const own = exact<UserOut>(
    await usersGet({ client: api, path: { user_id: bob }, parseAs: 'text' }),
    200,
  );
  expect(own.balance.total === '0', "the member's own account is untouched");

  const ledger = exact<PageLedgerEntryOut>(
    await teamsListLedger({
      client: api,
      path: { team_id: teamId },
      query: { limit: 100 },
      parseAs: 'text',
    }),
    200,
  );
  const rows = ledger.data.map((e) => [e.kind, e.user_id ?? '-', e.amount].join(' '));
  const wantedRows = [
    'grant - 100',
    `hold ${bob} 0`,
    `usage ${bob} -2.5`,
    `usage ${alice} -30.4`,
    `usage ${alice} -7.5`,
  ];
  expect(rows.join('\n') === wantedRows.join('\n'), `team ledger:\n${rows.join('\n')}`);
  expect(ledger.data[2]?.transaction_id === started.transaction_id, "the member's usage entry");

  return exportLedger(api, teamId, ledger.data);
}

/** Verify the README's SHA-256 chain over `lines` from `prev`; returns the last hash. */
function chain(lines: Buffer[], prev: string): string {
  lines.forEach((line, i) => {
    const n = i + 1;
    expect(line.subarray(-154, -140).toString() === ',"prev_hash":"', `line ${n}: tail`);
    expect(line.subarray(-140, -76).toString() === prev, `line ${n}: chain broken`);
    prev = createHash('sha256')
      .update(prev)
      .update(line.subarray(0, -154))
      .update('}')
      .digest('hex');
    expect(line.subarray(-66, -2).toString() === prev && line.at(-1) === 0x7d, `line ${n}: hash`);
  });
  return prev;
}

interface Read {
  entries: { typed: LedgerExportEntry; text: Exact<LedgerExportEntry> }[];
  end: LedgerExportEnd;
}

/** The entry lines (generated type and exact text) and the trailer of an export. */
function readLines(lines: Buffer[], prev: string): Read {
  expect(lines.length >= 1, 'an export has at least its trailer');
  const last = chain(lines, prev);
  const entries: Read['entries'] = [];
  for (const line of lines.slice(0, -1)) {
    const typed = JSON.parse(line.toString()) as Line;
    expect(typed.object === 'ledger_entry', `entry line ${line.toString()}`);
    entries.push({ typed, text: exactText<LedgerExportEntry>(line.toString()) });
  }
  const end = JSON.parse(String(lines.at(-1))) as Line;
  expect(end.object === 'ledger_export_end', `trailer ${String(lines.at(-1))}`);
  expect(end.hash === last && end.entries === entries.length, 'trailer: hash and count');
  return { entries, end };
}

/** Split a body into its lines (bytes); every line ends with a newline. */
function splitLines(body: Buffer): Buffer[] {
  expect(body.at(-1) === 0x0a, 'every line ends with a newline');
  const lines: Buffer[] = [];
  let from = 0;
  for (let at = body.indexOf(0x0a); at !== -1; at = body.indexOf(0x0a, from)) {
    lines.push(body.subarray(from, at));
    from = at + 1;
  }
  return lines;
}

/** Lines of a streamed body, read chunk by chunk as they arrive. */
async function streamLines(body: ReadableStream<Uint8Array>): Promise<Buffer[]> {
  const lines: Buffer[] = [];
  let pending = Buffer.alloc(0);
  const reader = body.getReader();
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    pending = Buffer.concat([pending, chunk.value]);
    let at: number;
    while ((at = pending.indexOf(0x0a)) !== -1) {
      lines.push(pending.subarray(0, at));
      pending = pending.subarray(at + 1);
    }
  }
  expect(pending.length === 0, 'the stream ends with a whole line');
  return lines;
}

async function exportLedger(
  api: Client,
  teamId: string,
  ledger: Exact<PageLedgerEntryOut>['data'],
): Promise<number> {
  // The export ends at a horizon about a second back: wait until it covers every entry.
  const deadline = Date.now() + WAIT_MS;
  let lines: Buffer[];
  let read: Read;
  for (;;) {
    const answer = await ledgerExport({ client: api });
    const blob: Blob | File = ok(answer, 200);
    expect(blob instanceof Blob, 'the generated type: a Blob');
    const media = answer.response.headers.get('content-type');
    expect(media === 'application/x-ndjson', `content type ${media}`);
    lines = splitLines(Buffer.from(await blob.arrayBuffer()));
    read = readLines(lines, GENESIS);
    if (read.entries.length >= ledger.length || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const { entries, end } = read;
  expect(entries.length === ledger.length, `export: ${entries.length}, ledger ${ledger.length}`);
  expect(end.after === null && end.since === null && end.until === null, 'trailer: all of it');
  expect(end.next_after === entries.at(-1)?.typed.id, 'next_after: the last entry');
  entries.forEach(({ typed, text }, i) => {
    const listed = ledger[i];
    expect(listed !== undefined && typed.id === Number(listed.id), `entry ${typed.id}`);
    expect(typed.kind === listed.kind && typed.team_id === teamId, `entry ${typed.id}: team`);
    expect(typed.user_id === (listed.user_id ?? null), `entry ${typed.id}: the member`);
    expect(typed.transaction_id === listed.transaction_id, `entry ${typed.id}: transaction`);
    for (const name of ['amount', 'held_amount', 'total_after', 'held_after'] as const) {
      // The export writes 6 decimals; the ledger page writes amounts normalized.
      expect(/^-?\d+\.\d{6}$/.test(text[name]), `entry ${typed.id}: ${name} ${text[name]}`);
      expect(sameDecimal(text[name], listed[name]), `entry ${typed.id}: ${name} ${text[name]}`);
    }
    expect(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/.test(typed.created_at), 'microseconds');
  });

  // The same export, streamed: its Response's body read chunk by chunk.
  const streamed = await ledgerExport({ client: api, parseAs: 'stream' });
  const body = streamed.response.body;
  expect(streamed.response.status === 200 && body !== null, `stream ${streamed.response.status}`);
  const streamedLines = await streamLines(body);
  readLines(streamedLines, GENESIS);
  expect(
    Buffer.concat(streamedLines.slice(0, -1)).equals(Buffer.concat(lines.slice(0, -1))),
    'streamed entry lines are the same bytes',
  );

  // Resuming after a complete export chains on from its trailer, with nothing new.
  const resumed = await ledgerExport({
    client: api,
    query: { after: end.next_after, prev_hash: end.hash },
  });
  const tail = splitLines(Buffer.from(await ok(resumed, 200).arrayBuffer()));
  const more = readLines(tail, end.hash);
  expect(more.entries.length === 0 && more.end.after === end.next_after, 'resumed: nothing new');
  return lines.length + streamedLines.length + tail.length;
}

/** Two decimal texts of one value ("-2.500000" and "-2.5"). */
function sameDecimal(a: string, b: string): boolean {
  const norm = (s: string): string => {
    const [whole = '', frac = ''] = s.split('.');
    const f = frac.replace(/0+$/, '');
    const w = whole.replace(/^(-?)0+(?=\d)/, '$1');
    return (f ? `${w}.${f}` : w).replace(/^-0$/, '0');
  };
  return norm(a) === norm(b);
}

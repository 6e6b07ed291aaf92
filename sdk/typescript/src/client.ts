/** The creditd client: every endpoint, the credly-compatible methods, captureUsage, the spool. */

import {
  CompletionSpooledError,
  CreditdApiError,
  CreditdConnectionError,
  CreditdError,
  CreditdExportIncompleteError,
} from "./errors.js";
import { randomId, SDK_VERSION, Transport, type Call, type FetchLike, type RequestOptions, type RetryInfo } from "./http.js";
import { parseJson, stringifyJson, type AmountsMode } from "./json.js";
import { FileSpool, type Spool, type SpoolEntry } from "./spool.js";
import type * as T from "./types.js";

/** The amount type of a client: exact strings (default) or JS numbers. */
export type AmountOf<M extends AmountsMode> = M extends "number" ? number : string;

/** Something that happened to the spool; see `onSpoolEvent`. */
export type SpoolEvent =
  | { type: "spooled"; entry: SpoolEntry; error: unknown }
  | { type: "spool_failed"; transactionId: string; error: unknown }
  | { type: "delivered"; entry: SpoolEntry }
  | { type: "rejected"; entry: SpoolEntry; error: unknown }
  | { type: "flush_failed"; error: unknown };

export interface CreditdOptions<M extends AmountsMode = "string"> {
  /** A project API key (`ck_...`). */
  apiKey: string;
  /** Default: `CREDITD_BASE_URL` from the environment, else `http://localhost:8000`. */
  baseUrl?: string;
  /** Sent as `X-Project-Id`; the server refuses the call (403) if the key is of another project. */
  projectId?: string;
  /** How amounts come back: `"string"` (exact decimal text, default) or `"number"` (JS numbers, may round). */
  amounts?: M;
  /** Retries after the first attempt on network errors, timeouts, 429, 502/503/504 and 409 in-flight. Default 3. */
  maxRetries?: number;
  /** Per-attempt timeout in ms. Default 30000. */
  timeoutMs?: number;
  /** First backoff step in ms (doubles each retry, with jitter). Default 250. */
  retryBaseDelayMs?: number;
  /** Longest backoff step in ms. Default 8000. */
  retryMaxDelayMs?: number;
  /** Longest wait a server's `Retry-After` may impose, in ms. Default 60000. */
  maxRetryAfterMs?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: FetchLike;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /**
   * Where undeliverable completions wait: a directory (a {@link FileSpool}), a {@link Spool},
   * or `false` to turn the spool off. Default: `CREDITD_SPOOL_DIR`, else `./.creditd-spool`.
   */
  spool?: Spool | string | false;
  /** Flush the spool after calls that reach the server (at most once per second). Default true. */
  autoFlushSpool?: boolean;
  /** Also flush the spool on this interval (ms); 0 = off (default). Call `close()` to stop it. */
  spoolFlushIntervalMs?: number;
  /** Told before every retry wait (for logs and metrics). */
  onRetry?: (info: RetryInfo) => void;
  /** Told when a completion is spooled, delivered from the spool, or refused for good. */
  onSpoolEvent?: (event: SpoolEvent) => void;
}

/** The result of {@link Creditd.flushSpool}. */
export interface FlushResult<A = string> {
  /** Completions the server now has (including ones it already had: replays). */
  delivered: { entry: SpoolEntry; result: T.CompleteTransactionResult<A> }[];
  /** Completions the server refused for good (e.g. unknown transaction); moved out of the spool. */
  rejected: { entry: SpoolEntry; error: CreditdApiError }[];
  /** Entries still waiting (the server was unreachable, or the flush stopped early). */
  pending: number;
  /** Why the flush stopped early, if it did. */
  error?: unknown;
}

// ---- credly-compatible parameter shapes (camelCase or snake_case) --------------------------

export interface StartUsageParams {
  userId?: string;
  user_id?: string;
  model: string;
  provisionalTokens?: T.TokenUsageInput | null;
  provisional_tokens?: T.TokenUsageInput | null;
  featureIdentifier?: string | null;
  feature_identifier?: string | null;
  metadata?: T.Metadata;
  holdTtlSeconds?: number | null;
  hold_ttl_seconds?: number | null;
}

export interface CompleteUsageParams {
  /** Default true: the usage happened. `false` releases the hold and charges nothing. */
  success?: boolean;
  finalizedTokens?: T.TokenUsageInput | null;
  finalized_tokens?: T.TokenUsageInput | null;
  metadata?: T.Metadata;
}

export interface CompleteUsageObjectParams extends CompleteUsageParams {
  transactionId?: string;
  transaction_id?: string;
}

export interface CreateUserParams {
  id?: string;
  userId?: string;
  user_id?: string;
  tierId?: string | null;
  tier_id?: string | null;
  metadata?: T.Metadata;
}

export interface ChangeUserTierParams {
  userId?: string;
  user_id?: string;
  tierId?: string;
  tier_id?: string;
  resetBalance?: boolean;
  reset_balance?: boolean;
}

export interface GetTransactionsParams extends T.TransactionFilters {
  userId?: string;
  featureIdentifier?: string;
  createdAfter?: T.TimestampInput;
  createdBefore?: T.TimestampInput;
  startingAfter?: string;
}

export type CaptureUsageStatus =
  | "start_failed"
  | "insufficient_credits"
  | "executed_success"
  | "executed_error"
  | "execution_error_completion_failed"
  | "executed_success_completion_failed";

export interface CaptureUsageResult<R, A = string> {
  /**
   * - `start_failed`: the start call failed (`error`); the function did not run.
   * - `insufficient_credits`: not admitted (`reason` says why: `insufficient_credits`,
   *   `spend_cap_reached` or `concurrency_limit`); the function did not run.
   * - `executed_success`: the function returned (`result`); its usage was charged (`completion`),
   *   or spooled for later delivery (`spooled: true`).
   * - `executed_error`: the function threw (`error`); the hold was released (or the release spooled).
   * - `execution_error_completion_failed`: the function threw and releasing the hold was refused
   *   (`completionError`); the hold expires on its own at `expires_at`.
   * - `executed_success_completion_failed`: the function returned but the server refused the
   *   completion for good (`completionError`), e.g. tokens it could not price.
   */
  status: CaptureUsageStatus;
  /** The deny reason when not admitted. */
  reason: T.DenyReason | null;
  /** The function's return value (on success). */
  result?: R;
  /** What the function threw, or why the start failed. */
  error?: unknown;
  /** The start response (absent when the start failed). */
  transaction?: T.StartTransactionResult<A>;
  /** The completion response (absent when not completed, or spooled). */
  completion?: T.CompleteTransactionResult<A>;
  /** The completion was stored in the spool and will be delivered later. */
  spooled: boolean;
  /** Why the completion failed (the `*_completion_failed` statuses). */
  completionError?: unknown;
}

export interface CaptureUsageOptions<R> {
  /**
   * The real usage from the function's result. Default: the result itself when it is a token
   * object (`{input_tokens, output_tokens}` or `{inputTokens, outputTokens}`), its
   * `finalizedTokens`/`finalized_tokens`, or an OpenAI/Anthropic-style `usage` member. Return
   * null to complete without counts (the server then charges the provisional tokens).
   */
  extractTokens?: (result: R) => T.TokenUsageInput | null | undefined;
  /** Metadata merged into the transaction on completion. */
  completionMetadata?: T.Metadata;
  /** Options for the start and complete calls. */
  requestOptions?: RequestOptions;
}

// ---- helpers -------------------------------------------------------------------------------

const enc = encodeURIComponent;

function snake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** Token counts in the API's spelling, whichever spelling was given. */
export function toTokenUsage(tokens: T.TokenUsageInput): T.TokenUsage {
  const out: T.TokenUsage = {};
  const input = tokens.input_tokens ?? tokens.inputTokens;
  const output = tokens.output_tokens ?? tokens.outputTokens;
  const cached = tokens.cached_input_tokens ?? tokens.cachedInputTokens;
  if (input !== undefined) out.input_tokens = input;
  if (output !== undefined) out.output_tokens = output;
  if (cached !== undefined) out.cached_input_tokens = cached;
  return out;
}

function tokensOrNull(tokens: T.TokenUsageInput | null | undefined): T.TokenUsage | null | undefined {
  return tokens === null || tokens === undefined ? tokens : toTokenUsage(tokens);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

const TOKEN_KEYS = ["input_tokens", "output_tokens", "cached_input_tokens", "inputTokens", "outputTokens", "cachedInputTokens"];

/** Token counts from a model SDK's `usage` object (OpenAI chat/responses, Anthropic). */
export function tokensFromUsage(usage: unknown): T.TokenUsage | undefined {
  if (!isRecord(usage)) return undefined;
  const prompt = num(usage.prompt_tokens);
  const completion = num(usage.completion_tokens);
  if (prompt !== undefined || completion !== undefined) {
    // OpenAI chat completions: prompt_tokens includes the cached ones.
    const details = isRecord(usage.prompt_tokens_details) ? usage.prompt_tokens_details : {};
    const cached = num(details.cached_tokens) ?? 0;
    return { input_tokens: Math.max(0, (prompt ?? 0) - cached), output_tokens: completion ?? 0, cached_input_tokens: cached };
  }
  const input = num(usage.input_tokens);
  const output = num(usage.output_tokens);
  if (input === undefined && output === undefined) return undefined;
  if (isRecord(usage.input_tokens_details)) {
    // OpenAI Responses API: input_tokens includes the cached ones.
    const cached = num(usage.input_tokens_details.cached_tokens) ?? 0;
    return { input_tokens: Math.max(0, (input ?? 0) - cached), output_tokens: output ?? 0, cached_input_tokens: cached };
  }
  // Anthropic: input_tokens excludes cache reads; cache writes are priced as input.
  const cacheRead = num(usage.cache_read_input_tokens) ?? 0;
  const cacheWrite = num(usage.cache_creation_input_tokens) ?? 0;
  return { input_tokens: (input ?? 0) + cacheWrite, output_tokens: output ?? 0, cached_input_tokens: cacheRead };
}

function defaultExtractTokens(result: unknown): T.TokenUsageInput | undefined {
  if (!isRecord(result)) return undefined;
  if (TOKEN_KEYS.some((k) => typeof result[k] === "number")) return result as T.TokenUsageInput;
  const finalized = result.finalizedTokens ?? result.finalized_tokens;
  if (isRecord(finalized)) return finalized as T.TokenUsageInput;
  return tokensFromUsage(result.usage);
}

/** A failure after which a completion may still land later: keep it and replay it. */
function isTransient(err: unknown): boolean {
  if (err instanceof CreditdConnectionError) return true;
  if (err instanceof CreditdApiError) {
    return err.status >= 500 || err.status === 429 || (err.status === 409 && err.code === "idempotency_key_in_flight");
  }
  return false;
}

function envVar(name: string): string | undefined {
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return proc?.env?.[name];
}

async function spoolEntryId(): Promise<string> {
  // Sortable by time, unique across processes.
  return `${Date.now().toString().padStart(14, "0")}-${await randomId()}`;
}

/** Iterate every item of a paginated list: `for await (const u of paginate((p) => client.users.list(p)))`. */
export async function* paginate<Item>(
  list: (page: T.PageParams) => Promise<T.Page<Item>>,
  params: T.PageParams = {},
): AsyncGenerator<Item, void, undefined> {
  let cursor = params.starting_after;
  for (;;) {
    const page: T.PageParams = { ...params };
    if (cursor !== undefined) page.starting_after = cursor;
    const result = await list(page);
    yield* result.data;
    if (!result.has_more || result.next_cursor === null) return;
    cursor = result.next_cursor;
  }
}

// ---- the client ----------------------------------------------------------------------------

/**
 * The creditd client.
 *
 * ```ts
 * const creditd = new Creditd({ apiKey: process.env.CREDITD_API_KEY!, baseUrl: "https://credits.example.com" });
 * const user = await creditd.getUser("u_1");   // user.balance.available === "12.5"
 * ```
 */
export class Creditd<M extends AmountsMode = "string"> {
  readonly baseUrl: string;
  readonly spool: Spool | null;
  /** @internal */
  readonly transport: Transport;

  private readonly autoFlush: boolean;
  private readonly onSpoolEvent: ((event: SpoolEvent) => void) | undefined;
  private flushing: Promise<FlushResult<AmountOf<M>>> | undefined;
  /** Might the spool hold entries? Unknown at start (a previous process may have left some). */
  private spoolDirty = true;
  private lastAutoFlush = 0;
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(options: CreditdOptions<M>) {
    if (!options || typeof options.apiKey !== "string" || options.apiKey === "") {
      throw new CreditdError("Creditd: `apiKey` is required");
    }
    this.baseUrl = options.baseUrl ?? envVar("CREDITD_BASE_URL") ?? "http://localhost:8000";
    const fetchImpl = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
    if (typeof fetchImpl !== "function") throw new CreditdError("Creditd: no global fetch; pass `fetch`");
    const headers: Record<string, string> = {
      accept: "application/json",
      authorization: `Bearer ${options.apiKey}`,
      "user-agent": `creditd-sdk-typescript/${SDK_VERSION}`,
      ...options.headers,
    };
    if (options.projectId) headers["x-project-id"] = options.projectId;
    this.transport = new Transport({
      baseUrl: this.baseUrl,
      headers,
      fetch: fetchImpl,
      maxRetries: options.maxRetries ?? 3,
      timeoutMs: options.timeoutMs ?? 30_000,
      retryBaseDelayMs: options.retryBaseDelayMs ?? 250,
      retryMaxDelayMs: options.retryMaxDelayMs ?? 8_000,
      maxRetryAfterMs: options.maxRetryAfterMs ?? 60_000,
      amounts: options.amounts ?? "string",
      ...(options.onRetry ? { onRetry: options.onRetry } : {}),
      onAnswer: () => this.maybeAutoFlush(),
    });
    this.spool = resolveSpool(options.spool);
    this.autoFlush = options.autoFlushSpool ?? true;
    this.onSpoolEvent = options.onSpoolEvent;
    const every = options.spoolFlushIntervalMs ?? 0;
    if (this.spool && every > 0) {
      this.timer = setInterval(() => void this.flushSpool().catch(() => undefined), every);
      (this.timer as { unref?: () => void }).unref?.();
    }
  }

  private request<R>(call: Call): Promise<R> {
    return this.transport.request<R>(call);
  }

  // ---- resources ---------------------------------------------------------------------------

  /** The project of this key: `GET/PATCH /v1/project`. */
  readonly project = {
    get: (o?: RequestOptions) => this.request<T.Project<AmountOf<M>>>({ method: "GET", path: "/v1/project", options: o }),
    update: (body: T.ProjectUpdate, o?: RequestOptions) =>
      this.request<T.Project<AmountOf<M>>>({ method: "PATCH", path: "/v1/project", body, options: o }),
  };

  /** API keys (admin scope). */
  readonly apiKeys = {
    create: (body: T.ApiKeyCreate, o?: RequestOptions) =>
      this.request<T.ApiKeyCreated>({ method: "POST", path: "/v1/api-keys", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.ApiKey>>({ method: "GET", path: "/v1/api-keys", query: page, options: o }),
    revoke: (keyId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/api-keys/${enc(keyId)}`, options: o }),
  };

  /** Model prices (credits per 1,000 tokens; `_default` prices every model without its own). */
  readonly models = {
    put: (modelId: string, body: T.ModelPriceInput, o?: RequestOptions) =>
      this.request<T.ModelPrice<AmountOf<M>>>({ method: "PUT", path: `/v1/models/${enc(modelId)}`, body, options: o }),
    get: (modelId: string, o?: RequestOptions) =>
      this.request<T.ModelPrice<AmountOf<M>>>({ method: "GET", path: `/v1/models/${enc(modelId)}`, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.ModelPrice<AmountOf<M>>>>({ method: "GET", path: "/v1/models", query: page, options: o }),
    delete: (modelId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/models/${enc(modelId)}`, options: o }),
  };

  /** Fixed-cost jobs, charged by `usage.record({ user_id, job, quantity })`. */
  readonly jobs = {
    put: (name: string, body: { price: T.AmountInput }, o?: RequestOptions) =>
      this.request<T.Job<AmountOf<M>>>({ method: "PUT", path: `/v1/jobs/${enc(name)}`, body, options: o }),
    get: (name: string, o?: RequestOptions) =>
      this.request<T.Job<AmountOf<M>>>({ method: "GET", path: `/v1/jobs/${enc(name)}`, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Job<AmountOf<M>>>>({ method: "GET", path: "/v1/jobs", query: page, options: o }),
    delete: (name: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/jobs/${enc(name)}`, options: o }),
  };

  /** Price usage without charging it. */
  readonly pricing = {
    evaluate: (body: T.EvaluateInput, o?: RequestOptions) =>
      this.request<T.PriceEvaluation<AmountOf<M>>>({ method: "POST", path: "/v1/pricing/evaluate", body, options: o }),
  };

  /** Users (your end customers, by your own ids), their credits, grants and ledger. */
  readonly users = {
    create: (body: T.UserCreate, o?: RequestOptions) =>
      this.request<T.User<AmountOf<M>>>({ method: "POST", path: "/v1/users", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.User<AmountOf<M>>>>({ method: "GET", path: "/v1/users", query: page, options: o }),
    get: (userId: string, o?: RequestOptions) =>
      this.request<T.User<AmountOf<M>>>({ method: "GET", path: `/v1/users/${enc(userId)}`, options: o }),
    update: (userId: string, body: T.UserUpdate, o?: RequestOptions) =>
      this.request<T.User<AmountOf<M>>>({ method: "PATCH", path: `/v1/users/${enc(userId)}`, body, options: o }),
    delete: (userId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/users/${enc(userId)}`, options: o }),
    assignTier: (userId: string, body: T.AssignTier, o?: RequestOptions) =>
      this.request<T.User<AmountOf<M>>>({ method: "POST", path: `/v1/users/${enc(userId)}/tier`, body, options: o }),
    /** Grant credits: `POST /v1/users/{id}/credits`. */
    grantCredits: (userId: string, body: T.CreditGrantInput, o?: RequestOptions) =>
      this.request<T.GrantCreated<AmountOf<M>>>({ method: "POST", path: `/v1/users/${enc(userId)}/credits`, body, options: o }),
    /** Debit credits (402 InsufficientCreditsError past the available balance). */
    debit: (userId: string, body: T.DebitInput, o?: RequestOptions) =>
      this.request<T.Debit<AmountOf<M>>>({ method: "POST", path: `/v1/users/${enc(userId)}/debits`, body, options: o }),
    grants: (userId: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Grant<AmountOf<M>>>>({
        method: "GET", path: `/v1/users/${enc(userId)}/grants`, query: page, options: o,
      }),
    ledger: (userId: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.LedgerEntry<AmountOf<M>>>>({
        method: "GET", path: `/v1/users/${enc(userId)}/ledger`, query: page, options: o,
      }),
  };

  /** Teams: a shared balance its members charge (`team_id` on start, usage and check). */
  /** The project's ledger export (`GET /v1/ledger/export`, JSON lines with a SHA-256 chain). */
  readonly ledger = {
    /**
     * The export's lines as sent, without their newline, streamed as they arrive: each line's
     * exact text, for saving or checking the chain (`hash` = SHA-256 of `prev_hash` followed by
     * `line.slice(0, -154) + "}"`). The trailer (`ledger_export_end`) comes last; a stream that
     * ends without it throws `CreditdExportIncompleteError` (resume with its `lastEntryId` and
     * `lastHash`).
     */
    exportLines: (params?: T.LedgerExportParams, o?: RequestOptions): AsyncGenerator<string, void, undefined> =>
      this.exportLines(params, o),
    /** `exportLines`, each line parsed (amounts as this client's `amounts` mode). */
    export: (
      params?: T.LedgerExportParams,
      o?: RequestOptions,
    ): AsyncGenerator<T.LedgerExportLine<AmountOf<M>>, void, undefined> => this.exportParsed(params, o),
  };

  private async *exportLines(params: T.LedgerExportParams = {}, o?: RequestOptions): AsyncGenerator<string, void, undefined> {
    const query = { since: params.since, until: params.until, after: params.after, prev_hash: params.prevHash, format: "jsonl" };
    const headers = { accept: "application/x-ndjson, application/problem+json", ...o?.headers };
    const response = await this.transport.stream({ method: "GET", path: "/v1/ledger/export", query, options: { ...o, headers } });
    const last: { id: number | null; hash: string | null } = { id: null, hash: null };
    let ended = false;
    const body = response.body;
    if (body === null) throw new CreditdExportIncompleteError("the ledger export has no body", last);
    const reader = body.getReader();
    const decoder = new TextDecoder("utf-8", { fatal: true });
    let pending = "";
    const take = (line: string): string => {
      ended = line.startsWith('{"object":"ledger_export_end"');
      last.hash = line.slice(-66, -2);
      const id = /^\{"object":"ledger_entry","id":(\d+),/.exec(line);
      if (id) last.id = Number(id[1]);
      return line;
    };
    try {
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch (err) {
          throw new CreditdExportIncompleteError(`the ledger export was cut short: ${String(err)}`, last, { cause: err });
        }
        if (chunk.done) break;
        pending += decoder.decode(chunk.value, { stream: true });
        let at: number;
        while ((at = pending.indexOf("\n")) !== -1) {
          const line = pending.slice(0, at);
          pending = pending.slice(at + 1);
          if (line !== "") yield take(line);
        }
      }
      pending += decoder.decode();
      if (pending !== "") {
        // A line without its newline: the stream was cut in the middle of it.
        throw new CreditdExportIncompleteError("the ledger export ended inside a line", last);
      }
    } finally {
      reader.releaseLock();
      if (!ended) await body.cancel().catch(() => undefined);
    }
    if (!ended) throw new CreditdExportIncompleteError("the ledger export ended without its trailer", last);
  }

  private async *exportParsed(
    params?: T.LedgerExportParams,
    o?: RequestOptions,
  ): AsyncGenerator<T.LedgerExportLine<AmountOf<M>>, void, undefined> {
    for await (const line of this.exportLines(params, o)) {
      yield parseJson(line, this.transport.config.amounts) as T.LedgerExportLine<AmountOf<M>>;
    }
  }

  readonly teams = {
    create: (body: T.TeamCreate, o?: RequestOptions) =>
      this.request<T.Team<AmountOf<M>>>({ method: "POST", path: "/v1/teams", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Team<AmountOf<M>>>>({ method: "GET", path: "/v1/teams", query: page, options: o }),
    get: (teamId: string, o?: RequestOptions) =>
      this.request<T.Team<AmountOf<M>>>({ method: "GET", path: `/v1/teams/${enc(teamId)}`, options: o }),
    update: (teamId: string, body: T.TeamUpdate, o?: RequestOptions) =>
      this.request<T.Team<AmountOf<M>>>({ method: "PATCH", path: `/v1/teams/${enc(teamId)}`, body, options: o }),
    /** Close the team's account and remove its members (the id is not reused). */
    delete: (teamId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/teams/${enc(teamId)}`, options: o }),
    putMember: (teamId: string, userId: string, body: T.TeamMemberInput = {}, o?: RequestOptions) =>
      this.request<T.TeamMember<AmountOf<M>>>({
        method: "PUT", path: `/v1/teams/${enc(teamId)}/members/${enc(userId)}`, body, options: o,
      }),
    members: (teamId: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.TeamMember<AmountOf<M>>>>({
        method: "GET", path: `/v1/teams/${enc(teamId)}/members`, query: page, options: o,
      }),
    removeMember: (teamId: string, userId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/teams/${enc(teamId)}/members/${enc(userId)}`, options: o }),
    grantCredits: (teamId: string, body: T.CreditGrantInput, o?: RequestOptions) =>
      this.request<T.GrantCreated<AmountOf<M>>>({ method: "POST", path: `/v1/teams/${enc(teamId)}/credits`, body, options: o }),
    debit: (teamId: string, body: T.DebitInput, o?: RequestOptions) =>
      this.request<T.Debit<AmountOf<M>>>({ method: "POST", path: `/v1/teams/${enc(teamId)}/debits`, body, options: o }),
    grants: (teamId: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Grant<AmountOf<M>>>>({
        method: "GET", path: `/v1/teams/${enc(teamId)}/grants`, query: page, options: o,
      }),
    /** The team account's ledger, oldest first (`user_id`: the member who charged). */
    ledger: (teamId: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.LedgerEntry<AmountOf<M>>>>({
        method: "GET", path: `/v1/teams/${enc(teamId)}/ledger`, query: page, options: o,
      }),
  };

  /** Usage transactions: hold before the model call, settle after it. */
  readonly transactions = {
    start: (body: T.StartTransactionInput, o?: RequestOptions) =>
      this.request<T.StartTransactionResult<AmountOf<M>>>({ method: "POST", path: "/v1/transactions/start", body, options: o }),
    /** Plain completion (no spool); see {@link Creditd.completeUsageTransaction} for the spooled one. */
    complete: (transactionId: string, body: T.CompleteTransactionInput, o?: RequestOptions) =>
      this.request<T.CompleteTransactionResult<AmountOf<M>>>({
        method: "POST", path: `/v1/transactions/${enc(transactionId)}/complete`, body, options: o,
      }),
    extend: (transactionId: string, body: T.ExtendTransactionInput, o?: RequestOptions) =>
      this.request<T.Transaction<AmountOf<M>>>({
        method: "POST", path: `/v1/transactions/${enc(transactionId)}/extend`, body, options: o,
      }),
    refund: (transactionId: string, body: T.RefundInput = {}, o?: RequestOptions) =>
      this.request<T.Refund<AmountOf<M>>>({
        method: "POST", path: `/v1/transactions/${enc(transactionId)}/refund`, body, options: o,
      }),
    list: (filters?: T.TransactionFilters, o?: RequestOptions) =>
      this.request<T.Page<T.Transaction<AmountOf<M>>>>({ method: "GET", path: "/v1/transactions", query: filters, options: o }),
    get: (transactionId: string, o?: RequestOptions) =>
      this.request<T.Transaction<AmountOf<M>>>({ method: "GET", path: `/v1/transactions/${enc(transactionId)}`, options: o }),
  };

  /** One-shot usage and admission checks. */
  readonly usage = {
    /** Charge usage that already happened: `POST /v1/usage`. */
    record: (body: T.UsageInput, o?: RequestOptions) =>
      this.request<T.UsageResult<AmountOf<M>>>({ method: "POST", path: "/v1/usage", body, options: o }),
    /** Would this be allowed? No side effect: `POST /v1/check`. */
    check: (body: T.CheckInput, o?: RequestOptions) =>
      this.request<T.CheckResult<AmountOf<M>>>({ method: "POST", path: "/v1/check", body, options: o }),
  };

  readonly tiers = {
    create: (body: T.TierCreate, o?: RequestOptions) =>
      this.request<T.Tier<AmountOf<M>>>({ method: "POST", path: "/v1/tiers", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Tier<AmountOf<M>>>>({ method: "GET", path: "/v1/tiers", query: page, options: o }),
    get: (tierId: string, o?: RequestOptions) =>
      this.request<T.Tier<AmountOf<M>>>({ method: "GET", path: `/v1/tiers/${enc(tierId)}`, options: o }),
    update: (tierId: string, body: T.TierUpdate, o?: RequestOptions) =>
      this.request<T.Tier<AmountOf<M>>>({ method: "PATCH", path: `/v1/tiers/${enc(tierId)}`, body, options: o }),
    delete: (tierId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/tiers/${enc(tierId)}`, options: o }),
  };

  readonly plans = {
    create: (body: T.PlanCreate, o?: RequestOptions) =>
      this.request<T.Plan<AmountOf<M>>>({ method: "POST", path: "/v1/plans", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Plan<AmountOf<M>>>>({ method: "GET", path: "/v1/plans", query: page, options: o }),
    get: (planId: string, o?: RequestOptions) =>
      this.request<T.Plan<AmountOf<M>>>({ method: "GET", path: `/v1/plans/${enc(planId)}`, options: o }),
    update: (planId: string, body: T.PlanUpdate, o?: RequestOptions) =>
      this.request<T.Plan<AmountOf<M>>>({ method: "PATCH", path: `/v1/plans/${enc(planId)}`, body, options: o }),
    delete: (planId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/plans/${enc(planId)}`, options: o }),
  };

  readonly subscriptions = {
    create: (userId: string, body: T.SubscriptionCreate, o?: RequestOptions) =>
      this.request<T.SubscriptionCreated>({ method: "POST", path: `/v1/users/${enc(userId)}/subscriptions`, body, options: o }),
    list: (userId: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Subscription>>({
        method: "GET", path: `/v1/users/${enc(userId)}/subscriptions`, query: page, options: o,
      }),
    get: (subscriptionId: string, o?: RequestOptions) =>
      this.request<T.Subscription>({ method: "GET", path: `/v1/subscriptions/${enc(subscriptionId)}`, options: o }),
    cancel: (subscriptionId: string, body: { at_period_end?: boolean } = {}, o?: RequestOptions) =>
      this.request<T.Subscription>({ method: "POST", path: `/v1/subscriptions/${enc(subscriptionId)}/cancel`, body, options: o }),
  };

  /** Promo codes (case-insensitive). */
  readonly promos = {
    create: (body: T.PromoCreate, o?: RequestOptions) =>
      this.request<T.Promo<AmountOf<M>>>({ method: "POST", path: "/v1/promos", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.Promo<AmountOf<M>>>>({ method: "GET", path: "/v1/promos", query: page, options: o }),
    get: (code: string, o?: RequestOptions) =>
      this.request<T.Promo<AmountOf<M>>>({ method: "GET", path: `/v1/promos/${enc(code)}`, options: o }),
    update: (code: string, body: T.PromoUpdate, o?: RequestOptions) =>
      this.request<T.Promo<AmountOf<M>>>({ method: "PATCH", path: `/v1/promos/${enc(code)}`, body, options: o }),
    delete: (code: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/promos/${enc(code)}`, options: o }),
    eligibility: (code: string, userId: string, o?: RequestOptions) =>
      this.request<T.PromoEligibility>({
        method: "GET", path: `/v1/promos/${enc(code)}/eligibility`, query: { user_id: userId }, options: o,
      }),
    /** Claim for a user; an ineligible claim is a 409 whose `code` is the reason. */
    claim: (code: string, userId: string, o?: RequestOptions) =>
      this.request<T.PromoClaim<AmountOf<M>>>({
        method: "POST", path: `/v1/promos/${enc(code)}/claim`, body: { user_id: userId }, options: o,
      }),
    redemptions: (code: string, page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.PromoRedemption>>({
        method: "GET", path: `/v1/promos/${enc(code)}/redemptions`, query: page, options: o,
      }),
  };

  /** Per-user spend caps by UTC day or month. */
  readonly spendCaps = {
    put: (userId: string, period: T.SpendCapPeriod, body: T.SpendCapInput, o?: RequestOptions) =>
      this.request<T.SpendCap<AmountOf<M>>>({
        method: "PUT", path: `/v1/users/${enc(userId)}/spend-caps/${enc(period)}`, body, options: o,
      }),
    list: (userId: string, o?: RequestOptions) =>
      this.request<{ data: T.SpendCap<AmountOf<M>>[] }>({ method: "GET", path: `/v1/users/${enc(userId)}/spend-caps`, options: o }),
    delete: (userId: string, period: T.SpendCapPeriod, params: { model?: string } = {}, o?: RequestOptions) =>
      this.request<void>({
        method: "DELETE", path: `/v1/users/${enc(userId)}/spend-caps/${enc(period)}`, query: params, options: o,
      }),
  };

  /** The event log (what webhooks deliver). */
  readonly events = {
    list: (filters?: T.EventFilters, o?: RequestOptions) =>
      this.request<T.Page<T.Event>>({ method: "GET", path: "/v1/events", query: filters, options: o }),
    get: (eventId: string, o?: RequestOptions) =>
      this.request<T.Event>({ method: "GET", path: `/v1/events/${enc(eventId)}`, options: o }),
    /** Send an event again (admin scope): each delivery is pending again, due now. */
    redeliver: (eventId: string, body: T.RedeliverInput = {}, o?: RequestOptions) =>
      this.request<T.RedeliverResult>({ method: "POST", path: `/v1/events/${enc(eventId)}/redeliver`, body, options: o }),
  };

  /** Outbound webhook endpoints (admin scope), signed per Standard Webhooks with their `secret`. */
  readonly webhookEndpoints = {
    /** The answer carries `secret`, shown only here and by `rotateSecret`. */
    create: (body: T.WebhookEndpointCreate, o?: RequestOptions) =>
      this.request<T.WebhookEndpointWithSecret>({ method: "POST", path: "/v1/webhook-endpoints", body, options: o }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.request<T.Page<T.WebhookEndpoint>>({ method: "GET", path: "/v1/webhook-endpoints", query: page, options: o }),
    get: (endpointId: string, o?: RequestOptions) =>
      this.request<T.WebhookEndpoint>({ method: "GET", path: `/v1/webhook-endpoints/${enc(endpointId)}`, options: o }),
    update: (endpointId: string, body: T.WebhookEndpointUpdate, o?: RequestOptions) =>
      this.request<T.WebhookEndpoint>({ method: "PATCH", path: `/v1/webhook-endpoints/${enc(endpointId)}`, body, options: o }),
    delete: (endpointId: string, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/webhook-endpoints/${enc(endpointId)}`, options: o }),
    /** A new secret; the replaced one keeps signing for `grace_seconds` (server default 24 h). */
    rotateSecret: (endpointId: string, body: T.RotateSecretInput = {}, o?: RequestOptions) =>
      this.request<T.WebhookEndpointWithSecret>({
        method: "POST", path: `/v1/webhook-endpoints/${enc(endpointId)}/rotate-secret`, body, options: o,
      }),
    /** Send a `webhook.test` event to this endpoint only; resolves to the event. */
    test: (endpointId: string, o?: RequestOptions) =>
      this.request<T.Event>({ method: "POST", path: `/v1/webhook-endpoints/${enc(endpointId)}/test`, options: o }),
    /** The endpoint's delivery attempts, newest first. */
    deliveries: (endpointId: string, filters?: T.WebhookAttemptFilters, o?: RequestOptions) =>
      this.request<T.Page<T.WebhookAttempt>>({
        method: "GET", path: `/v1/webhook-endpoints/${enc(endpointId)}/deliveries`, query: filters, options: o,
      }),
  };

  readonly analytics = {
    spend: (params: T.SpendParams, o?: RequestOptions) =>
      this.request<T.SpendReport<AmountOf<M>>>({ method: "GET", path: "/v1/analytics/spend", query: params, options: o }),
    summary: (params: T.SummaryParams = {}, o?: RequestOptions) =>
      this.request<T.Summary<AmountOf<M>>>({ method: "GET", path: "/v1/analytics/summary", query: params, options: o }),
    /** Credits outstanding now, paid ones valued per currency (deferred revenue). */
    liability: (o?: RequestOptions) =>
      this.request<T.Liability<AmountOf<M>>>({ method: "GET", path: "/v1/analytics/liability", options: o }),
  };

  /** The project's own Stripe and Razorpay accounts (admin scope); secrets come back masked. */
  readonly providers = {
    putStripe: (body: T.StripeAccountInput, o?: RequestOptions) =>
      this.request<T.ProviderAccount>({ method: "PUT", path: "/v1/providers/stripe", body, options: o }),
    putRazorpay: (body: T.RazorpayAccountInput, o?: RequestOptions) =>
      this.request<T.ProviderAccount>({ method: "PUT", path: "/v1/providers/razorpay", body, options: o }),
    list: (o?: RequestOptions) =>
      this.request<{ data: T.ProviderAccount[] }>({ method: "GET", path: "/v1/providers", options: o }),
    delete: (provider: T.CheckoutProvider, o?: RequestOptions) =>
      this.request<void>({ method: "DELETE", path: `/v1/providers/${enc(provider)}`, options: o }),
  };

  /** Top-ups paid through the project's provider account; credits are granted once paid. */
  readonly payments = {
    create: (body: T.PaymentCreate, o?: RequestOptions) =>
      this.request<T.Payment<AmountOf<M>>>({ method: "POST", path: "/v1/payments", body, options: o }),
    list: (filters?: T.PaymentFilters, o?: RequestOptions) =>
      this.request<T.Page<T.Payment<AmountOf<M>>>>({ method: "GET", path: "/v1/payments", query: filters, options: o }),
    get: (paymentId: string, o?: RequestOptions) =>
      this.request<T.Payment<AmountOf<M>>>({ method: "GET", path: `/v1/payments/${enc(paymentId)}`, options: o }),
  };

  /** `GET /healthz` (no I/O on the server). */
  health(o?: RequestOptions): Promise<T.Health> {
    return this.request<T.Health>({ method: "GET", path: "/healthz", options: o });
  }

  // ---- credly-compatible methods -----------------------------------------------------------

  /** Hold credits before a model call. Check `continue` before making the call. */
  startUsageTransaction(params: StartUsageParams, o?: RequestOptions): Promise<T.StartTransactionResult<AmountOf<M>>> {
    const userId = params.userId ?? params.user_id;
    if (!userId) throw new CreditdError("startUsageTransaction: `userId` is required");
    const body: T.StartTransactionInput = { user_id: userId, model: params.model };
    const tokens = tokensOrNull(params.provisionalTokens ?? params.provisional_tokens);
    if (tokens !== undefined) body.provisional_tokens = tokens;
    const feature = params.featureIdentifier ?? params.feature_identifier;
    if (feature !== undefined) body.feature_identifier = feature;
    if (params.metadata !== undefined) body.metadata = params.metadata;
    const ttl = params.holdTtlSeconds ?? params.hold_ttl_seconds;
    if (ttl !== undefined) body.hold_ttl_seconds = ttl;
    return this.transactions.start(body, o);
  }

  /**
   * Settle a transaction with the real usage (`success: false` releases the hold). When the
   * server cannot be reached (or answers 5xx) after every retry, the completion is written to
   * the spool and {@link CompletionSpooledError} is thrown: it will be delivered later.
   */
  completeUsageTransaction(
    transactionId: string,
    params?: CompleteUsageParams,
    o?: RequestOptions,
  ): Promise<T.CompleteTransactionResult<AmountOf<M>>>;
  completeUsageTransaction(params: CompleteUsageObjectParams, o?: RequestOptions): Promise<T.CompleteTransactionResult<AmountOf<M>>>;
  async completeUsageTransaction(
    first: string | CompleteUsageObjectParams,
    second?: CompleteUsageParams | RequestOptions,
    third?: RequestOptions,
  ): Promise<T.CompleteTransactionResult<AmountOf<M>>> {
    let transactionId: string | undefined;
    let params: CompleteUsageParams;
    let o: RequestOptions | undefined;
    if (typeof first === "string") {
      transactionId = first;
      params = (second as CompleteUsageParams | undefined) ?? {};
      o = third;
    } else {
      transactionId = first.transactionId ?? first.transaction_id;
      params = first;
      o = second as RequestOptions | undefined;
    }
    if (!transactionId) throw new CreditdError("completeUsageTransaction: `transactionId` is required");
    const body: T.CompleteTransactionInput = { success: params.success ?? true };
    const tokens = tokensOrNull(params.finalizedTokens ?? params.finalized_tokens);
    if (tokens !== undefined) body.finalized_tokens = tokens;
    if (params.metadata !== undefined) body.metadata = params.metadata;
    return this.completeWithSpool(transactionId, body, o);
  }

  private async completeWithSpool(
    transactionId: string,
    body: T.CompleteTransactionInput,
    o: RequestOptions = {},
  ): Promise<T.CompleteTransactionResult<AmountOf<M>>> {
    const text = stringifyJson(body);
    const idempotencyKey = o.idempotencyKey ?? (await randomId());
    try {
      return await this.request<T.CompleteTransactionResult<AmountOf<M>>>({
        method: "POST",
        path: `/v1/transactions/${enc(transactionId)}/complete`,
        rawBody: text,
        options: { ...o, idempotencyKey },
      });
    } catch (err) {
      if (!this.spool || !isTransient(err) || o.signal?.aborted) throw err;
      const entry: SpoolEntry = {
        id: await spoolEntryId(),
        transactionId,
        body: text,
        idempotencyKey,
        createdAt: new Date().toISOString(),
      };
      try {
        await this.spool.put(entry);
      } catch (spoolErr) {
        this.emit({ type: "spool_failed", transactionId, error: spoolErr });
        throw err;
      }
      this.spoolDirty = true;
      this.emit({ type: "spooled", entry, error: err });
      throw new CompletionSpooledError(transactionId, idempotencyKey, err);
    }
  }

  /** Create a user: `createUser("u_1")` or `createUser({ userId: "u_1", tierId, metadata })`. */
  createUser(params: string | CreateUserParams, o?: RequestOptions): Promise<T.User<AmountOf<M>>> {
    const p: CreateUserParams = typeof params === "string" ? { id: params } : params;
    const id = p.id ?? p.userId ?? p.user_id;
    if (!id) throw new CreditdError("createUser: `id` is required");
    const body: T.UserCreate = { id };
    const tier = p.tierId ?? p.tier_id;
    if (tier !== undefined) body.tier_id = tier;
    if (p.metadata !== undefined) body.metadata = p.metadata;
    return this.users.create(body, o);
  }

  getUser(userId: string, o?: RequestOptions): Promise<T.User<AmountOf<M>>> {
    return this.users.get(userId, o);
  }

  /** One page of users (`limit`, `starting_after`/`startingAfter`). */
  getUsers(params: T.PageParams & { startingAfter?: string } = {}, o?: RequestOptions): Promise<T.Page<T.User<AmountOf<M>>>> {
    return this.users.list(snakeKeys(params) as T.PageParams, o);
  }

  deleteUser(userId: string, o?: RequestOptions): Promise<void> {
    return this.users.delete(userId, o);
  }

  /** Move a user to a tier: `changeUserTier("u_1", "pro")` or `changeUserTier({ userId, tierId, resetBalance })`. */
  changeUserTier(
    userId: string,
    tierId: string,
    params?: { resetBalance?: boolean; reset_balance?: boolean },
    o?: RequestOptions,
  ): Promise<T.User<AmountOf<M>>>;
  changeUserTier(params: ChangeUserTierParams, o?: RequestOptions): Promise<T.User<AmountOf<M>>>;
  changeUserTier(
    first: string | ChangeUserTierParams,
    second?: string | RequestOptions,
    third?: { resetBalance?: boolean; reset_balance?: boolean },
    fourth?: RequestOptions,
  ): Promise<T.User<AmountOf<M>>> {
    let p: ChangeUserTierParams;
    let o: RequestOptions | undefined;
    if (typeof first === "string") {
      p = { userId: first, tierId: second as string, ...third };
      o = fourth;
    } else {
      p = first;
      o = second as RequestOptions | undefined;
    }
    const userId = p.userId ?? p.user_id;
    const tierId = p.tierId ?? p.tier_id;
    if (!userId || !tierId) throw new CreditdError("changeUserTier: `userId` and `tierId` are required");
    const body: T.AssignTier = { tier_id: tierId };
    const reset = p.resetBalance ?? p.reset_balance;
    if (reset !== undefined) body.reset_balance = reset;
    return this.users.assignTier(userId, body, o);
  }

  /** One page of transactions, filtered (`userId`/`user_id`, `status`, `model`, ...). */
  getTransactions(params: GetTransactionsParams = {}, o?: RequestOptions): Promise<T.Page<T.Transaction<AmountOf<M>>>> {
    return this.transactions.list(snakeKeys(params) as T.TransactionFilters, o);
  }

  getTransaction(transactionId: string, o?: RequestOptions): Promise<T.Transaction<AmountOf<M>>> {
    return this.transactions.get(transactionId, o);
  }

  /**
   * Meter one model call: hold the provisional tokens' price, run `fn` only if admitted, then
   * complete with the real usage (from `fn`'s result) or, if `fn` throws, release the hold.
   * Never throws for a failed start or a failed `fn`: read `status`.
   */
  async captureUsage<R>(
    params: StartUsageParams,
    fn: (transaction: T.StartTransactionResult<AmountOf<M>>) => Promise<R> | R,
    options: CaptureUsageOptions<R> = {},
  ): Promise<CaptureUsageResult<R, AmountOf<M>>> {
    // Start and complete each get their own Idempotency-Key: one key for both would be refused.
    const { idempotencyKey: _ignored, ...o } = options.requestOptions ?? {};
    let transaction: T.StartTransactionResult<AmountOf<M>>;
    try {
      transaction = await this.startUsageTransaction(params, o);
    } catch (error) {
      return { status: "start_failed", reason: null, error, spooled: false };
    }
    if (!transaction.continue) {
      return { status: "insufficient_credits", reason: transaction.reason, transaction, spooled: false };
    }
    let result: R;
    try {
      result = await fn(transaction);
    } catch (error) {
      const done = await this.settle(transaction.transaction_id, { success: false }, options.completionMetadata, o);
      if ("completionError" in done) {
        return { status: "execution_error_completion_failed", reason: null, error, transaction, spooled: false, completionError: done.completionError };
      }
      return { status: "executed_error", reason: null, error, transaction, ...done };
    }
    let tokens: T.TokenUsageInput | null | undefined;
    try {
      tokens = options.extractTokens ? options.extractTokens(result) : defaultExtractTokens(result);
    } catch {
      tokens = undefined; // a broken extractor must not lose the usage: charge the provisional counts
    }
    const body: T.CompleteTransactionInput = { success: true };
    if (tokens) body.finalized_tokens = toTokenUsage(tokens);
    const done = await this.settle(transaction.transaction_id, body, options.completionMetadata, o);
    if ("completionError" in done) {
      return { status: "executed_success_completion_failed", reason: null, result, transaction, spooled: false, completionError: done.completionError };
    }
    return { status: "executed_success", reason: null, result, transaction, ...done };
  }

  private async settle(
    transactionId: string,
    body: T.CompleteTransactionInput,
    completionMetadata: T.Metadata | undefined,
    o: RequestOptions | undefined,
  ): Promise<{ completion: T.CompleteTransactionResult<AmountOf<M>>; spooled: false } | { spooled: true } | { completionError: unknown }> {
    if (completionMetadata !== undefined) body.metadata = completionMetadata;
    try {
      return { completion: await this.completeWithSpool(transactionId, body, o), spooled: false };
    } catch (err) {
      if (err instanceof CompletionSpooledError) return { spooled: true };
      return { completionError: err };
    }
  }

  // ---- the spool ---------------------------------------------------------------------------

  /**
   * Deliver spooled completions, oldest first, each with its original Idempotency-Key. Stops at
   * the first one that cannot be delivered yet (server unreachable) and leaves the rest. Safe to
   * call concurrently (one flush runs at a time) and from several processes.
   */
  flushSpool(o?: RequestOptions): Promise<FlushResult<AmountOf<M>>> {
    if (!this.spool) return Promise.resolve({ delivered: [], rejected: [], pending: 0 });
    this.flushing ??= this.runFlush(this.spool, o).finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private async runFlush(spool: Spool, o: RequestOptions = {}): Promise<FlushResult<AmountOf<M>>> {
    const out: FlushResult<AmountOf<M>> = { delivered: [], rejected: [], pending: 0 };
    const entries = await spool.list();
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as SpoolEntry;
      try {
        const result = await this.request<T.CompleteTransactionResult<AmountOf<M>>>({
          method: "POST",
          path: `/v1/transactions/${enc(entry.transactionId)}/complete`,
          rawBody: entry.body,
          options: { ...o, idempotencyKey: entry.idempotencyKey },
        });
        await spool.remove(entry.id);
        out.delivered.push({ entry, result });
        this.emit({ type: "delivered", entry });
      } catch (err) {
        const permanent =
          err instanceof CreditdApiError && !isTransient(err) && err.status !== 401 && err.status !== 403;
        if (!permanent) {
          // Unreachable, or a key problem to fix: keep this and every later entry.
          out.pending = entries.length - i;
          out.error = err;
          this.emit({ type: "flush_failed", error: err });
          return out;
        }
        if (spool.reject) await spool.reject(entry, err);
        else await spool.remove(entry.id);
        out.rejected.push({ entry, error: err });
        this.emit({ type: "rejected", entry, error: err });
      }
    }
    this.spoolDirty = false;
    return out;
  }

  private maybeAutoFlush(): void {
    if (!this.spool || !this.autoFlush || this.flushing || !this.spoolDirty) return;
    const now = Date.now();
    if (now - this.lastAutoFlush < 1000) return;
    this.lastAutoFlush = now;
    // In the background: the caller's request is not slowed down by the spool.
    void this.flushSpool().catch((error: unknown) => this.emit({ type: "flush_failed", error }));
  }

  private emit(event: SpoolEvent): void {
    try {
      this.onSpoolEvent?.(event);
    } catch {
      // A failing listener must not break a call.
    }
  }

  /** Stop the flush interval and wait for a running flush. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flushing?.catch(() => undefined);
  }
}

function snakeKeys(params: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(params)) if (v !== undefined) out[snake(k)] = v;
  return out;
}

function resolveSpool(option: Spool | string | false | undefined): Spool | null {
  if (option === false) return null;
  if (typeof option === "object" && option !== null) return option;
  if (typeof option === "string") return new FileSpool(option);
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  if (!proc?.versions?.node) return null; // no file system here: pass a Spool of your own
  return new FileSpool(envVar("CREDITD_SPOOL_DIR") ?? ".creditd-spool");
}

// ---- operator client -------------------------------------------------------------------------

export interface CreditdAdminOptions {
  /** The operator token (`CREDITD_ADMIN_TOKEN` of the server). */
  adminToken: string;
  baseUrl?: string;
  maxRetries?: number;
  timeoutMs?: number;
  fetch?: FetchLike;
}

/** Operator endpoints (`/v1/admin/projects`), authenticated by the server's admin token. */
export class CreditdAdmin {
  private readonly transport: Transport;

  constructor(options: CreditdAdminOptions) {
    const fetchImpl = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
    if (typeof fetchImpl !== "function") throw new CreditdError("CreditdAdmin: no global fetch; pass `fetch`");
    this.transport = new Transport({
      baseUrl: options.baseUrl ?? envVar("CREDITD_BASE_URL") ?? "http://localhost:8000",
      headers: { accept: "application/json", authorization: `Bearer ${options.adminToken}` },
      fetch: fetchImpl,
      maxRetries: options.maxRetries ?? 3,
      timeoutMs: options.timeoutMs ?? 30_000,
      retryBaseDelayMs: 250,
      retryMaxDelayMs: 8_000,
      maxRetryAfterMs: 60_000,
      amounts: "string",
    });
  }

  readonly projects = {
    /** Create a project; its admin API key is in `api_key.key` (shown only here). Not retried after an ambiguous failure. */
    create: (body: { name: string }, o?: RequestOptions) =>
      this.transport.request<T.ProjectCreated>({ method: "POST", path: "/v1/admin/projects", body, options: o, noIdempotencyKey: true }),
    list: (page?: T.PageParams, o?: RequestOptions) =>
      this.transport.request<T.Page<T.Project>>({ method: "GET", path: "/v1/admin/projects", query: page, options: o }),
    get: (projectId: string, o?: RequestOptions) =>
      this.transport.request<T.Project>({ method: "GET", path: `/v1/admin/projects/${enc(projectId)}`, options: o }),
  };
}

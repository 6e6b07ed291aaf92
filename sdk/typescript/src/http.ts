/** The transport: fetch with timeouts, retries with backoff, Idempotency-Key on every POST. */

import {
  CreditdApiError,
  CreditdConnectionError,
  CreditdTimeoutError,
  errorFor,
  parseRetryAfter,
  type Problem,
} from "./errors.js";
import { parseJson, stringifyJson, type AmountsMode } from "./json.js";

export const SDK_VERSION = "0.1.0";

/** The subset of `fetch` the client uses (pass your own, e.g. a mock or an instrumented one). */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

/** Per-call options, accepted as the last argument of every method. */
export interface RequestOptions {
  /** Use this Idempotency-Key instead of a random one (POST only). */
  idempotencyKey?: string;
  /** Per-attempt timeout; default the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Retries after the first attempt; default the client's `maxRetries`. */
  maxRetries?: number;
  /** Abort the call (no further retries). */
  signal?: AbortSignal;
  /** Extra headers, e.g. `X-Request-Id`. */
  headers?: Record<string, string>;
}

/** What `onRetry` is told before each wait. */
export interface RetryInfo {
  method: string;
  path: string;
  /** The attempt that just failed (0 = the first). */
  attempt: number;
  /** How long the client waits before the next attempt. */
  delayMs: number;
  /** The HTTP status that caused the retry; absent for a network error or timeout. */
  status?: number;
  error: Error;
  idempotencyKey?: string;
}

export interface TransportConfig {
  baseUrl: string;
  headers: Record<string, string>;
  fetch: FetchLike;
  maxRetries: number;
  timeoutMs: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  /** Upper bound for a server's `Retry-After`. */
  maxRetryAfterMs: number;
  amounts: AmountsMode;
  onRetry?: (info: RetryInfo) => void;
  /** Called after every HTTP answer (any status): the client uses it to trigger spool flushes. */
  onAnswer?: () => void;
}

/** Query parameters: undefined and null are left out, Dates sent as RFC 3339. */
export type Query = object;

export interface Call {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  path: string;
  query?: Query | undefined;
  /** A JSON-able body, or already serialized JSON text (sent byte for byte). */
  body?: unknown;
  rawBody?: string;
  options?: RequestOptions | undefined;
  /** Send no Idempotency-Key (operator routes keep no idempotency records). */
  noIdempotencyKey?: boolean;
}

/** Statuses worth another attempt with the same Idempotency-Key. */
const RETRY_STATUSES = new Set([429, 502, 503, 504]);

/** A random UUID: Web Crypto where it exists (Node >= 19, browsers, edge), else node:crypto. */
export async function randomId(): Promise<string> {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const nodeCrypto = await import("node:crypto"); // Node 18 keeps the global behind a flag
  return nodeCrypto.randomUUID();
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("The operation was aborted", "AbortError");
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal as AbortSignal));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export class Transport {
  constructor(readonly config: TransportConfig) {}

  /** Exponential backoff with jitter: base·2^attempt, capped, times a random factor in [0.5, 1). */
  backoffMs(attempt: number): number {
    const { retryBaseDelayMs: base, retryMaxDelayMs: max } = this.config;
    const raw = Math.min(max, base * 2 ** attempt);
    return Math.round(raw * (0.5 + Math.random() / 2));
  }

  url(path: string, query?: Query): string {
    const base = this.config.baseUrl.replace(/\/+$/, "");
    let url = base + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query) as [string, unknown][]) {
        if (v === undefined || v === null) continue;
        params.append(k, v instanceof Date ? v.toISOString() : String(v));
      }
      const qs = params.toString();
      if (qs) url += `?${qs}`;
    }
    return url;
  }

  /** One call, with retries; resolves to the parsed body (undefined for 204). */
  request<T>(call: Call): Promise<T> {
    return this.send<T>(call, false);
  }

  /**
   * One call whose successful body is streamed: resolves, once the headers of a 2xx answer
   * have arrived, to the `Response` with its body unread (the per-attempt timeout stops at the
   * headers; the caller's `signal` still aborts the body). Errors (problem+json) and retries
   * before that are those of `request`.
   */
  stream(call: Call): Promise<Response> {
    return this.send<Response>(call, true);
  }

  private async send<T>(call: Call, stream: boolean): Promise<T> {
    const { method, options = {} } = call;
    const body = call.rawBody ?? (call.body === undefined ? undefined : stringifyJson(call.body));
    const idempotencyKey =
      method === "POST" && !call.noIdempotencyKey ? (options.idempotencyKey ?? (await randomId())) : undefined;
    const maxRetries = options.maxRetries ?? this.config.maxRetries;
    const timeoutMs = options.timeoutMs ?? this.config.timeoutMs;
    const url = this.url(call.path, call.query);
    const headers: Record<string, string> = { ...this.config.headers, ...options.headers };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (idempotencyKey !== undefined) headers["idempotency-key"] = idempotencyKey;
    // A POST without a key (operator routes ignore keys) must not be repeated after an
    // ambiguous failure: it might have been applied.
    const ambiguousIsSafe = method !== "POST" || idempotencyKey !== undefined;

    for (let attempt = 0; ; attempt++) {
      let error: Error;
      let status: number | undefined;
      let retryAfterMs: number | null = null;
      try {
        if (stream) return (await this.attemptStream(url, method, headers, timeoutMs, options.signal)) as T;
        return await this.attempt<T>(url, method, headers, body, timeoutMs, options.signal);
      } catch (err) {
        if (options.signal?.aborted) throw err;
        if (err instanceof CreditdApiError) {
          status = err.status;
          const retryable =
            (RETRY_STATUSES.has(err.status) && (ambiguousIsSafe || err.status === 429 || err.status === 503)) ||
            (err.status === 409 && err.code === "idempotency_key_in_flight");
          if (!retryable || attempt >= maxRetries) throw err;
          const seconds = parseRetryAfter(err.headers.get("retry-after"));
          if (seconds !== null) retryAfterMs = Math.min(seconds * 1000, this.config.maxRetryAfterMs);
        } else if (err instanceof CreditdConnectionError) {
          if (!ambiguousIsSafe || attempt >= maxRetries) throw err;
        } else {
          throw err;
        }
        error = err;
      }
      const delayMs = Math.max(this.backoffMs(attempt), retryAfterMs ?? 0);
      const info: RetryInfo = { method, path: call.path, attempt, delayMs, error };
      if (status !== undefined) info.status = status;
      if (idempotencyKey !== undefined) info.idempotencyKey = idempotencyKey;
      this.config.onRetry?.(info);
      await sleep(delayMs, options.signal);
    }
  }

  private async attempt<T>(
    url: string,
    method: string,
    headers: Record<string, string>,
    body: string | undefined,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<T> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const onAbort = (): void => controller.abort(signal?.reason);
    if (signal?.aborted) controller.abort(signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    let response: Response;
    let text: string;
    try {
      const init: RequestInit = { method, headers, signal: controller.signal };
      if (body !== undefined) init.body = body;
      response = await this.config.fetch(url, init);
      text = await response.text();
    } catch (err) {
      if (signal?.aborted) throw err;
      if (timedOut) throw new CreditdTimeoutError(`${method} ${url}: no answer within ${timeoutMs} ms`, { cause: err });
      const reason = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
      throw new CreditdConnectionError(`${method} ${url}: ${reason}`, { cause: err });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    this.config.onAnswer?.();
    const parsed = text === "" ? undefined : this.parse(text, response.headers);
    if (response.ok) return parsed as T;
    const problem = (parsed !== null && typeof parsed === "object" ? parsed : {}) as Partial<Problem>;
    throw errorFor(response.status, problem, response.headers, parsed);
  }

  /** `attempt` for a streamed body: a 2xx answer is returned as soon as its headers arrive. */
  private async attemptStream(
    url: string,
    method: string,
    headers: Record<string, string>,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<Response> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const onAbort = (): void => controller.abort(signal?.reason);
    if (signal?.aborted) controller.abort(signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    let response: Response;
    try {
      response = await this.config.fetch(url, { method, headers, signal: controller.signal });
    } catch (err) {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (signal?.aborted) throw err;
      if (timedOut) throw new CreditdTimeoutError(`${method} ${url}: no answer within ${timeoutMs} ms`, { cause: err });
      const reason = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
      throw new CreditdConnectionError(`${method} ${url}: ${reason}`, { cause: err });
    }
    clearTimeout(timer); // the headers are in: the body may take as long as it takes
    this.config.onAnswer?.();
    if (response.ok) return response;
    signal?.removeEventListener("abort", onAbort);
    let text: string;
    try {
      text = await response.text();
    } catch (err) {
      throw new CreditdConnectionError(`${method} ${url}: the error body was cut short`, { cause: err });
    }
    const parsed = text === "" ? undefined : this.parse(text, response.headers);
    const problem = (parsed !== null && typeof parsed === "object" ? parsed : {}) as Partial<Problem>;
    throw errorFor(response.status, problem, response.headers, parsed);
  }

  private parse(text: string, headers: Headers): unknown {
    const type = headers.get("content-type") ?? "";
    if (!type.includes("json")) return text;
    try {
      return parseJson(text, this.config.amounts);
    } catch {
      return text; // a proxy's HTML error page, say: keep it for the error
    }
  }
}

/** Errors raised by the client: API problems (problem+json) and transport failures. */

/** One entry of a validation problem's `errors` list. */
export interface ProblemFieldError {
  loc?: (string | number)[];
  msg?: string;
  type?: string;
  [key: string]: unknown;
}

/** The RFC 9457 problem+json body every creditd error carries. */
export interface Problem {
  type: string;
  code: string;
  title: string;
  status: number;
  detail: string;
  instance: string;
  request_id?: string | null;
  errors?: ProblemFieldError[] | null;
  [key: string]: unknown;
}

/** Base of every error this SDK throws. */
export class CreditdError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A ledger export ended without its `ledger_export_end` trailer (the connection or the
 * database failed mid-stream). Resume with `after` = `lastEntryId` and `prevHash` = `lastHash`.
 */
export class CreditdExportIncompleteError extends CreditdError {
  readonly code = "export_incomplete";
  /** The `id` of the last entry line received, if any. */
  readonly lastEntryId: number | null;
  /** The `hash` of the last line received, if any. */
  readonly lastHash: string | null;

  constructor(message: string, last: { id: number | null; hash: string | null }, options?: { cause?: unknown }) {
    super(message, options);
    this.lastEntryId = last.id;
    this.lastHash = last.hash;
  }
}

/** The server answered with an error status; the problem+json fields are on the error. */
export class CreditdApiError extends CreditdError {
  /** e.g. `/errors/transaction_not_found` */
  readonly type: string;
  /** The slug, e.g. `transaction_not_found`. */
  readonly code: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly instance: string;
  readonly request_id: string | null;
  readonly errors: ProblemFieldError[] | null;
  /** The whole parsed body (or the raw text when it was not problem+json). */
  readonly body: unknown;
  readonly headers: Headers;

  constructor(status: number, problem: Partial<Problem>, headers: Headers, body: unknown) {
    const code = problem.code ?? slugFromType(problem.type) ?? `http_${status}`;
    const title = problem.title ?? `HTTP ${status}`;
    const detail = problem.detail ?? title;
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.type = problem.type ?? `/errors/${code}`;
    this.title = title;
    this.detail = detail;
    this.instance = problem.instance ?? "";
    this.request_id = problem.request_id ?? headers.get("x-request-id");
    this.errors = problem.errors ?? null;
    this.body = body;
    this.headers = headers;
  }

  /** camelCase alias of `request_id`. */
  get requestId(): string | null {
    return this.request_id;
  }
}

/** 400 or 422: the request was malformed (see `errors` for the fields). */
export class ValidationError extends CreditdApiError {}
/** 401: missing, unknown, revoked or expired API key. */
export class UnauthorizedError extends CreditdApiError {}
/** 402: not enough credits (e.g. a debit larger than the available balance). */
export class InsufficientCreditsError extends CreditdApiError {}
/** 403: the key lacks the scope, or `X-Project-Id` does not match. */
export class ForbiddenError extends CreditdApiError {}
/** 404: no such object in this project. */
export class NotFoundError extends CreditdApiError {}
/** 409: a business conflict (`user_exists`, `transaction_already_completed`, ...). */
export class ConflictError extends CreditdApiError {}
/** 429: rate limited; `retryAfter` is in seconds (from the `Retry-After` header). */
export class RateLimitError extends CreditdApiError {
  get retryAfter(): number | null {
    return parseRetryAfter(this.headers.get("retry-after"));
  }
}
/** 5xx: the server failed; a retry with the same Idempotency-Key is safe. */
export class ServerError extends CreditdApiError {
  get retryAfter(): number | null {
    return parseRetryAfter(this.headers.get("retry-after"));
  }
}

/** The request never got an HTTP answer (connection refused/reset, DNS, TLS, ...). */
export class CreditdConnectionError extends CreditdError {}
/** No answer within `timeoutMs`. The request may or may not have reached the server. */
export class CreditdTimeoutError extends CreditdConnectionError {}

/**
 * A completion could not be delivered (network error or 5xx after every retry) and was written
 * to the spool instead. It is not lost: `flushSpool()` (or the automatic flush) delivers it
 * later with the same Idempotency-Key, and the server charges it even after the hold expired.
 */
export class CompletionSpooledError extends CreditdError {
  constructor(
    readonly transactionId: string,
    readonly idempotencyKey: string,
    cause: unknown,
  ) {
    super(`Completion of transaction ${transactionId} was spooled for later delivery`, { cause });
  }
}

function slugFromType(type: string | undefined): string | undefined {
  if (!type) return undefined;
  const slug = type.split("/").pop();
  return slug || undefined;
}

/** `Retry-After` as seconds (delta-seconds or an HTTP date); null when absent or unreadable. */
export function parseRetryAfter(value: string | null): number | null {
  if (value === null || value.trim() === "") return null;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return null;
  return Math.max(0, (at - Date.now()) / 1000);
}

/** The error class for a response status. */
export function errorFor(status: number, problem: Partial<Problem>, headers: Headers, body: unknown): CreditdApiError {
  const args = [status, problem, headers, body] as const;
  if (status === 400 || status === 422) return new ValidationError(...args);
  if (status === 401) return new UnauthorizedError(...args);
  if (status === 402) return new InsufficientCreditsError(...args);
  if (status === 403) return new ForbiddenError(...args);
  if (status === 404) return new NotFoundError(...args);
  if (status === 409) return new ConflictError(...args);
  if (status === 429) return new RateLimitError(...args);
  if (status >= 500) return new ServerError(...args);
  return new CreditdApiError(...args);
}

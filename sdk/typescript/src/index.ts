/** @creditd/sdk — the official TypeScript/JavaScript client for creditd. */

export {
  Creditd,
  CreditdAdmin,
  paginate,
  toTokenUsage,
  tokensFromUsage,
  type AmountOf,
  type CaptureUsageOptions,
  type CaptureUsageResult,
  type CaptureUsageStatus,
  type ChangeUserTierParams,
  type CompleteUsageObjectParams,
  type CompleteUsageParams,
  type CreateUserParams,
  type CreditdAdminOptions,
  type CreditdOptions,
  type FlushResult,
  type GetTransactionsParams,
  type SpoolEvent,
  type StartUsageParams,
} from "./client.js";
export {
  CompletionSpooledError,
  CreditdApiError,
  CreditdConnectionError,
  CreditdError,
  CreditdExportIncompleteError,
  CreditdTimeoutError,
  ConflictError,
  ForbiddenError,
  InsufficientCreditsError,
  NotFoundError,
  RateLimitError,
  ServerError,
  UnauthorizedError,
  ValidationError,
  type Problem,
  type ProblemFieldError,
} from "./errors.js";
export { SDK_VERSION, type FetchLike, type RequestOptions, type RetryInfo } from "./http.js";
export { AMOUNT_KEYS, JsonParseError, parseJson, stringifyJson, type AmountsMode } from "./json.js";
export { FileSpool, type Spool, type SpoolEntry } from "./spool.js";
export type * from "./types.js";

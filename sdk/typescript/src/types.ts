/**
 * Request and response shapes of the creditd v1 API (fields are the API's snake_case).
 *
 * Response types take the amount type `A`: `string` (exact decimal text, the default) or
 * `number` (with `amounts: "number"`). Requests take {@link AmountInput}: a decimal string is
 * sent digit for digit, a number as its shortest text.
 */

/** An amount you send: `"12.5"` (exact) or `12.5`. */
export type AmountInput = string | number;
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Metadata = Record<string, unknown>;
/** RFC 3339 timestamp; a `Date` is sent as its ISO string. */
export type Timestamp = string;
export type TimestampInput = string | Date;

export type Scope = "admin" | "write" | "read" | "usage";
export type DenyReason = "insufficient_credits" | "spend_cap_reached" | "concurrency_limit";
export type TransactionStatus = "pending" | "completed" | "failed" | "expired" | "denied";

/** Cursor pagination parameters of every list. */
export interface PageParams {
  /** 1-100, default 20. */
  limit?: number;
  /** The id (cursor) of the last item seen: `next_cursor` of the previous page. */
  starting_after?: string;
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
  next_cursor: string | null;
}

// ---- tokens -------------------------------------------------------------------------------

/** Token counts as the API takes them. `input_tokens` excludes cached input (priced apart). */
export interface TokenUsage {
  input_tokens?: number;
  output_tokens?: number;
  cached_input_tokens?: number;
  /** Another name for cached_input_tokens. The metrics below are priced only by expressions. */
  cache_read_tokens?: number;
  cache_write_tokens?: number;
  reasoning_tokens?: number;
  tool_calls?: number;
  search_queries?: number;
  search_results?: number;
  web_search_calls?: number;
  code_exec_calls?: number;
  images?: number;
  audio_seconds?: number | string;
}

/** Token counts in either spelling; the client sends them as {@link TokenUsage}. */
export interface TokenUsageInput extends TokenUsage {
  inputTokens?: number;
  outputTokens?: number;
  cachedInputTokens?: number;
}

// ---- project and keys ----------------------------------------------------------------------

export interface ProjectSettings<A = string> {
  auto_create_users: boolean;
  default_hold_ttl_seconds: number;
  low_balance_thresholds: A[];
  /** Credits per major unit of each currency (`{ USD: "100" }`); lets a top-up omit `credits`. */
  credits_per_unit: Record<string, A>;
  [key: string]: unknown;
}

export interface Project<A = string> {
  id: string;
  name: string;
  settings: ProjectSettings<A>;
  created_at: Timestamp;
}

export interface ProjectUpdate {
  name?: string;
  settings?: {
    auto_create_users?: boolean;
    default_hold_ttl_seconds?: number;
    low_balance_thresholds?: AmountInput[];
    /** Replaces the whole map; `{}` removes every rate. */
    credits_per_unit?: Record<string, AmountInput> | null;
  };
}

export interface ProjectCreated<A = string> extends Project<A> {
  api_key: { id: string; key: string; scopes: Scope[] };
}

export interface ApiKeyCreate {
  name: string;
  scopes: Scope[];
  expires_at?: TimestampInput | null;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  scopes: Scope[];
  created_at: Timestamp;
  expires_at: Timestamp | null;
  revoked_at: Timestamp | null;
}

export interface ApiKeyCreated extends ApiKey {
  /** The secret: shown only in this response. */
  key: string;
}

// ---- models (prices) -----------------------------------------------------------------------

/** Per-1K prices (input and output), or an `expression` over the usage metrics: one form. */
export type ModelPriceInput =
  | {
      input_price_per_1k: AmountInput;
      output_price_per_1k: AmountInput;
      cached_input_price_per_1k?: AmountInput | null;
      request_price?: AmountInput | null;
    }
  | { expression: string };

export interface ModelPrice<A = string> {
  id: string;
  /** null when an expression prices the model */
  input_price_per_1k: A | null;
  output_price_per_1k: A | null;
  cached_input_price_per_1k: A | null;
  request_price: A;
  expression: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface Job<A = string> {
  name: string;
  price: A;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface EvaluateInput {
  model: string;
  tokens: TokenUsage;
  user_id?: string | null;
}

export interface PriceEvaluation<A = string> {
  credits: A;
  /** kind "per_1k" (prices and parts) or "expression" (expression, variables, value) */
  breakdown: { kind: "per_1k" | "expression"; multiplier: A; credits: A; [key: string]: unknown };
}

// ---- users, credits, ledger ----------------------------------------------------------------

export interface Balance<A = string> {
  available: A;
  held: A;
  total: A;
}

export interface User<A = string> {
  id: string;
  tier_id: string | null;
  features: Record<string, unknown>;
  metadata: Metadata;
  created_at: Timestamp;
  balance: Balance<A>;
}

export interface UserCreate {
  id: string;
  tier_id?: string | null;
  metadata?: Metadata;
}

export interface UserUpdate {
  metadata?: Metadata | null;
}

export interface AssignTier {
  tier_id: string;
  reset_balance?: boolean;
}

export type GrantSource = "adjustment" | "purchase" | "promo" | "bonus";
/** Paid credits were bought (they carry their money); promotional ones were given. */
export type GrantCategory = "paid" | "promotional";

export interface CreditGrantInput {
  amount: AmountInput;
  reason?: string | null;
  expires_at?: TimestampInput | null;
  source?: GrantSource;
  /** Default `promotional`. */
  category?: GrantCategory;
}

export interface Grant<A = string> {
  id: string;
  amount: A;
  remaining: A;
  source: string;
  reason: string | null;
  expires_at: Timestamp | null;
  created_at: Timestamp;
  category: GrantCategory;
  /** The payment that bought these credits. */
  payment_id: string | null;
  /** Money paid per credit, in `cost_currency`; null when unknown. */
  cost_basis: A | null;
  cost_currency: string | null;
  [key: string]: unknown;
}

export interface GrantCreated<A = string> extends Grant<A> {
  balance: A;
}

export interface DebitInput {
  amount: AmountInput;
  reason?: string | null;
}

export interface Debit<A = string> {
  ledger_entry_id: number;
  amount: A;
  balance: A;
}

export interface LedgerEntry<A = string> {
  id: number;
  kind: string;
  amount: A;
  held_amount: A;
  balance_after: A;
  total_after: A;
  held_after: A;
  transaction_id: string | null;
  grant_id: string | null;
  reason: string | null;
  created_at: Timestamp;
  /** The user whose account changed; on a team's ledger the member (null: team-level change). */
  user_id?: string | null;
}

// ---- ledger export -------------------------------------------------------------------------

/** `GET /v1/ledger/export` parameters (`after` + `prevHash` resume an export). */
export interface LedgerExportParams {
  /** Entries created at or after. */
  since?: Date | string;
  /** Entries created before. */
  until?: Date | string;
  /** Resume after this entry id (the last entry's `id`, or the trailer's `next_after`). */
  after?: number;
  /** Chain on from this hash (the last line's `hash`). */
  prevHash?: string;
}

/** One entry line of the ledger export. Later versions may add members. */
export interface LedgerExportEntry<A = string> {
  object: "ledger_entry";
  id: number;
  /** RFC 3339 UTC with microseconds. */
  created_at: string;
  /** The account's owner, or the member who charged a team; null on a team's own entries. */
  user_id: string | null;
  team_id: string | null;
  kind: string;
  amount: A;
  held_amount: A;
  total_after: A;
  held_after: A;
  transaction_id: string | null;
  grant_id: string | null;
  reason: string | null;
  prev_hash: string;
  /** SHA-256(prev_hash + the line without its prev_hash and hash members), hex. */
  hash: string;
  [key: string]: unknown;
}

/** The trailer of a complete export (its last line). */
export interface LedgerExportEnd {
  object: "ledger_export_end";
  project_id: string;
  since: string | null;
  until: string | null;
  horizon: string;
  after: number | null;
  entries: number;
  next_after: number | null;
  prev_hash: string;
  hash: string;
  [key: string]: unknown;
}

export type LedgerExportLine<A = string> = LedgerExportEntry<A> | LedgerExportEnd;

// ---- teams ---------------------------------------------------------------------------------

export interface Team<A = string> {
  id: string;
  name: string | null;
  metadata: Metadata;
  created_at: Timestamp;
  balance: Balance<A>;
}

export interface TeamCreate {
  id: string;
  name?: string | null;
  metadata?: Metadata;
}

export interface TeamUpdate {
  name?: string | null;
  metadata?: Metadata | null;
}

export type TeamRole = "owner" | "member";

export interface MemberSpendCapInput {
  period: "day" | "month";
  limit: AmountInput;
}

export interface TeamMemberInput {
  role?: TeamRole;
  /** Replaces the member's caps on the team's account (deny), at most one per period. */
  spend_caps?: MemberSpendCapInput[];
}

export interface TeamMember<A = string> {
  team_id: string;
  user_id: string;
  role: TeamRole;
  spend_caps: { period: "day" | "month"; limit: A }[];
  created_at: Timestamp;
  updated_at: Timestamp;
}

// ---- transactions and usage ----------------------------------------------------------------

export interface StartTransactionInput {
  user_id: string;
  model: string;
  /** Charge this team's account (the user must be a member). */
  team_id?: string | null;
  provisional_tokens?: TokenUsage | null;
  feature_identifier?: string | null;
  metadata?: Metadata;
  hold_ttl_seconds?: number | null;
}

export interface StartTransactionResult<A = string> {
  transaction_id: string;
  /** false: not admitted; do not make the model call. */
  continue: boolean;
  balance: A;
  credits_used: A;
  hold_amount: A;
  status: "pending" | "denied";
  expires_at: Timestamp | null;
  message: string;
  reason: DenyReason | null;
}

export interface CompleteTransactionInput {
  success: boolean;
  finalized_tokens?: TokenUsage | null;
  metadata?: Metadata;
}

export interface CompleteTransactionResult<A = string> {
  transaction_id: string;
  status: "completed" | "failed";
  credits_used: A;
  balance: A;
  balance_adjustment: A;
  /** true: the hold had expired; the usage was charged all the same. */
  late: boolean;
}

export interface ExtendTransactionInput {
  hold_ttl_seconds: number;
}

export interface RefundInput {
  amount?: AmountInput | null;
  reason?: string | null;
}

export interface Refund<A = string> {
  refund_id: string;
  amount: A;
  refunded_total: A;
  balance: A;
}

export interface Transaction<A = string> {
  id: string;
  user_id: string;
  /** The team whose account paid; null: the user's own. */
  team_id?: string | null;
  model: string;
  feature_identifier: string | null;
  status: TransactionStatus;
  reason: string | null;
  hold_amount: A;
  credits_used: A;
  refunded_total: A;
  provisional_tokens: TokenUsage | null;
  finalized_tokens: TokenUsage | null;
  metadata: Metadata;
  late: boolean;
  expires_at: Timestamp | null;
  completed_at: Timestamp | null;
  created_at: Timestamp;
}

export interface TransactionFilters extends PageParams {
  user_id?: string;
  team_id?: string;
  status?: TransactionStatus;
  model?: string;
  feature_identifier?: string;
  created_after?: TimestampInput;
  created_before?: TimestampInput;
}

/** `model` with `tokens`, or a fixed-cost `job` (`quantity` runs, default 1). */
export interface UsageInput {
  user_id: string;
  model?: string;
  team_id?: string | null;
  tokens?: TokenUsage;
  job?: string;
  quantity?: number;
  feature_identifier?: string | null;
  metadata?: Metadata;
}

export interface UsageResult<A = string> {
  transaction_id: string;
  status: "completed";
  credits_used: A;
  balance: A;
}

export interface CheckInput {
  user_id: string;
  team_id?: string | null;
  model?: string | null;
  provisional_tokens?: TokenUsage | null;
  amount?: AmountInput | null;
}

export interface CheckResult<A = string> {
  allowed: boolean;
  reason: DenyReason | null;
  available: A;
  required: A;
}

// ---- tiers ---------------------------------------------------------------------------------

export type RefillInterval = "none" | "day" | "week" | "month" | "year";

export interface ModelOverrideInput {
  input_price_per_1k?: AmountInput | null;
  output_price_per_1k?: AmountInput | null;
  cached_input_price_per_1k?: AmountInput | null;
  request_price?: AmountInput | null;
  price_multiplier?: AmountInput | null;
}

export interface TierUpdate {
  name?: string;
  credits?: AmountInput | null;
  refill_interval?: RefillInterval | null;
  refill_mode?: "reset" | "rollover" | null;
  rollover_cap?: AmountInput | null;
  allow_overage?: boolean | null;
  overage_limit?: AmountInput | null;
  price_multiplier?: AmountInput | null;
  model_overrides?: Record<string, ModelOverrideInput> | null;
  max_concurrent_transactions?: number | null;
  features?: Record<string, unknown> | null;
  is_default?: boolean | null;
}

export interface TierCreate extends TierUpdate {
  id: string;
  name: string;
}

export interface Tier<A = string> {
  id: string;
  name: string;
  credits: A;
  refill_interval: RefillInterval;
  refill_mode: "reset" | "rollover";
  rollover_cap: A | null;
  allow_overage: boolean;
  overage_limit: A | null;
  price_multiplier: A;
  model_overrides: Record<string, Record<string, A | null>>;
  max_concurrent_transactions: number | null;
  features: Record<string, unknown>;
  is_default: boolean;
  created_at: Timestamp;
  updated_at: Timestamp;
}

// ---- plans and subscriptions ---------------------------------------------------------------

export interface PriceInput {
  amount: AmountInput;
  /** ISO 4217, upper case: `USD`. */
  currency: string;
}

export interface PlanUpdate {
  name?: string | null;
  price?: PriceInput | null;
  credits_per_period?: AmountInput | null;
  tier_id?: string | null;
  stripe_price_id?: string | null;
  razorpay_plan_id?: string | null;
  active?: boolean | null;
}

export interface PlanCreate {
  id: string;
  name: string;
  price: PriceInput;
  interval: "day" | "month" | "year";
  credits_per_period: AmountInput;
  tier_id?: string | null;
  stripe_price_id?: string | null;
  razorpay_plan_id?: string | null;
  active?: boolean;
}

export interface Plan<A = string> {
  id: string;
  name: string;
  price: { amount: A; currency: string };
  interval: "day" | "month" | "year";
  credits_per_period: A;
  tier_id: string | null;
  stripe_price_id: string | null;
  razorpay_plan_id: string | null;
  active: boolean;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export type PaymentProvider = "stripe" | "razorpay" | "manual";

export interface SubscriptionCreate {
  plan_id: string;
  provider: PaymentProvider;
  /** Stripe: where Checkout sends the user after paying. */
  success_url?: string | null;
  /** Stripe: where Checkout sends the user who gives up. */
  cancel_url?: string | null;
}

export interface Subscription {
  id: string;
  user_id: string;
  plan_id: string;
  provider: PaymentProvider;
  status: string;
  current_period_start: Timestamp | null;
  current_period_end: Timestamp | null;
  cancel_at_period_end: boolean;
  canceled_at: Timestamp | null;
  ended_at: Timestamp | null;
  provider_subscription_id: string | null;
  created_at: Timestamp;
}

export interface SubscriptionCreated {
  subscription: Subscription;
  checkout_url: string | null;
}

// ---- payment providers and payments -------------------------------------------------------

/** The providers a project sells through with its own account. */
export type CheckoutProvider = "stripe" | "razorpay";

export interface StripeAccountInput {
  secret_key: string;
  webhook_secret: string;
  /** How long a replaced webhook secret still verifies (server default when absent). */
  webhook_secret_grace_seconds?: number | null;
}

export interface RazorpayAccountInput {
  key_id: string;
  key_secret: string;
  webhook_secret: string;
  webhook_secret_grace_seconds?: number | null;
}

/** A provider account; the secrets come back masked. */
export interface ProviderAccount {
  provider: CheckoutProvider;
  key_id: string | null;
  secret_key: string;
  webhook_secret: string;
  previous_webhook_secret_expires_at: Timestamp | null;
  livemode: boolean;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export type PaymentStatus =
  | "created"
  | "pending"
  | "succeeded"
  | "failed"
  | "expired"
  | "canceled"
  | "partially_refunded"
  | "refunded"
  | "disputed"
  | "won"
  | "lost";

export interface PaymentCreate {
  user_id: string;
  provider: CheckoutProvider;
  /** Money, in major units of `currency` (`"9.99"`). */
  amount: AmountInput;
  /** ISO 4217: `USD`. */
  currency: string;
  /** Credits granted once paid; optional when the project has a `credits_per_unit` rate. */
  credits?: AmountInput | null;
  success_url?: string | null;
  cancel_url?: string | null;
  metadata?: Record<string, string>;
}

export interface Payment<A = string> {
  id: string;
  user_id: string;
  kind: "top_up" | "subscription";
  provider: CheckoutProvider;
  status: PaymentStatus;
  amount: A;
  currency: string;
  amount_minor: number;
  credits: A;
  /** Where to send the user to pay. */
  checkout_url: string | null;
  provider_reference: string | null;
  provider_payment_id: string | null;
  subscription_id: string | null;
  credits_granted: A;
  credits_clawed_back: A;
  amount_refunded: A;
  dispute_status: "inquiry" | "open" | "withdrawn" | "reinstated" | "won" | "lost" | null;
  failure_reason: string | null;
  metadata: Record<string, string>;
  succeeded_at: Timestamp | null;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface PaymentFilters extends PageParams {
  user_id?: string;
  status?: PaymentStatus;
  provider?: CheckoutProvider;
}

// ---- promos --------------------------------------------------------------------------------

export interface PromoUpdate {
  description?: string | null;
  max_redemptions?: number | null;
  starts_at?: TimestampInput | null;
  expires_at?: TimestampInput | null;
  eligible_tier_ids?: string[] | null;
  eligible_user_ids?: string[] | null;
  credit_expires_in_days?: number | null;
  max_per_user?: number | null;
  new_users_only?: boolean | null;
  active?: boolean | null;
}

export interface PromoCreate extends Omit<PromoUpdate, "max_per_user" | "new_users_only" | "active"> {
  code: string;
  credits: AmountInput;
  max_per_user?: number;
  new_users_only?: boolean;
  active?: boolean;
}

export interface Promo<A = string> {
  code: string;
  credits: A;
  description: string | null;
  max_redemptions: number | null;
  max_per_user: number;
  starts_at: Timestamp | null;
  expires_at: Timestamp | null;
  eligible_tier_ids: string[] | null;
  eligible_user_ids: string[] | null;
  new_users_only: boolean;
  credit_expires_in_days: number | null;
  active: boolean;
  redemptions_count: number;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export type PromoIneligibleReason =
  | "promo_not_found"
  | "promo_inactive"
  | "promo_not_started"
  | "promo_expired"
  | "promo_exhausted"
  | "already_claimed"
  | "not_eligible";

export interface PromoEligibility {
  eligible: boolean;
  reason: PromoIneligibleReason | null;
}

export interface PromoClaim<A = string> {
  grant: Grant<A>;
  balance: A;
}

export interface PromoRedemption {
  id: string;
  user_id: string;
  grant_id: string;
  created_at: Timestamp;
}

// ---- spend caps ----------------------------------------------------------------------------

export type SpendCapPeriod = "day" | "month";

export interface SpendCapInput {
  limit: AmountInput;
  action: "deny" | "warn";
  model?: string | null;
}

export interface SpendCap<A = string> {
  period: SpendCapPeriod;
  model: string | null;
  limit: A;
  action: string;
  created_at: Timestamp;
  updated_at: Timestamp;
}

// ---- events and analytics ------------------------------------------------------------------

/** Where an event's outbound webhooks stand. */
export type DeliveryStatus = "pending" | "succeeded" | "failed" | "not_sent";

export interface Event {
  id: string;
  type: string;
  user_id: string | null;
  /** The event's payload; amounts in it follow the client's `amounts` mode. */
  data: Record<string, unknown>;
  created_at: Timestamp;
  /** Absent from servers before outbound webhooks. */
  delivery_status?: DeliveryStatus;
}

// ---- outbound webhooks ---------------------------------------------------------------------

export type WebhookDisabledReason = "manual" | "gone" | "failing";

export interface WebhookEndpointCreate {
  /** `https` (plain `http` only where the server allows it); no user name or password. */
  url: string;
  /** `["*"]` (default), exact types (`payment.succeeded`) or families (`payment.*`). */
  events?: string[];
  description?: string | null;
  enabled?: boolean;
  metadata?: Metadata;
}

/** Only the fields given change; `description: null` removes it, `metadata` is merged. */
export interface WebhookEndpointUpdate {
  url?: string;
  events?: string[];
  description?: string | null;
  /** `false` disables it (reason `manual`) and cancels its pending deliveries. */
  enabled?: boolean;
  metadata?: Metadata;
}

export interface WebhookEndpoint {
  id: string;
  url: string;
  events: string[];
  description: string | null;
  enabled: boolean;
  disabled_reason: WebhookDisabledReason | null;
  failing_since: Timestamp | null;
  /** Until when the replaced secret still signs (after a rotation); null when none does. */
  previous_secret_expires_at: Timestamp | null;
  metadata: Metadata;
  created_at: Timestamp;
  updated_at: Timestamp;
}

/** The create and rotate-secret answers: the only ones that show the signing secret. */
export interface WebhookEndpointWithSecret extends WebhookEndpoint {
  /** `whsec_...`: store it, it is not shown again. */
  secret: string;
}

export interface RotateSecretInput {
  /** How long the replaced secret keeps signing (0: not at all; server default when absent). */
  grace_seconds?: number | null;
}

/** One HTTP request of a delivery; `status_code` is null when there was no answer. */
export interface WebhookAttempt {
  id: string;
  delivery_id: string;
  event_id: string;
  event_type: string;
  attempt: number;
  status_code: number | null;
  latency_ms: number;
  response_excerpt: string | null;
  error: string | null;
  succeeded: boolean;
  next_attempt_at: Timestamp | null;
  created_at: Timestamp;
}

export interface WebhookAttemptFilters extends PageParams {
  event_id?: string;
}

export interface RedeliverInput {
  /** Only this endpoint (whatever its events); default: every enabled subscribed endpoint. */
  endpoint_id?: string;
}

export interface RedeliverResult {
  event_id: string;
  deliveries: {
    id: string;
    endpoint_id: string;
    status: "pending" | "succeeded" | "failed" | "canceled";
    attempts: number;
    next_attempt_at: Timestamp | null;
  }[];
}

export interface EventFilters extends PageParams {
  type?: string;
  user_id?: string;
  created_after?: TimestampInput;
}

export type SpendGroupBy = "user" | "model" | "feature" | "day" | "team" | "member";

export interface SpendParams {
  group_by: SpendGroupBy;
  /** Only this team's charges (group_by team or member). */
  team_id?: string;
  start?: TimestampInput;
  end?: TimestampInput;
  /** 1-1000, default 20. */
  limit?: number;
}

export interface SpendReport<A = string> {
  group_by: SpendGroupBy;
  start: Timestamp;
  end: Timestamp;
  data: { key: string | null; credits: A; transactions: number }[];
}

export interface SummaryParams {
  start?: TimestampInput;
  end?: TimestampInput;
}

export interface Summary<A = string> {
  start: Timestamp;
  end: Timestamp;
  credits_consumed: A;
  active_users: number;
  transactions: number;
  top_model: string | null;
  top_user: string | null;
}

/** Credits outstanding: paid ones with their money value (deferred revenue), and the rest. */
export interface Liability<A = string> {
  paid: { currency: string; credits: A; value: A }[];
  /** Paid credits whose price is unknown (granted by hand as `paid`). */
  paid_unpriced_credits: A;
  promotional_credits: A;
  debt: A;
  as_of: Timestamp;
}

export interface Health {
  status: string;
  detail?: string | null;
}

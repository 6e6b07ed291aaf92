/**
 * Exact amounts on the wire.
 *
 * creditd sends amounts as JSON numbers with up to 15 integer and 6 fractional digits
 * (e.g. `123456789012345.123456`), which `JSON.parse` would round to the nearest double. The
 * parser here reads the same JSON but keeps every number found in an *amount position* (a
 * member named like an amount, outside free-form objects such as `metadata`) as its exact
 * decimal text. The serializer does the reverse: an amount given as a decimal string is written
 * into the body as a JSON number literal, digit for digit.
 *
 * `JSON.parse` with a reviver reading `context.source` would do the first half, but only on
 * Node >= 21; this is a small self-contained parser instead, so Node 18 and 20 work too.
 */

/** Member names whose numeric values are credit amounts (prices, balances, limits, ...). */
export const AMOUNT_KEYS: ReadonlySet<string> = new Set([
  "amount",
  "available",
  "balance",
  "balance_adjustment",
  "balance_after",
  "cached_input_price_per_1k",
  "cost_basis",
  "debt",
  "amount_refunded",
  "credits",
  "credits_clawed_back",
  "credits_consumed",
  "credits_granted",
  "credits_per_period",
  "credits_used",
  "held",
  "held_after",
  "held_amount",
  "hold_amount",
  "input_price_per_1k",
  "limit",
  "low_balance_thresholds",
  // A price breakdown's multiplier (POST /v1/pricing/evaluate), an exact decimal.
  "multiplier",
  "output_price_per_1k",
  "overage_limit",
  "paid_unpriced_credits",
  // A job's price (GET/PUT /v1/jobs); a plan's `price` is an object, walked as usual.
  "price",
  "previous_balance",
  "price_multiplier",
  "promotional_credits",
  "refunded_total",
  "remaining",
  "request_price",
  "requested",
  "required",
  "rollover_cap",
  "spent",
  "thresholds",
  "total",
  "total_after",
  // Money (deferred revenue) in GET /v1/analytics/liability.
  "value",
]);

/** Members that map names of the caller's choosing (currency codes) to amounts. */
export const AMOUNT_MAP_KEYS: ReadonlySet<string> = new Set(["credits_per_unit"]);

/**
 * Members whose content belongs to the caller (or echoes the caller's input) and is never
 * reinterpreted: a `metadata.amount` of yours stays exactly what you stored.
 */
export const OPAQUE_KEYS: ReadonlySet<string> = new Set([
  "metadata",
  "features",
  "errors",
  "provisional_tokens",
  "finalized_tokens",
  "tokens",
]);

/** A JSON number literal (RFC 8259 grammar). */
const NUMBER_RE = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
/** Decimal text the serializer writes verbatim as a JSON number: no exponent, no sign but `-`. */
const DECIMAL_RE = /^-?(?:0|[1-9]\d*)(?:\.\d+)?$/;

export type AmountsMode = "string" | "number";

export class JsonParseError extends SyntaxError {
  constructor(message: string, readonly position: number) {
    super(`${message} at position ${position}`);
    this.name = "JsonParseError";
  }
}

/** Where a value sits: an amount position, a free-form (opaque) subtree, or anywhere else. */
const enum Ctx {
  Plain = 0,
  Amount = 1,
  Opaque = 2,
  /** An object whose every member is an amount, whatever its name (`{"USD": 100}`). */
  AmountMap = 3,
}

function childContext(parent: Ctx, key: string): Ctx {
  if (parent === Ctx.Opaque || OPAQUE_KEYS.has(key)) return Ctx.Opaque;
  if (parent === Ctx.AmountMap) return Ctx.Amount;
  if (AMOUNT_MAP_KEYS.has(key)) return Ctx.AmountMap;
  return AMOUNT_KEYS.has(key) ? Ctx.Amount : Ctx.Plain;
}

class Parser {
  private pos = 0;

  constructor(private readonly text: string) {}

  parse(): unknown {
    const value = this.value(Ctx.Plain);
    this.ws();
    if (this.pos !== this.text.length) this.fail("Unexpected data after the JSON value");
    return value;
  }

  private fail(message: string): never {
    throw new JsonParseError(message, this.pos);
  }

  private ws(): void {
    const t = this.text;
    let p = this.pos;
    for (;;) {
      const c = t.charCodeAt(p);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
      else break;
    }
    this.pos = p;
  }

  private value(ctx: Ctx): unknown {
    this.ws();
    const c = this.text[this.pos];
    switch (c) {
      case "{":
        return this.object(ctx);
      case "[":
        return this.array(ctx);
      case '"':
        return this.string();
      case "t":
        return this.literal("true", true);
      case "f":
        return this.literal("false", false);
      case "n":
        return this.literal("null", null);
      default:
        return this.number(ctx);
    }
  }

  private literal<T>(word: string, value: T): T {
    if (!this.text.startsWith(word, this.pos)) this.fail("Unexpected token");
    this.pos += word.length;
    return value;
  }

  private number(ctx: Ctx): number | string {
    NUMBER_RE.lastIndex = this.pos;
    const m = NUMBER_RE.exec(this.text);
    if (m === null) this.fail(this.pos >= this.text.length ? "Unexpected end of JSON" : "Unexpected token");
    this.pos += m[0].length;
    return ctx === Ctx.Amount ? m[0] : Number(m[0]);
  }

  private string(): string {
    const t = this.text;
    const start = this.pos;
    let p = start + 1;
    let escaped = false;
    for (;;) {
      if (p >= t.length) {
        this.pos = p;
        this.fail("Unterminated string");
      }
      const c = t.charCodeAt(p);
      if (c === 0x22) break; // "
      if (c === 0x5c) {
        escaped = true;
        p += 2;
        continue;
      }
      if (c < 0x20) {
        this.pos = p;
        this.fail("Control character in string");
      }
      p++;
    }
    this.pos = p + 1;
    if (!escaped) return t.slice(start + 1, p);
    try {
      return JSON.parse(t.slice(start, p + 1)) as string; // escapes decoded by the platform
    } catch {
      this.pos = start;
      this.fail("Bad escape in string");
    }
  }

  private object(ctx: Ctx): Record<string, unknown> {
    this.pos++; // {
    const out: Record<string, unknown> = {};
    this.ws();
    if (this.text[this.pos] === "}") {
      this.pos++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.text[this.pos] !== '"') this.fail("Expected a member name");
      const key = this.string();
      this.ws();
      if (this.text[this.pos] !== ":") this.fail("Expected ':'");
      this.pos++;
      const value = this.value(childContext(ctx, key));
      // Like JSON.parse: a "__proto__" member is an own property, not the prototype.
      Object.defineProperty(out, key, { value, writable: true, enumerable: true, configurable: true });
      this.ws();
      const c = this.text[this.pos];
      this.pos++;
      if (c === "}") return out;
      if (c !== ",") {
        this.pos--;
        this.fail("Expected ',' or '}'");
      }
    }
  }

  private array(ctx: Ctx): unknown[] {
    this.pos++; // [
    const out: unknown[] = [];
    this.ws();
    if (this.text[this.pos] === "]") {
      this.pos++;
      return out;
    }
    for (;;) {
      // Elements inherit the array's position: `low_balance_thresholds: [1, 2.5]` are amounts.
      out.push(this.value(ctx));
      this.ws();
      const c = this.text[this.pos];
      this.pos++;
      if (c === "]") return out;
      if (c !== ",") {
        this.pos--;
        this.fail("Expected ',' or ']'");
      }
    }
  }
}

/**
 * Parse a creditd JSON body. With `amounts: "string"` every number in an amount position comes
 * back as its exact decimal text; with `"number"` this is plain `JSON.parse`.
 */
export function parseJson(text: string, amounts: AmountsMode = "string"): unknown {
  if (amounts === "number") return JSON.parse(text);
  return new Parser(text).parse();
}

/**
 * Serialize a request body. In amount positions a decimal string (`"0.1"`, `"-2.5"`,
 * `"123456789012345.123456"`) is written as a JSON number literal with exactly those digits,
 * and a JS number as its shortest round-trip text. Anything else is written as `JSON.stringify`
 * would (a malformed amount string stays a string, and the server answers 422).
 */
export function stringifyJson(value: unknown): string {
  const out = write(value, Ctx.Plain);
  if (out === undefined) throw new TypeError("The request body is not JSON-serializable");
  return out;
}

function write(value: unknown, ctx: Ctx): string | undefined {
  if (ctx === Ctx.Opaque) return JSON.stringify(value);
  if (value !== null && typeof value === "object" && typeof (value as { toJSON?: unknown }).toJSON === "function") {
    value = (value as { toJSON: () => unknown }).toJSON(); // Date → RFC 3339 string
  }
  if (ctx === Ctx.Amount) {
    if (typeof value === "string" && DECIMAL_RE.test(value)) return value;
    if (typeof value === "bigint") return value.toString();
  }
  if (Array.isArray(value)) {
    return `[${value.map((v) => write(v, ctx) ?? "null").join(",")}]`;
  }
  if (value !== null && typeof value === "object") {
    const parts: string[] = [];
    for (const [k, v] of Object.entries(value)) {
      const text = write(v, childContext(ctx, k));
      if (text !== undefined) parts.push(`${JSON.stringify(k)}:${text}`);
    }
    return `{${parts.join(",")}}`;
  }
  return JSON.stringify(value);
}

// What both parts of the TypeScript flow (flow.ts, outbound.ts) check with.

import { parse } from 'lossless-json';

export class Mismatch extends Error {}

export function expect(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Mismatch(what);
  }
}

/** The body of a successful call; anything else is a mismatch (with the problem it got). */
export function ok<T>(
  result: { data?: T; error?: unknown; response: Response },
  status: number,
): T {
  expect(
    result.response.status === status && result.data !== undefined,
    `expected ${status}, got ${result.response.status}: ${JSON.stringify(result.error)}`,
  );
  return result.data;
}

/** A generated type with every number read as its exact decimal text. */
export type Exact<T> = T extends number
  ? string
  : T extends (infer U)[]
    ? Exact<U>[]
    : T extends object
      ? { [K in keyof T]: Exact<T[K]> }
      : T;

/** JSON text read losslessly: every number is its exact decimal text. */
export function exactText<T>(text: string): Exact<T> {
  return parse(text, null, (digits: string) => digits) as Exact<T>;
}

/** The unparsed body of a call made with `parseAs: 'text'`, read losslessly. */
export function exact<T>(result: { data?: T; response: Response }, status: number): Exact<T> {
  const raw: unknown = result.data;
  expect(result.response.status === status, `expected ${status}, got ${result.response.status}`);
  expect(typeof raw === 'string', 'parseAs: text returns the body unparsed');
  return exactText<T>(raw);
}

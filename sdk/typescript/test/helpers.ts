/**
 * Test helpers: a live creditd server (the repo's own, from its .venv), projects, and a small
 * fault-injecting HTTP proxy. `test/run.ts` starts the embedded PostgreSQL once and one shared
 * server, and hands both to the test files through the environment.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Creditd, CreditdAdmin, type CreditdOptions } from "@creditd/sdk";

const here = path.dirname(fileURLToPath(import.meta.url)); // build/test
export const PACKAGE_DIR = path.resolve(here, "..", "..");
export const REPO_ROOT = process.env.CREDITD_REPO ?? path.resolve(PACKAGE_DIR, "..", "..");
export const LOG_DIR = path.join(PACKAGE_DIR, "build", "logs");
export const ADMIN_TOKEN = process.env.CREDITD_TEST_ADMIN_TOKEN ?? "sdk-ts-test-admin-token-0123456789";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through \`npm test\` (test/run.ts)`);
  return value;
}

/** The shared server's base URL. */
export function baseUrl(): string {
  return env("CREDITD_TEST_BASE_URL");
}

export function databaseUrl(): string {
  return env("CREDITD_TEST_DATABASE_URL");
}

/** A TCP port nobody listens on right now (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A `creditd serve` process of our own, which a test may stop and start again on the same port. */
export class ServerProcess {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> | undefined;

  constructor(
    readonly port: number,
    private readonly name: string,
    private readonly extraEnv: Record<string, string> = {},
    private readonly migrate = false,
  ) {}

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** `migrate`: bring the database to head first (the shared server does; later ones need not). */
  static async start(
    name: string,
    extraEnv: Record<string, string> = {},
    { migrate = false }: { migrate?: boolean } = {},
  ): Promise<ServerProcess> {
    const server = new ServerProcess(await freePort(), name, extraEnv, migrate);
    await server.start();
    return server;
  }

  async start(): Promise<void> {
    if (this.proc) throw new Error("already running");
    mkdirSync(LOG_DIR, { recursive: true });
    const log = createWriteStream(path.join(LOG_DIR, `${this.name}.log`), { flags: "a" });
    const proc = spawn(
      path.join(REPO_ROOT, ".venv", "bin", "creditd"),
      ["serve", "--host", "127.0.0.1", "--port", String(this.port), ...(this.migrate ? ["--migrate"] : [])],
      {
        cwd: REPO_ROOT,
        env: {
          ...process.env,
          DATABASE_URL: databaseUrl(),
          CREDITD_ADMIN_TOKEN: ADMIN_TOKEN,
          CREDITD_LOG__LEVEL: "WARNING",
          CREDITD_DATA_DIR: path.join(PACKAGE_DIR, "build", "server-data"),
          // Nothing here may reach the real Stripe or Razorpay: their APIs are a closed port.
          CREDITD_PAYMENTS__STRIPE_API_BASE: "http://127.0.0.1:9",
          CREDITD_PAYMENTS__RAZORPAY_API_BASE: "http://127.0.0.1:9",
          ...this.extraEnv,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    proc.stdout?.pipe(log, { end: false });
    proc.stderr?.pipe(log, { end: false });
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once("exit", () => resolve()));
    await this.waitReady();
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + 60_000;
    let exited = false;
    void this.exited?.then(() => (exited = true));
    while (Date.now() < deadline) {
      if (exited) throw new Error(`creditd serve exited early; see ${LOG_DIR}/${this.name}.log`);
      try {
        const res = await fetch(`${this.baseUrl}/readyz`);
        await res.arrayBuffer();
        if (res.ok) return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new Error(`creditd serve did not become ready; see ${LOG_DIR}/${this.name}.log`);
  }

  /** SIGTERM, then SIGKILL if it lingers; resolves once the process is gone. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = undefined;
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGTERM");
      // creditd stops in well under a second; a stuck shutdown is ended like a crash would end it.
      const killer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      await this.exited;
      clearTimeout(killer);
    }
  }
}

/** A fresh project on the server and its admin key. */
export async function newProject(url: string = baseUrl(), name = "sdk-ts-test"): Promise<{ id: string; apiKey: string }> {
  const admin = new CreditdAdmin({ adminToken: ADMIN_TOKEN, baseUrl: url });
  const project = await admin.projects.create({ name });
  return { id: project.id, apiKey: project.api_key.key };
}

/** A client on a fresh project, with fast retries and no spool unless asked. */
export async function newClient<M extends "string" | "number" = "string">(
  options: Partial<CreditdOptions<M>> = {},
): Promise<{ client: Creditd<M>; apiKey: string; projectId: string }> {
  const { id, apiKey } = await newProject();
  const client = new Creditd<M>({
    apiKey,
    baseUrl: baseUrl(),
    retryBaseDelayMs: 20,
    retryMaxDelayMs: 200,
    spool: false,
    ...options,
  } as CreditdOptions<M>);
  return { client, apiKey, projectId: id };
}

/** Price every model: 1 credit per 1k input tokens, 2 per 1k output tokens. */
export async function priceDefault(client: Creditd<"string" | "number">): Promise<void> {
  await client.models.put("_default", { input_price_per_1k: "1", output_price_per_1k: "2" });
}

let userSeq = 0;
export function userId(prefix = "u"): string {
  userSeq += 1;
  return `${prefix}_${process.pid}_${Date.now()}_${userSeq}`;
}

// ---- a fault-injecting proxy ----------------------------------------------------------------

export interface ProxiedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * What to do with request number `n` (0-based): forward it, answer it with a canned response,
 * forward it and then drop the connection instead of relaying the answer, drop it unanswered,
 * or never answer at all.
 */
export type ProxyAction =
  | { kind: "forward" }
  | { kind: "respond"; status: number; headers?: Record<string, string>; body?: string }
  | { kind: "forward_then_drop" }
  | { kind: "drop" }
  | { kind: "hang" };

export class FaultProxy {
  readonly requests: ProxiedRequest[] = [];
  /** For each forwarded request: the upstream status and whether it was an idempotent replay. */
  readonly upstream: { status: number; replayed: boolean }[] = [];
  private server: http.Server | undefined;
  port = 0;

  constructor(
    private readonly target: string,
    private readonly plan: (n: number, req: ProxiedRequest) => ProxyAction,
  ) {}

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const record: ProxiedRequest = {
      method: req.method ?? "GET",
      url: req.url ?? "/",
      headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"),
    };
    const n = this.requests.length;
    this.requests.push(record);
    const action = this.plan(n, record);
    if (action.kind === "hang") return; // never answer: the client's timeout must fire
    if (action.kind === "drop") {
      req.socket.destroy();
      return;
    }
    if (action.kind === "respond") {
      res.writeHead(action.status, { "content-type": "application/problem+json", ...action.headers });
      res.end(action.body ?? "");
      return;
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (typeof v === "string" && k !== "host" && k !== "connection" && k !== "content-length") headers[k] = v;
    }
    const init: RequestInit = { method: record.method, headers };
    if (record.body !== "") init.body = record.body;
    const upstream = await fetch(this.target + record.url, init);
    const text = await upstream.text();
    this.upstream.push({ status: upstream.status, replayed: upstream.headers.get("idempotent-replayed") === "true" });
    if (action.kind === "forward_then_drop") {
      req.socket.destroy(); // the effect happened; the client never hears of it
      return;
    }
    const out: Record<string, string> = {};
    upstream.headers.forEach((v, k) => {
      if (k !== "content-length" && k !== "transfer-encoding" && k !== "connection" && k !== "content-encoding") out[k] = v;
    });
    res.writeHead(upstream.status, out);
    res.end(text);
  }
}

/** A problem+json body as creditd would send it. */
export function problemBody(status: number, code: string, detail = code): string {
  return JSON.stringify({ type: `/errors/${code}`, code, title: code, status, detail, instance: "/", request_id: "proxy" });
}

/**
 * The non-zero counts of a transaction's tokens. The server lists every usage metric (issue 11
 * added `reasoning_tokens`, `tool_calls`, `search_queries`, ...), zeros included; tests compare
 * what was counted.
 */
export function counted(tokens: object | null | undefined): Record<string, unknown> {
  return Object.fromEntries(Object.entries(tokens ?? {}).filter(([, v]) => v !== 0 && v !== "0"));
}

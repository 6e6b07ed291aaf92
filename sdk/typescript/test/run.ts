/**
 * `npm test`: start the embedded PostgreSQL (the repo's own, from its .venv) with a fresh
 * database, start one shared `creditd serve` on a free port, run every `*.test.js` with node's
 * test runner, then stop both. Needs `make install` in the repo root first.
 *
 * The embedded server's data lives in REPO/.creditd/sdk-typescript (apart from the Python
 * suite's .creditd/test); the database is dropped and created anew on every run.
 */

import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { ADMIN_TOKEN, PACKAGE_DIR, REPO_ROOT, ServerProcess } from "./helpers.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const PYTHON = path.join(REPO_ROOT, ".venv", "bin", "python");
const DATABASE = "creditd_sdk_ts";

// Kept alive on its stdin: when this runner exits (even killed), stdin closes and the
// embedded server it started is stopped at the helper's exit.
const EMBEDDED = `
import json, sys
from pathlib import Path
from app.db.embedded import start
server = start(Path(sys.argv[1]))
name = sys.argv[2]
server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
server.psql(f'CREATE DATABASE "{name}"')
print(json.dumps({"url": server.url(name)}), flush=True)
sys.stdin.read()
`;

async function startDatabase(): Promise<{ url: string; stop: () => Promise<void> }> {
  const dataDir = path.join(REPO_ROOT, ".creditd", "sdk-typescript");
  const proc = spawn(PYTHON, ["-c", EMBEDDED, dataDir, DATABASE], {
    cwd: REPO_ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  const lines = createInterface({ input: proc.stdout });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once("line", resolve);
    void exited.then((code) => reject(new Error(`embedded PostgreSQL helper exited with ${code}`)));
  });
  const { url } = JSON.parse(first) as { url: string };
  return {
    url,
    stop: async () => {
      proc.stdin.end();
      await exited;
    },
  };
}

async function main(): Promise<number> {
  if (!existsSync(PYTHON)) {
    console.error(`No ${PYTHON}: run \`make install\` in ${REPO_ROOT} first.`);
    return 2;
  }
  const db = await startDatabase();
  process.env.CREDITD_TEST_DATABASE_URL = db.url;
  process.env.CREDITD_TEST_ADMIN_TOKEN = ADMIN_TOKEN;
  let server: ServerProcess | undefined;
  try {
    server = await ServerProcess.start("shared", {}, { migrate: true });
    process.env.CREDITD_TEST_BASE_URL = server.baseUrl;
    const only = process.argv.slice(2);
    const files = readdirSync(here)
      .filter((f) => f.endsWith(".test.js"))
      .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
      .sort()
      .map((f) => path.join(here, f));
    // One file at a time: the machine is shared, and the spool tests stop their own server.
    const runner = spawn(process.execPath, ["--test", "--test-concurrency=1", ...files], {
      cwd: PACKAGE_DIR,
      stdio: "inherit",
      env: process.env,
    });
    return await new Promise<number>((resolve) => runner.once("exit", (code) => resolve(code ?? 1)));
  } finally {
    await server?.stop();
    await db.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);

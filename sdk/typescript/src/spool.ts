/**
 * The durable completion spool: completions that could not be delivered are kept here and
 * replayed, with their original Idempotency-Key, until the server has them.
 */

/** One undelivered completion. `body` is the exact JSON text first sent (replays are byte-identical). */
export interface SpoolEntry {
  /** Unique id of the entry (also its file name in a {@link FileSpool}). */
  id: string;
  transactionId: string;
  /** The request body as sent, JSON text. */
  body: string;
  /** The Idempotency-Key of the first attempt; every replay sends it again. */
  idempotencyKey: string;
  /** RFC 3339 time the entry was spooled. */
  createdAt: string;
}

/**
 * Where undelivered completions wait. Implement it to keep them elsewhere (a database table,
 * Redis, ...): `put` must be durable when it resolves.
 */
export interface Spool {
  put(entry: SpoolEntry): Promise<void>;
  /** Every entry, oldest first. */
  list(): Promise<SpoolEntry[]>;
  /** Forget an entry (delivered, or refused for good). Removing a missing entry is not an error. */
  remove(id: string): Promise<void>;
  /** Optional: keep an entry the server refused for good (e.g. 404), for a human to look at. */
  reject?(entry: SpoolEntry, reason: unknown): Promise<void>;
}

type Fs = typeof import("node:fs/promises");
type PathMod = typeof import("node:path");

let nodeModules: Promise<{ fs: Fs; path: PathMod }> | undefined;
function node(): Promise<{ fs: Fs; path: PathMod }> {
  // Loaded on first use, so the client itself runs where node:fs does not exist (edge runtimes).
  nodeModules ??= Promise.all([import("node:fs/promises"), import("node:path")]).then(([fs, path]) => ({ fs, path }));
  return nodeModules;
}

function isNotFound(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === "ENOENT";
}

/**
 * A directory of JSON files, one per entry. Each is written to a temporary file, fsynced, and
 * renamed into place (then the directory is fsynced), so an entry is either whole or absent,
 * even across a crash. Several processes may share a directory: replays are idempotent.
 * Entries the server refused for good are moved to `rejected/`.
 */
export class FileSpool implements Spool {
  constructor(readonly dir: string) {}

  async put(entry: SpoolEntry): Promise<void> {
    const { fs, path } = await node();
    await fs.mkdir(this.dir, { recursive: true });
    const final = path.join(this.dir, `${entry.id}.json`);
    const tmp = path.join(this.dir, `.${entry.id}.${process.pid}.tmp`);
    const handle = await fs.open(tmp, "w", 0o600);
    try {
      await handle.writeFile(JSON.stringify(entry) + "\n", "utf8");
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, final);
    await this.syncDir(this.dir);
  }

  async list(): Promise<SpoolEntry[]> {
    const { fs, path } = await node();
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch (err) {
      if (isNotFound(err)) return [];
      throw err;
    }
    const entries: SpoolEntry[] = [];
    for (const name of names.filter((n) => n.endsWith(".json") && !n.startsWith(".")).sort()) {
      try {
        const parsed = JSON.parse(await fs.readFile(path.join(this.dir, name), "utf8")) as SpoolEntry;
        if (typeof parsed.transactionId === "string" && typeof parsed.body === "string") entries.push(parsed);
      } catch (err) {
        if (!isNotFound(err)) throw err; // removed by a concurrent flush meanwhile: fine
      }
    }
    return entries;
  }

  async remove(id: string): Promise<void> {
    const { fs, path } = await node();
    try {
      await fs.unlink(path.join(this.dir, `${id}.json`));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  async reject(entry: SpoolEntry, reason: unknown): Promise<void> {
    const { fs, path } = await node();
    const dir = path.join(this.dir, "rejected");
    await fs.mkdir(dir, { recursive: true });
    const why = reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason);
    const record = JSON.stringify({ ...entry, rejectedAt: new Date().toISOString(), reason: why }) + "\n";
    const tmp = path.join(dir, `.${entry.id}.${process.pid}.tmp`);
    await fs.writeFile(tmp, record, { encoding: "utf8", mode: 0o600 });
    await fs.rename(tmp, path.join(dir, `${entry.id}.json`));
    await this.remove(entry.id);
  }

  private async syncDir(dir: string): Promise<void> {
    const { fs } = await node();
    let handle: Awaited<ReturnType<Fs["open"]>> | undefined;
    try {
      handle = await fs.open(dir, "r");
      await handle.sync();
    } catch {
      // Some platforms (Windows) cannot fsync a directory; the rename is still atomic there.
    } finally {
      await handle?.close();
    }
  }
}

import type { ResolvedKey } from '../core/types.js';
import type { Logger } from '../logger.js';
import type { TenantDirectory } from './types.js';

// The in-process key cache in front of Postgres. Why it is shaped this way:
// - A warm key never waits on Postgres: `peek` is synchronous. An entry past its TTL is still served
//   while one background reload runs (stale-while-revalidate), so a Postgres outage does not lock out
//   tenants whose keys were seen recently.
// - Unknown keys are cached negatively for a few seconds, so a flood of bad keys costs one query per key
//   per few seconds, not one per request; concurrent misses on one key share one query (single flight).
//   They are held apart from known keys, each bounded by `maxEntries`: a flood of made-up keys cannot evict
//   the keys of real tenants (which would send their Checks to Postgres, or to a 503 while it is down).
// - When full, the entry stored longest ago goes. A known key in use is stored again each time it is
//   reloaded (every `ttlMs`), so it moves to the back: the keys evicted are those not used lately.
// - Every replica polls the directory's version counter (bumped by triggers on any change) and refreshes
//   all cached entries in bulk when it moves, so a revoked key or a tier change is enforced everywhere
//   within about one poll interval. Two races are closed: the version is read before the preload (a change
//   committed while the keys are read is then a change to the first poll), and a load whose query started
//   before a change was seen is not cached (it may have read the rows as they were).

export interface KeyCacheOptions {
  readonly ttlMs: number;
  readonly negativeTtlMs: number;
  readonly maxEntries: number;
  readonly pollMs: number;
  readonly now: () => number;
  readonly logger: Logger;
}

interface Entry {
  value: ResolvedKey;
  expiresAtMs: number;
}

export interface KeyCacheStats {
  hits: number;
  misses: number;
  /** Keys asked of the directory. */
  loads: number;
  /** Queries those loads took (batched). */
  queries: number;
  /** Loaded keys Postgres knew (a key first seen, or a known key past its TTL, reloaded in the background). */
  loadedKnown: number;
  /** Loaded keys Postgres did not know (a bad key, first seen or past its negative TTL). */
  loadedUnknown: number;
  loadErrors: number;
  refreshes: number;
}

const REFRESH_CHUNK = 1000;
/** Keys per load query; a larger burst is split. */
const LOAD_BATCH = 500;

interface Waiter {
  resolve(value: ResolvedKey | null): void;
  reject(err: unknown): void;
}

export class KeyCache {
  private readonly entries = new Map<string, Entry>();
  /** Unknown key hashes → until when they are known to be unknown. */
  private readonly unknown = new Map<string, number>();
  /** Moves on each directory change seen: a load begun under an older generation is not cached. */
  private generation = 0;
  private readonly inflight = new Map<string, Promise<ResolvedKey | null>>();
  private readonly waiting = new Map<string, Waiter>();
  private batch: string[] = [];
  private batchScheduled = false;
  private lastVersion: bigint | null = null;
  private timer: NodeJS.Timeout | null = null;
  private polling = false;
  private pollAgain = false;
  private pollFailing = false;
  readonly stats: KeyCacheStats = { hits: 0, misses: 0, loads: 0, queries: 0, loadedKnown: 0, loadedUnknown: 0, loadErrors: 0, refreshes: 0 };

  constructor(
    private readonly directory: TenantDirectory,
    private readonly opts: KeyCacheOptions,
  ) {}

  /**
   * The cached answer for a key hash: a ResolvedKey, null (known unknown), or undefined when the caller
   * must `load`. Stale positive entries are returned and refreshed in the background.
   */
  peek(hash: string): ResolvedKey | null | undefined {
    const e = this.entries.get(hash);
    if (e !== undefined) {
      this.stats.hits++;
      if (e.expiresAtMs <= this.opts.now()) void this.load(hash).catch(() => {});
      return e.value;
    }
    const unknownUntil = this.unknown.get(hash);
    if (unknownUntil !== undefined && unknownUntil > this.opts.now()) {
      this.stats.hits++;
      return null;
    }
    this.stats.misses++;
    return undefined;
  }

  /**
   * Loads one key from the directory. Concurrent callers of one key share one promise, and every key missed
   * in the same event-loop turn goes into one `resolveMany` query: a burst of cold keys (a restart under
   * traffic, a flood of unknown keys) costs a few queries rather than one per key. Rejects when the
   * directory fails.
   */
  load(hash: string): Promise<ResolvedKey | null> {
    const pending = this.inflight.get(hash);
    if (pending !== undefined) return pending;
    this.stats.loads++;
    const p = new Promise<ResolvedKey | null>((resolve, reject) => this.waiting.set(hash, { resolve, reject }));
    this.inflight.set(hash, p);
    this.batch.push(hash);
    if (!this.batchScheduled) {
      this.batchScheduled = true;
      setImmediate(() => this.flushBatch());
    }
    return p;
  }

  private flushBatch(): void {
    this.batchScheduled = false;
    const hashes = this.batch;
    this.batch = [];
    const generation = this.generation;
    for (let i = 0; i < hashes.length; i += LOAD_BATCH) {
      const chunk = hashes.slice(i, i + LOAD_BATCH);
      this.stats.queries++;
      this.directory.resolveMany(chunk).then(
        (found) => {
          // A change seen since the query began may postdate what it read: answer the waiting Checks (they
          // were in flight at the change) but cache nothing, so the next Check of the key reads it afresh.
          const current = generation === this.generation;
          for (const hash of chunk) {
            const value = found.get(hash) ?? null;
            if (value === null) this.stats.loadedUnknown++;
            else this.stats.loadedKnown++;
            if (current) this.store(hash, value);
            this.settle(hash)?.resolve(value);
          }
        },
        (err: unknown) => {
          this.stats.loadErrors += chunk.length;
          for (const hash of chunk) this.settle(hash)?.reject(err);
        },
      );
    }
  }

  private settle(hash: string): Waiter | undefined {
    const w = this.waiting.get(hash);
    this.waiting.delete(hash);
    this.inflight.delete(hash);
    return w;
  }

  /**
   * Preloads up to `maxEntries` keys (when the directory can list them), so a replica that starts under
   * traffic answers from memory at once. Returns how many keys were loaded.
   */
  async warm(): Promise<number> {
    if (this.directory.resolveAll === undefined) return 0;
    // The version before the keys: a change that commits while they are read makes the first poll see a
    // new version and reload them. Taken after, it would be the baseline, and the change never applied.
    const version = await this.directory.version();
    const found = await this.directory.resolveAll(this.opts.maxEntries);
    for (const [hash, value] of found) this.store(hash, value);
    if (this.lastVersion === null) this.lastVersion = version;
    return found.size;
  }

  private store(hash: string, value: ResolvedKey | null): void {
    const now = this.opts.now();
    if (value === null) {
      this.entries.delete(hash); // a key deleted from the directory is unknown from now on
      this.unknown.delete(hash);
      evictOldest(this.unknown, this.opts.maxEntries);
      this.unknown.set(hash, now + this.opts.negativeTtlMs);
      return;
    }
    this.unknown.delete(hash);
    // Deleted first so that it goes to the back of the Map's insertion order (see the top of the file).
    this.entries.delete(hash);
    evictOldest(this.entries, this.opts.maxEntries);
    this.entries.set(hash, { value, expiresAtMs: now + this.opts.ttlMs });
  }

  /** Keys held, known and unknown. */
  get size(): number {
    return this.entries.size + this.unknown.size;
  }

  /** Starts polling the directory version. The first successful poll sets the baseline. */
  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => void this.poll(), this.opts.pollMs);
    this.timer.unref();
    void this.poll();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * One poll: if the version moved, drop negative entries and reload every positive one in bulk. A poll
   * asked for while one runs (a change notification) runs right after it, since the running one may have
   * read the version before the change committed.
   */
  async poll(): Promise<void> {
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    this.polling = true;
    try {
      const version = await this.directory.version();
      if (this.pollFailing) this.opts.logger.info({ event: 'directory.recovered' }, 'directory reachable again');
      this.pollFailing = false;
      if (this.lastVersion !== null && version !== this.lastVersion) {
        this.generation++;
        await this.refreshAll();
      }
      this.lastVersion = version;
    } catch (err) {
      // Log the transition only, not every second of an outage.
      if (!this.pollFailing) {
        this.opts.logger.warn(
          { event: 'directory.unreachable', err: errorMessage(err) },
          'directory version poll failed; serving cached keys',
        );
      }
      this.pollFailing = true;
    } finally {
      this.polling = false;
      if (this.pollAgain) {
        this.pollAgain = false;
        void this.poll();
      }
    }
  }

  private async refreshAll(): Promise<void> {
    this.unknown.clear();
    const positive = [...this.entries.keys()];
    for (let i = 0; i < positive.length; i += REFRESH_CHUNK) {
      const chunk = positive.slice(i, i + REFRESH_CHUNK);
      const found = await this.directory.resolveMany(chunk);
      for (const hash of chunk) this.store(hash, found.get(hash) ?? null);
    }
    this.stats.refreshes++;
  }
}

/** Makes room for one more entry: Map iteration order is insertion order, so the first is the oldest. */
function evictOldest<V>(map: Map<string, V>, max: number): void {
  while (map.size >= max) {
    const oldest = map.keys().next();
    if (oldest.done) return;
    map.delete(oldest.value);
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

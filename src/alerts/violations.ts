import fs from 'node:fs';
import { Cluster, type Redis } from 'ioredis';
import type { Logger } from '../logger.js';

// Repeated violations: a tenant denied N times (429s) within a fixed window raises one alert per window.
// The Check only increments an in-process counter; every `flushMs` the deltas are added to shared window
// counters, and whichever flush carries a tenant's count across N raises the alert. With Redis the
// counters are shared (`violations:<tenant>:<window start, epoch s>`, INCRBY is atomic), so denials are
// counted over all replicas and exactly one replica sees the crossing. Without Redis they are per process.
// Windows are aligned to the epoch (e.g. every 5 minutes on the clock), so every replica agrees on them.
// In Redis Cluster mode the tenant is wrapped in `{}` (`violations:{<tenant>}:<window start>`), as in the
// counter store's keys, so a tenant's counters live in its slot.

export interface WindowCounterEntry {
  readonly key: string;
  readonly delta: number;
  /** How long the counter must live (past the end of its window). */
  readonly ttlMs: number;
}

/**
 * Some counters were added and some were not (a Redis Cluster with one shard down): `totals` has the new
 * total of each added counter and null for the others, in the order of the entries.
 */
export class PartialCountError extends Error {
  constructor(readonly totals: ReadonlyArray<number | null>, cause: unknown) {
    super(`some violation counters could not be updated: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'PartialCountError';
  }
}

/**
 * Adds each delta to its counter and returns the new totals, in the same order. Throws PartialCountError
 * when only some were added (so that those are not added twice), any other error when none were.
 */
export interface WindowCounter {
  add(entries: readonly WindowCounterEntry[]): Promise<number[]>;
}

export function memoryWindowCounter(now: () => number = Date.now): WindowCounter {
  const counters = new Map<string, { n: number; expiresAt: number }>();
  return {
    async add(entries) {
      const t = now();
      for (const [k, c] of counters) if (c.expiresAt <= t) counters.delete(k);
      return entries.map((e) => {
        const c = counters.get(e.key) ?? { n: 0, expiresAt: 0 };
        c.n += e.delta;
        c.expiresAt = t + e.ttlMs;
        counters.set(e.key, c);
        return c.n;
      });
    },
  };
}

/** The shared counter of one tenant's denials in the window starting at `windowStartMs`. */
export function violationKey(prefix: string, tenantId: string, windowStartMs: number, cluster = false): string {
  return `${prefix}violations:${cluster ? `{${tenantId}}` : tenantId}:${Math.floor(windowStartMs / 1000)}`;
}

// Prefixed, as the store's scripts are, so a client shared with other code cannot have a command of this name.
const ADD_COUNTERS = 'usageLimiterAddCounters';
type AddCounters = (numKeys: number, ...keysAndArgs: string[]) => Promise<Array<number | null>>;
/**
 * Counters per script call. A flush under load carries thousands; in chunks of this many each call holds Redis
 * for about a tenth of a millisecond, so the Checks' scripts queued behind it hardly wait.
 */
export const COUNTERS_PER_CALL = 100;

let addCountersLua: string | undefined;

/** The script call of add-counters.lua on a standalone client (defined on it once). */
function addCountersCommand(client: Redis): AddCounters {
  if (typeof (client as unknown as Record<string, unknown>)[ADD_COUNTERS] !== 'function') {
    // defineCommand sends EVALSHA and falls back to EVAL on NOSCRIPT (a restarted or flushed Redis).
    addCountersLua ??= fs.readFileSync(new URL('./add-counters.lua', import.meta.url), 'utf8');
    client.defineCommand(ADD_COUNTERS, { lua: addCountersLua });
  }
  return (client as unknown as Record<typeof ADD_COUNTERS, AddCounters>)[ADD_COUNTERS].bind(client);
}

/**
 * The new totals when every counter was added; else the error: the failure itself when none was, a
 * PartialCountError (null for each counter not added) when some were.
 */
function totalsOrThrow(totals: Array<number | null>, failure: { readonly reason: unknown } | undefined): number[] {
  if (failure === undefined) return totals as number[];
  if (totals.every((t) => t === null)) throw failure.reason;
  throw new PartialCountError(totals, failure.reason);
}

export function redisWindowCounter(client: Redis | Cluster): WindowCounter {
  const addCounters = client instanceof Cluster ? null : addCountersCommand(client);
  return {
    async add(entries) {
      if (entries.length === 0) return [];
      if (addCounters === null) {
        // A cluster pipeline must stay within one slot: one pipeline per counter, all sent at once. The
        // shards fail independently, so some counters may be added while others are not.
        const results = await Promise.allSettled(
          entries.map(async (e) => {
            const [[err, value] = [new Error('no reply'), null]] =
              (await client.pipeline().incrby(e.key, e.delta).pexpire(e.key, Math.max(1, Math.round(e.ttlMs))).exec()) ?? [];
            if (err) throw err;
            return Number(value);
          }),
        );
        return totalsOrThrow(
          results.map((r) => (r.status === 'fulfilled' ? r.value : null)),
          results.find((r): r is PromiseRejectedResult => r.status === 'rejected'),
        );
      }
      // One script call per chunk, all sent at once. A chunk whose call fails (a timeout, a lost connection)
      // counts as not added, so it is retried: whether Redis ran it before the reply was lost cannot be told.
      const chunks: WindowCounterEntry[][] = [];
      for (let i = 0; i < entries.length; i += COUNTERS_PER_CALL) chunks.push(entries.slice(i, i + COUNTERS_PER_CALL));
      const replies = await Promise.allSettled(
        chunks.map((chunk) =>
          addCounters(chunk.length, ...chunk.map((e) => e.key), ...chunk.flatMap((e) => [String(e.delta), String(Math.max(1, Math.round(e.ttlMs)))])),
        ),
      );
      let failure: { reason: unknown } | undefined;
      const totals = chunks.flatMap((chunk, c) => {
        const reply = replies[c];
        if (reply?.status !== 'fulfilled') {
          failure ??= { reason: reply?.reason ?? new Error('no reply') };
          return chunk.map(() => null);
        }
        return chunk.map((e, i) => {
          const total = reply.value[i];
          if (total !== null && total !== undefined) return Number(total);
          failure ??= { reason: new Error(`violation counter ${e.key} could not be added: it holds something other than a count`) };
          return null;
        });
      });
      return totalsOrThrow(totals, failure);
    },
  };
}

export interface ViolationWindow {
  readonly startMs: number;
  readonly lengthMs: number;
}

export interface ViolationTrackerOptions {
  readonly counter: WindowCounter;
  /** Denials within one window that raise the alert. */
  readonly threshold: number;
  readonly windowMs: number;
  readonly flushMs: number;
  /** Prepended to counter keys (REDIS_KEY_PREFIX). */
  readonly keyPrefix: string;
  /** Redis Cluster key names: the tenant wrapped in `{}`. */
  readonly clusterKeys?: boolean;
  readonly logger: Logger;
  /** The clock the denials were recorded with (for counter lifetimes). */
  readonly now: () => number;
  readonly onCrossed: (tenantId: string, window: ViolationWindow, count: number) => void;
}

/** Counters outlive their window by this much, so a late flush still adds to the right one. */
const WINDOW_GRACE_MS = 60_000;

export class ViolationTracker {
  /** Window start → tenant → denials not yet flushed. */
  private pending = new Map<number, Map<string, number>>();
  /**
   * Window start → tenant → denials whose call failed but which Redis may have added all the same (a reply
   * lost to a timeout: Redis ran the script once it woke up). They are sent again, so the count may run
   * high by that much; and the crossing may have happened inside the unread reply, so the next reply's
   * test for it looks that far back. One alert per tenant and window even so: a second raise of the same
   * window is the same outbox row.
   */
  private uncertain = new Map<number, Map<string, number>>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private failing = false;

  constructor(private readonly opts: ViolationTrackerOptions) {}

  /** Hot path: two Map operations. */
  record(tenantId: string, nowMs: number): void {
    addTo(this.pending, nowMs - (nowMs % this.opts.windowMs), tenantId, 1);
  }

  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => void this.flush(), this.opts.flushMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.flush();
    let lost = 0;
    for (const byTenant of this.pending.values()) for (const n of byTenant.values()) lost += n;
    if (lost > 0) {
      this.opts.logger.warn(
        { event: 'violations.lost_on_shutdown', denials: lost, tenants: new Set([...this.pending.values()].flatMap((m) => [...m.keys()])).size },
        'violation counts could not be added before exit',
      );
    }
  }

  /** Never rejects: on failure the deltas are kept for the next flush. */
  flush(): Promise<void> {
    this.flushing ??= this.flushOnce().finally(() => {
      this.flushing = null;
    });
    return this.flushing;
  }

  private async flushOnce(): Promise<void> {
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    const { windowMs, keyPrefix, threshold } = this.opts;
    const items: Array<{ tenantId: string; start: number; delta: number }> = [];
    const entries: WindowCounterEntry[] = [];
    const nowMs = this.opts.now();
    for (const [start, byTenant] of batch) {
      for (const [tenantId, delta] of byTenant) {
        items.push({ tenantId, start, delta });
        entries.push({
          key: violationKey(keyPrefix, tenantId, start, this.opts.clusterKeys),
          delta,
          ttlMs: Math.max(WINDOW_GRACE_MS, start + windowMs - nowMs + WINDOW_GRACE_MS),
        });
      }
    }
    let totals: ReadonlyArray<number | null>;
    try {
      totals = await this.opts.counter.add(entries);
      if (this.failing) this.opts.logger.info({ event: 'violations.recovered' }, 'violation counters reachable again');
      this.failing = false;
    } catch (err) {
      // Put back the deltas that were not added (all of them, unless only some failed); they are added on
      // the next flush. Those that were added are not put back, so nothing is counted twice.
      totals = err instanceof PartialCountError ? err.totals : items.map(() => null);
      items.forEach((it, i) => {
        if (totals[i] !== null) return;
        addTo(this.pending, it.start, it.tenantId, it.delta);
        addTo(this.uncertain, it.start, it.tenantId, it.delta);
      });
      if (!this.failing) {
        this.opts.logger.warn(
          { event: 'violations.unreachable', err: err instanceof Error ? err.message : String(err) },
          'could not update shared violation counters; keeping counts in memory',
        );
      }
      this.failing = true;
    }
    items.forEach((it, i) => {
      const total = totals[i];
      if (total === null || total === undefined) return;
      const maybeAdded = takeFrom(this.uncertain, it.start, it.tenantId);
      if (total >= threshold && total - it.delta - maybeAdded < threshold) {
        this.opts.onCrossed(it.tenantId, { startMs: it.start, lengthMs: windowMs }, total);
      }
    });
  }
}

/** Adds `n` to the count held for (start, tenant). On the hot path (`record`): two Map operations when the window exists. */
function addTo(map: Map<number, Map<string, number>>, start: number, tenantId: string, n: number): void {
  let byTenant = map.get(start);
  if (byTenant === undefined) {
    byTenant = new Map();
    map.set(start, byTenant);
  }
  byTenant.set(tenantId, (byTenant.get(tenantId) ?? 0) + n);
}

/** The count held for (start, tenant), removed; 0 when there is none. */
function takeFrom(map: Map<number, Map<string, number>>, start: number, tenantId: string): number {
  const byTenant = map.get(start);
  const n = byTenant?.get(tenantId);
  if (byTenant === undefined || n === undefined) return 0;
  byTenant.delete(tenantId);
  if (byTenant.size === 0) map.delete(start);
  return n;
}

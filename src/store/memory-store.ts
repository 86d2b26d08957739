// The counter store of a single process (no REDIS_URL): the same semantics as check-and-reserve.lua,
// kept in maps. Each call runs start to finish without an await, which is what makes it atomic here;
// nothing is shared with other replicas. Expiry follows the callers' clock (nowMs), as in Redis.
import {
  COUNTER_GRACE_MS,
  DEFAULT_SETTLEMENT_WINDOW_MS,
  TOTAL_FIELD,
  assertValidCheckRequest,
  assertValidWindow,
  endpointField,
  normalizePercents,
  settlementHorizon,
  storeKeys,
} from './keys.js';
import { parseUsageHash, settlement, toCount } from './parse-reply.js';
import { assertValidRestore } from './restore.js';
import type {
  CheckAndReserveRequest,
  CheckAndReserveResult,
  CounterStore,
  EndpointSettlement,
  PeriodUsage,
  QuotaRequest,
  QuotaResult,
  ReadRateRequest,
  ReadRateResult,
  SettledUsage,
  SettleOutcome,
  SettleRequest,
  ThresholdCrossing,
} from './types.js';

export interface UsageEdit {
  readonly total?: number;
  readonly endpoints?: Readonly<Record<string, number>>;
}

export interface MemoryCounterStore extends CounterStore {
  /**
   * What an operator's `redis-cli hset usage:<tenant>:<period> ...` does: sets the given fields, keeps the
   * others and the expiry (a period created here has none until a reservation sets it).
   */
  setUsage(tenantId: string, period: string, usage: UsageEdit): void;
  /** Entries held, to show (and test) that expired data does not pile up. */
  sizes(): { readLogs: number; periods: number; thresholdFlags: number; pendingSets: number };
  /** What an operator's (or a failover's) `redis-cli del usage:<tenant>:<period>` does. */
  deleteUsage(tenantId: string, period: string): void;
}

export interface MemoryStoreOptions {
  /** How long a reservation waits for its access-log entry (SETTLEMENT_WINDOW_SECONDS). Default 120 s. */
  readonly settlementWindowMs?: number;
}

interface ReadLog {
  /** Admitted request times, ascending. */
  times: number[];
  windowMs: number;
  /** Like PEXPIRE on the Redis keys: the whole log is gone at this time. */
  expiresAt: number;
}

interface UsageHash {
  /** Field name → stored value, as in the Redis hash (`__total__`, `op:<endpoint>`). */
  fields: Map<string, number>;
  expiresAt: number;
}

/** Like the `usage_pending:...` sorted set: request id → time of its Check. */
interface PendingSet {
  entries: Map<string, number>;
  expiresAt: number;
}

/** A full sweep of expired data happens at most this often (by the callers' clock). */
const SWEEP_INTERVAL_MS = 60_000;

export function createMemoryStore(opts: MemoryStoreOptions = {}): MemoryCounterStore {
  const settlementWindowMs = opts.settlementWindowMs ?? DEFAULT_SETTLEMENT_WINDOW_MS;
  assertValidWindow(settlementWindowMs);
  const keys = (tenantId: string) => storeKeys({}, tenantId);
  const readLogs = new Map<string, ReadLog>();
  const hashes = new Map<string, UsageHash>();
  const pendingSets = new Map<string, PendingSet>();
  /** Threshold flag key → expiry time. */
  const flags = new Map<string, number>();
  let nextSweepAt = Number.NEGATIVE_INFINITY;

  // Lazy pruning: only data touched by calls is trimmed on access, so idle tenants and old periods are
  // dropped by this sweep, and memory stays bounded by what is live.
  function sweep(now: number): void {
    if (now < nextSweepAt) return;
    nextSweepAt = now + SWEEP_INTERVAL_MS;
    for (const [key, log] of readLogs) {
      trim(log, now);
      if (log.times.length === 0 || log.expiresAt <= now) readLogs.delete(key);
    }
    for (const [key, hash] of hashes) if (hash.expiresAt <= now) hashes.delete(key);
    for (const [key, expiresAt] of flags) if (expiresAt <= now) flags.delete(key);
    for (const [key, set] of pendingSets) if (set.expiresAt <= now) pendingSets.delete(key);
  }

  function livePending(key: string, now: number): PendingSet | undefined {
    const set = pendingSets.get(key);
    if (set && set.expiresAt <= now) {
      pendingSets.delete(key);
      return undefined;
    }
    return set;
  }

  function trim(log: ReadLog, now: number): void {
    const cutoff = now - log.windowMs;
    let drop = 0;
    while (drop < log.times.length && (log.times[drop] ?? 0) <= cutoff) drop++;
    if (drop > 0) log.times.splice(0, drop);
  }

  function liveHash(key: string, now: number): UsageHash | undefined {
    const hash = hashes.get(key);
    if (hash && hash.expiresAt <= now) {
      hashes.delete(key);
      return undefined;
    }
    return hash;
  }

  function readRate(tenantId: string, rr: ReadRateRequest, now: number): ReadRateResult {
    const key = keys(tenantId).readRate;
    let log = readLogs.get(key);
    if (log && log.expiresAt <= now) log = undefined;
    // The window of the current request decides, as ZREMRANGEBYSCORE does with the window it is given.
    if (log) {
      log.windowMs = rr.windowMs;
      trim(log, now);
    }
    const count = log?.times.length ?? 0;
    return { allowed: count < rr.limit, count, oldestMs: log?.times[0] ?? null };
  }

  /** Records an allowed read (once the quota, if any, has not refused it), as the script does last. */
  function recordRead(tenantId: string, rr: ReadRateRequest, now: number): ReadRateResult {
    const key = keys(tenantId).readRate;
    let log = readLogs.get(key);
    if (log && log.expiresAt <= now) log = undefined;
    const count = log?.times.length ?? 0;
    if (!log) {
      log = { times: [], windowMs: rr.windowMs, expiresAt: 0 };
      readLogs.set(key, log);
    }
    // Callers' clocks may disagree slightly, so keep the log sorted like a sorted set would.
    let at = log.times.length;
    while (at > 0 && (log.times[at - 1] ?? 0) > now) at--;
    log.times.splice(at, 0, now);
    log.expiresAt = now + rr.windowMs;
    return { allowed: true, count: count + 1, oldestMs: log.times[0] ?? now };
  }

  function quota(tenantId: string, requestId: string, q: QuotaRequest, now: number): QuotaResult {
    const k = keys(tenantId);
    const hashKey = k.usage(q.period);
    const field = endpointField(q.endpoint);
    const hash = liveHash(hashKey, now);
    let used = toCount(hash?.fields.get(field));
    let total = toCount(hash?.fields.get(TOTAL_FIELD));
    if (used + 1 > q.endpointLimit) {
      return { allowed: false, endpointUsed: used, totalUsed: total, blockedBy: 'endpoint', crossed: [] };
    }
    if (q.totalLimit !== null && total + 1 > q.totalLimit) {
      return { allowed: false, endpointUsed: used, totalUsed: total, blockedBy: 'total', crossed: [] };
    }
    used += 1;
    total += 1;
    const expiresAt = Math.max(now + 1, q.periodEndMs + COUNTER_GRACE_MS);
    const target = hash ?? { fields: new Map<string, number>(), expiresAt };
    target.fields.set(field, used);
    target.fields.set(TOTAL_FIELD, total);
    target.expiresAt = expiresAt;
    hashes.set(hashKey, target);

    // As in check-and-reserve.lua: prune what has aged out of the window, add NX, expire after 2 windows.
    const pendingKey = k.pending(q.endpoint, q.period);
    const pending = livePending(pendingKey, now) ?? { entries: new Map<string, number>(), expiresAt: 0 };
    for (const [id, at] of pending.entries) if (at <= now - settlementWindowMs) pending.entries.delete(id);
    if (!pending.entries.has(requestId)) pending.entries.set(requestId, now);
    pending.expiresAt = now + 2 * settlementWindowMs;
    pendingSets.set(pendingKey, pending);

    const crossed: ThresholdCrossing[] = [];
    const flag = (scope: ThresholdCrossing['scope'], endpoint: string, percent: number, usage: number, limit: number) => {
      // Integer arithmetic, as in the Lua script: no 0.7 * 10 style rounding.
      if (usage * 100 < percent * limit) return;
      const flagKey = k.threshold(endpoint, q.period, percent);
      const existing = flags.get(flagKey);
      if (existing !== undefined && existing > now) return;
      flags.set(flagKey, expiresAt);
      crossed.push({ scope, percent, usage, limit });
    };
    const percents = normalizePercents(q.thresholdPercents);
    for (const p of percents) flag('endpoint', q.endpoint, p, used, q.endpointLimit);
    if (q.totalLimit !== null) for (const p of percents) flag('total', TOTAL_FIELD, p, total, q.totalLimit);
    return { allowed: true, endpointUsed: used, totalUsed: total, blockedBy: null, crossed };
  }

  function fieldsOf(tenantId: string, period: string): Map<string, number> | undefined {
    return hashes.get(keys(tenantId).usage(period))?.fields;
  }

  return {
    async checkAndReserve(req: CheckAndReserveRequest): Promise<CheckAndReserveResult> {
      assertValidCheckRequest(req);
      // Validate before any state changes, so a bad request cannot leave a half-done reservation.
      if (req.quota) normalizePercents(req.quota.thresholdPercents);
      sweep(req.nowMs);
      // As in the script: a missing hash is reported before anything, even the read, is recorded.
      if (req.quota?.ifUsageMissing === 'report' && !liveHash(keys(req.tenantId).usage(req.quota.period), req.nowMs)) {
        return { readRate: null, quota: null, usageMissing: true };
      }
      const rr = req.readRate ? readRate(req.tenantId, req.readRate, req.nowMs) : null;
      if (rr && !rr.allowed) return { readRate: rr, quota: null };
      const q = req.quota ? quota(req.tenantId, req.requestId, req.quota, req.nowMs) : null;
      // As in the script: a read the quota refuses does not use up the window.
      const read = req.readRate && (q === null || q.allowed) ? recordRead(req.tenantId, req.readRate, req.nowMs) : rr;
      return { readRate: read, quota: q };
    },

    async settle(entries: readonly SettleRequest[], nowMs: number): Promise<SettleOutcome[]> {
      return entries.map((e): SettleOutcome => {
        const k = keys(e.tenantId);
        const set = livePending(k.pending(e.endpoint, e.period), nowMs);
        const at = set?.entries.get(e.requestId);
        if (set === undefined || at === undefined) return 'unknown';
        set.entries.delete(e.requestId);
        if (at <= nowMs - settlementWindowMs) return 'expired';
        if (!e.failed) return 'settled';
        const fields = liveHash(k.usage(e.period), nowMs)?.fields;
        for (const field of [endpointField(e.endpoint), TOTAL_FIELD]) {
          const value = fields?.get(field);
          if (fields && value !== undefined) fields.set(field, Math.max(0, toCount(value) - 1));
        }
        return 'refunded';
      });
    },

    async settledUsage(tenantId: string, period: string, nowMs: number): Promise<SettledUsage> {
      const k = keys(tenantId);
      const hash = liveHash(k.usage(period), nowMs);
      if (!hash) return { exists: false, endpoints: {} };
      const horizon = nowMs - settlementHorizon(settlementWindowMs);
      const out: Record<string, EndpointSettlement> = {};
      for (const [field, value] of hash.fields) {
        if (!field.startsWith('op:')) continue;
        const endpoint = field.slice(3);
        let pending = 0;
        for (const at of livePending(k.pending(endpoint, period), nowMs)?.entries.values() ?? []) if (at > horizon) pending++;
        out[endpoint] = settlement(toCount(value), pending);
      }
      return { exists: true, endpoints: out };
    },

    async restoreUsage(
      tenantId: string,
      period: string,
      usage: PeriodUsage,
      periodEndMs: number,
      nowMs: number,
    ): Promise<boolean> {
      assertValidRestore(usage, periodEndMs, nowMs);
      const k = keys(tenantId);
      if (liveHash(k.usage(period), nowMs)) return false;
      const fields = new Map<string, number>([[TOTAL_FIELD, usage.total]]);
      for (const [endpoint, n] of Object.entries(usage.endpoints)) {
        if (n !== 0) fields.set(endpointField(endpoint), n);
        pendingSets.delete(k.pending(endpoint, period));
      }
      hashes.set(k.usage(period), { fields, expiresAt: nowMs + Math.max(1, periodEndMs + COUNTER_GRACE_MS - nowMs) });
      return true;
    },

    async release(tenantId: string, period: string, endpoint: string, units: number): Promise<void> {
      if (!Number.isSafeInteger(units) || units < 0) {
        throw new RangeError(`units must be an integer >= 0, got ${units}`);
      }
      const fields = fieldsOf(tenantId, period);
      if (!fields) return;
      // Like release.lua: missing fields stay missing, present ones never go below zero.
      for (const field of [endpointField(endpoint), TOTAL_FIELD]) {
        const value = fields.get(field);
        if (value !== undefined) fields.set(field, Math.max(0, toCount(value) - units));
      }
    },

    async usage(tenantId: string, period: string): Promise<PeriodUsage> {
      const fields = fieldsOf(tenantId, period);
      const hash: Record<string, string> = {};
      for (const [field, value] of fields ?? []) hash[field] = String(value);
      return parseUsageHash(hash);
    },

    async ping(): Promise<void> {},

    async close(): Promise<void> {},

    sizes: () => ({
      readLogs: readLogs.size,
      periods: hashes.size,
      thresholdFlags: flags.size,
      pendingSets: pendingSets.size,
    }),

    deleteUsage(tenantId: string, period: string): void {
      hashes.delete(keys(tenantId).usage(period));
    },

    setUsage(tenantId: string, period: string, usage: UsageEdit): void {
      const key = keys(tenantId).usage(period);
      let hash = hashes.get(key);
      if (!hash) {
        hash = { fields: new Map(), expiresAt: Number.POSITIVE_INFINITY };
        hashes.set(key, hash);
      }
      if (usage.total !== undefined) hash.fields.set(TOTAL_FIELD, usage.total);
      for (const [endpoint, value] of Object.entries(usage.endpoints ?? {})) {
        hash.fields.set(endpointField(endpoint), value);
      }
    },
  };
}

// The counter store of a single process (no REDIS_URL): the same semantics as check-and-reserve.lua,
// kept in maps. Each call runs start to finish without an await, which is what makes it atomic here;
// nothing is shared with other replicas. Expiry follows the callers' clock (nowMs), as in Redis.
import {
  COUNTER_GRACE_MS,
  TOTAL_FIELD,
  assertValidCheckRequest,
  endpointField,
  normalizePercents,
  storeKeys,
} from './keys.js';
import { parseUsageHash, toCount } from './parse-reply.js';
import type {
  CheckAndReserveRequest,
  CheckAndReserveResult,
  CounterStore,
  PeriodUsage,
  QuotaRequest,
  QuotaResult,
  ReadRateRequest,
  ReadRateResult,
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
  sizes(): { readLogs: number; periods: number; thresholdFlags: number };
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

/** A full sweep of expired data happens at most this often (by the callers' clock). */
const SWEEP_INTERVAL_MS = 60_000;

export function createMemoryStore(): MemoryCounterStore {
  const keys = (tenantId: string) => storeKeys({}, tenantId);
  const readLogs = new Map<string, ReadLog>();
  const hashes = new Map<string, UsageHash>();
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
    if (count >= rr.limit) {
      return { allowed: false, count, oldestMs: log?.times[0] ?? null };
    }
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

  function quota(tenantId: string, q: QuotaRequest, now: number): QuotaResult {
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
      const rr = req.readRate ? readRate(req.tenantId, req.readRate, req.nowMs) : null;
      if (rr && !rr.allowed) return { readRate: rr, quota: null };
      return { readRate: rr, quota: req.quota ? quota(req.tenantId, req.quota, req.nowMs) : null };
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

    sizes: () => ({ readLogs: readLogs.size, periods: hashes.size, thresholdFlags: flags.size }),

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

// Redis key names, and the one canonical form of the values that become key parts or script arguments.
// The names are public (runbooks and on-call engineers use them with redis-cli), so they change only
// together with DESIGN.md. The in-memory store reuses them as map keys so both stores agree.

import type { CheckAndReserveRequest } from './types.js';

export interface StoreKeyOptions {
  /** Prepended to every key; tests use their own so they never touch each other's (or real) keys. */
  readonly prefix?: string;
  /** Wrap the tenant in `{}` so that all of a tenant's keys hash to one Redis Cluster slot. */
  readonly cluster?: boolean;
}

export interface TenantKeys {
  /** Sorted set: one member per admitted read request, scored by its time (epoch ms). */
  readonly readRate: string;
  /** Counter that makes the sorted set's members unique when two requests share a millisecond. */
  readonly readRateSeq: string;
  /** Hash with `__total__` and `op:<endpoint>` for one period (`YYYY-MM`). */
  usage(period: string): string;
  /** Flag set once when `percent` of a limit is reached; `endpoint` is `__total__` for the total cap. */
  threshold(endpoint: string, period: string, percent: number): string;
  /**
   * Sorted set of the reservations on `endpoint` in `period` that still wait for their access-log entry:
   * member = request id, score = the Check's time (epoch ms).
   */
  pending(endpoint: string, period: string): string;
}

/** Hash field (and threshold key part) of the cap over all metered endpoints. */
export const TOTAL_FIELD = '__total__';

/**
 * How long after a period's end its counters and threshold flags are kept: settlement and billing
 * still read a period for a while after it closes.
 */
export const COUNTER_GRACE_MS = 35 * 24 * 60 * 60 * 1000;

export function endpointField(endpoint: string): string {
  return `op:${endpoint}`;
}

export function storeKeys(opts: StoreKeyOptions, tenantId: string): TenantKeys {
  const prefix = opts.prefix ?? '';
  const tenant = opts.cluster === true ? `{${tenantId}}` : tenantId;
  return {
    readRate: `${prefix}read_rate:${tenant}`,
    readRateSeq: `${prefix}read_rate:${tenant}:seq`,
    usage: (period) => `${prefix}usage:${tenant}:${period}`,
    threshold: (endpoint, period, percent) =>
      `${prefix}usage_threshold:${tenant}:${endpoint}:${period}:${percent}`,
    pending: (endpoint, period) => `${prefix}usage_pending:${tenant}:${endpoint}:${period}`,
  };
}

/** How long a reservation waits for its access-log entry unless the stores are told otherwise. */
export const DEFAULT_SETTLEMENT_WINDOW_MS = 120_000;

/**
 * Reservations younger than this (ms before now) still count as pending when settled usage is read for
 * billing: the settlement window plus an allowance for clocks that differ between replicas (a tenth of the
 * window, at most 5 s). Settlement refunds only entries younger than the window by its own clock, so a unit
 * that billing counted as settled can no longer be refunded by a replica whose clock is behind by less than
 * the allowance.
 */
export function settlementHorizon(windowMs: number): number {
  return windowMs + Math.min(5_000, Math.floor(windowMs / 10));
}

export function assertValidWindow(windowMs: number): void {
  if (!Number.isSafeInteger(windowMs) || windowMs <= 0) {
    throw new RangeError(`settlementWindowMs must be an integer > 0, got ${windowMs}`);
  }
}

/**
 * Threshold percents in the one form both stores use: each percent names a flag key, and the Lua reply
 * carries integers only, so fractions are rejected rather than silently truncated. Ascending, so alerts
 * crossed together are reported from the lowest up.
 */
export function normalizePercents(percents: readonly number[]): number[] {
  for (const p of percents) {
    if (!Number.isInteger(p) || p < 0) throw new RangeError(`threshold percent must be an integer >= 0, got ${p}`);
  }
  return [...new Set(percents)].sort((a, b) => a - b);
}

function assertCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be an integer >= 0, got ${value}`);
}

/**
 * Rejects requests that the stores would otherwise turn into surprises (a zero window would make Redis
 * delete the log on PEXPIRE; a fractional limit would compare differently in Lua and in JS).
 */
export function assertValidCheckRequest(req: CheckAndReserveRequest): void {
  if (!Number.isSafeInteger(req.nowMs)) throw new RangeError(`nowMs must be an integer, got ${req.nowMs}`);
  if (req.readRate) {
    assertCount('readRate.limit', req.readRate.limit);
    if (!Number.isSafeInteger(req.readRate.windowMs) || req.readRate.windowMs <= 0) {
      throw new RangeError(`readRate.windowMs must be an integer > 0, got ${req.readRate.windowMs}`);
    }
  }
  if (req.quota) {
    // The request id names the reservation that settlement looks for.
    if (typeof req.requestId !== 'string' || req.requestId === '') {
      throw new RangeError('requestId must be a non-empty string when a quota is requested');
    }
    assertCount('quota.endpointLimit', req.quota.endpointLimit);
    if (req.quota.totalLimit !== null) assertCount('quota.totalLimit', req.quota.totalLimit);
    if (!Number.isSafeInteger(req.quota.periodEndMs)) {
      throw new RangeError(`quota.periodEndMs must be an integer, got ${req.quota.periodEndMs}`);
    }
  }
}

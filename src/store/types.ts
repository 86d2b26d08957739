// The counter store: one atomic "check and reserve" per Check, behind an interface so that the Redis
// and in-memory implementations can be swapped and run through one contract suite.

export interface ReadRateRequest {
  /** Requests allowed in the rolling window. */
  readonly limit: number;
  readonly windowMs: number;
}

export interface QuotaRequest {
  /** Period label, `YYYY-MM` of the period start (UTC). */
  readonly period: string;
  /** End of the period (epoch ms): counters and threshold flags expire a grace time after it. */
  readonly periodEndMs: number;
  /** The metered endpoint as configured (e.g. `/verify`); the hash field is `op:<endpoint>`. */
  readonly endpoint: string;
  readonly endpointLimit: number;
  /** Cap over all metered endpoints (`__total__`), or null for none. */
  readonly totalLimit: number | null;
  /** Alert thresholds as integer percents, e.g. [80, 90, 100]. */
  readonly thresholdPercents: readonly number[];
}

export interface CheckAndReserveRequest {
  readonly tenantId: string;
  /** The caller's clock (epoch ms); stores never read the time themselves. */
  readonly nowMs: number;
  /** Present when the request is a GET/HEAD and the tier has a read-rate limit. */
  readonly readRate: ReadRateRequest | null;
  /** Present when the path is a metered endpoint of the tier. */
  readonly quota: QuotaRequest | null;
}

export interface ReadRateResult {
  readonly allowed: boolean;
  /** Requests in the window: after recording this one when allowed, the current count when denied. */
  readonly count: number;
  /** Timestamp (epoch ms) of the oldest request still in the window, or null when the window is empty. */
  readonly oldestMs: number | null;
}

export interface ThresholdCrossing {
  /** `endpoint` for the per-endpoint limit, `total` for `__total__`. */
  readonly scope: 'endpoint' | 'total';
  readonly percent: number;
  /** Usage after this reservation, and the limit it was measured against. */
  readonly usage: number;
  readonly limit: number;
}

export interface QuotaResult {
  readonly allowed: boolean;
  /** Usage after the reservation when allowed; the current usage when denied. */
  readonly endpointUsed: number;
  readonly totalUsed: number;
  /** Which cap denied the request; null when allowed. */
  readonly blockedBy: 'endpoint' | 'total' | null;
  /** Thresholds that this reservation crossed for the first time in the period (flags set atomically). */
  readonly crossed: readonly ThresholdCrossing[];
}

export interface CheckAndReserveResult {
  /** Null when no read-rate limit was requested. */
  readonly readRate: ReadRateResult | null;
  /** Null when no quota was requested, or when the read-rate limit denied first (nothing reserved). */
  readonly quota: QuotaResult | null;
}

export interface PeriodUsage {
  readonly total: number;
  /** Keyed by endpoint, without the `op:` prefix. */
  readonly endpoints: Readonly<Record<string, number>>;
}

export interface CounterStore {
  /**
   * Atomically: evaluate the read-rate window (recording the request if allowed), then, if still allowed,
   * check every quota cap and reserve one unit on all of them, and set any threshold flags crossed.
   * One Redis round trip in the Redis implementation.
   */
  checkAndReserve(req: CheckAndReserveRequest): Promise<CheckAndReserveResult>;
  /** Give back `units` reserved on `endpoint` (and the total) in `period`; never below zero. */
  release(tenantId: string, period: string, endpoint: string, units: number): Promise<void>;
  /** Current usage of a period, as stored. */
  usage(tenantId: string, period: string): Promise<PeriodUsage>;
  /** Throws when the backend is unreachable. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

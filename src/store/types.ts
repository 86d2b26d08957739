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
  /**
   * What to do when the period's usage hash does not exist. `create`: count from zero. `report`: reserve and
   * record nothing (not even the read) and answer `usageMissing`, so the caller can rebuild the counters
   * first: a missing hash may be a brand-new period, or Redis having lost one (flush, restart, failover).
   */
  readonly ifUsageMissing: 'create' | 'report';
}

export interface CheckAndReserveRequest {
  readonly tenantId: string;
  /**
   * Names the reservation in the period's pending set (Envoy's `x-request-id`), so that the access-log entry
   * of the same request can settle it exactly once.
   */
  readonly requestId: string;
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
  /**
   * Present (true) only when the quota asked to `report` a missing usage hash and it was missing: then
   * nothing at all was evaluated or recorded, and `readRate` and `quota` are null.
   */
  readonly usageMissing?: true;
}

/** How an admitted metered request ended, from Envoy's access log. */
export interface SettleRequest {
  readonly tenantId: string;
  readonly period: string;
  readonly endpoint: string;
  readonly requestId: string;
  /** The upstream failed it (5xx, or no response at all): its reserved unit is given back. */
  readonly failed: boolean;
}

/**
 * - `settled`: the reservation was pending and now stands (the upstream answered).
 * - `refunded`: it was pending, the upstream failed, and the unit was given back.
 * - `expired`: it was older than the settlement window; it stands, whatever the entry says.
 * - `unknown`: nothing pending under that id (already settled, pruned, or never reserved): nothing done.
 */
export type SettleOutcome = 'settled' | 'refunded' | 'expired' | 'unknown';

export interface EndpointSettlement {
  /** The counter (`op:<endpoint>`), as enforcement reads it. */
  readonly used: number;
  /** Reservations still inside the settlement window: their requests may yet be refunded. */
  readonly pending: number;
  /** `used - pending`, never below zero: units that can no longer be given back, i.e. billable. */
  readonly settled: number;
}

export interface SettledUsage {
  /** False when the period's usage hash does not exist (never used, or lost): nothing can be said. */
  readonly exists: boolean;
  /** Keyed by endpoint, without the `op:` prefix. */
  readonly endpoints: Readonly<Record<string, EndpointSettlement>>;
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
  /**
   * Settles reservations from access-log entries, each atomically: removes the entry from its pending set
   * and, only if it was still there, younger than the settlement window and failed, gives its unit back
   * (endpoint and total, never below zero; threshold flags untouched). So an entry delivered twice refunds
   * once. Outcomes are in the order of `entries`.
   */
  settle(entries: readonly SettleRequest[], nowMs: number): Promise<SettleOutcome[]>;
  /**
   * Per endpoint of a period: counter, reservations still pending and settled units, read atomically per
   * period. Pending means younger than the settlement window plus a clock-skew allowance (see
   * `settlementHorizon`), so a unit counted as settled here can no longer be refunded by any replica.
   */
  settledUsage(tenantId: string, period: string, nowMs: number): Promise<SettledUsage>;
  /**
   * Creates a period's usage hash with the given counts (`__total__` always, endpoints only when not zero),
   * only if it does not exist (atomically), expiring a grace time after `periodEndMs`; also drops the pending
   * sets of the endpoints given, whose reservations were lost with the old hash. Returns false, changing
   * nothing, when the hash already exists.
   */
  restoreUsage(tenantId: string, period: string, usage: PeriodUsage, periodEndMs: number, nowMs: number): Promise<boolean>;
  /** Throws when the backend is unreachable. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

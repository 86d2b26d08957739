// The decision core: pure functions from (input, resolved key, store answer, clock) to a Decision.
// The Check runs in three steps because the store is I/O:
//   planCheck()      → either a final decision, or a store request plus the context to judge its answer
//   (the service calls CounterStore.checkAndReserve)
//   concludeCheck()  → the decision from the store's answer; storeUnavailable() when the store failed.

import type { CheckAndReserveRequest, CheckAndReserveResult } from '../store/types.js';
import { OUTCOMES, MESSAGES, GrpcCode, type DenyCode } from './outcomes.js';
import { EndpointMatcher } from './path.js';
import { periodFor, type Period } from './period.js';
import type { CheckInput, KeyHeader } from './request.js';
import type { ResolvedKey, Tier } from './types.js';

export interface RateLimitInfo {
  readonly limit: number;
  readonly remaining: number;
  /** When the limit next frees capacity (epoch seconds, rounded up: the header value). */
  readonly resetEpochS: number;
  /** The same instant, exact (epoch ms): nothing may treat the limit as exhausted past it. */
  readonly resetAtMs: number;
  /** Seconds a denied client should wait; null on allowed responses. */
  readonly retryAfterS: number | null;
}

export type LogEvent =
  | {
      readonly kind: 'read_rate_exceeded';
      readonly tenantId: string;
      readonly endpoint: string;
      readonly limit: number;
      readonly count: number;
    }
  | {
      readonly kind: 'usage_limit_exceeded';
      readonly tenantId: string;
      readonly endpoint: string;
      readonly usage: number;
      readonly limit: number;
    }
  | {
      readonly kind: 'threshold';
      readonly tenantId: string;
      readonly endpoint: string;
      /** A fraction, as in the tier: 0.8, 0.9, 1. */
      readonly threshold: number;
      readonly usage: number;
      readonly limit: number;
    };

/** What settlement needs to give a reservation back. */
export interface Metering {
  readonly endpoint: string;
  readonly period: string;
}

export interface Allow {
  readonly outcome: 'allow';
  readonly code: 'OK';
  readonly grpcCode: 0;
  readonly tenantId: string;
  readonly tierId: string;
  readonly keyHeader: KeyHeader;
  readonly rateLimit: RateLimitInfo | null;
  /** Set when a quota unit was reserved for this request. */
  readonly metering: Metering | null;
  /** Allowed without consulting the store because it failed and the tier's policy is `allow`. */
  readonly degraded: boolean;
  readonly events: readonly LogEvent[];
}

export interface Deny {
  readonly outcome: 'deny';
  readonly code: DenyCode;
  readonly httpStatus: number;
  readonly grpcCode: number;
  readonly message: string;
  readonly rateLimit: RateLimitInfo | null;
  /** `Retry-After` seconds: from the limit on 429, a short fixed pause on 503, none otherwise. */
  readonly retryAfterS: number | null;
  readonly tenantId: string | null;
  readonly tierId: string | null;
  readonly events: readonly LogEvent[];
}

export type Decision = Allow | Deny;

export interface PlanContext {
  readonly tenantId: string;
  readonly tier: Tier;
  readonly keyHeader: KeyHeader;
  readonly path: string;
  readonly period: Period | null;
  readonly endpoint: string | null;
}

export type Plan =
  | { readonly kind: 'decided'; readonly decision: Decision }
  | { readonly kind: 'store'; readonly request: CheckAndReserveRequest; readonly ctx: PlanContext };

/** A store outage is usually a failover or a restart: ask clients to come back soon, not in a minute. */
const UNAVAILABLE_RETRY_AFTER_S = 1;

export function deny(
  code: DenyCode,
  extra: {
    message?: string;
    rateLimit?: RateLimitInfo | null;
    tenantId?: string | null;
    tierId?: string | null;
    events?: readonly LogEvent[];
  } = {},
): Deny {
  const { httpStatus, grpcCode } = OUTCOMES[code];
  const message =
    extra.message ?? (code === 'USAGE_LIMIT_EXCEEDED' ? MESSAGES.usageLimitExceeded(0, 0) : MESSAGES[code]);
  return {
    outcome: 'deny',
    code,
    httpStatus,
    grpcCode,
    message,
    rateLimit: extra.rateLimit ?? null,
    retryAfterS:
      extra.rateLimit?.retryAfterS ?? (code === 'USAGE_CHECK_UNAVAILABLE' ? UNAVAILABLE_RETRY_AFTER_S : null),
    tenantId: extra.tenantId ?? null,
    tierId: extra.tierId ?? null,
    events: extra.events ?? [],
  };
}

// Derived per-tier data, computed once per Tier object (tiers are immutable; a reload makes new objects).
interface TierPlan {
  readonly matcher: EndpointMatcher;
  readonly thresholdPercents: readonly number[];
}
const tierPlans = new WeakMap<Tier, TierPlan>();

function tierPlan(tier: Tier): TierPlan {
  let plan = tierPlans.get(tier);
  if (plan === undefined) {
    plan = {
      matcher: new EndpointMatcher(Object.keys(tier.monthlyQuota.endpoints)),
      // Integer percents: the store compares usage*100 >= percent*limit, exact where 0.7*10 is not.
      thresholdPercents: [...new Set(tier.alertThresholds.map((t) => Math.round(t * 100)))]
        .filter((p) => p > 0)
        .sort((a, b) => a - b),
    };
    tierPlans.set(tier, plan);
  }
  return plan;
}

const READ_METHODS = new Set(['GET', 'HEAD']);

export function isReadMethod(method: string): boolean {
  return READ_METHODS.has(method);
}

/** Steps 1–3 of the Check up to the store: key, tenant status, and which limits apply. */
export function planCheck(input: CheckInput, key: ResolvedKey | null, nowMs: number): Plan {
  if (input.key.kind === 'missing') return { kind: 'decided', decision: deny('MISSING_API_KEY') };
  if (input.key.kind === 'malformed' || key === null) {
    return { kind: 'decided', decision: deny('INVALID_API_KEY') };
  }
  if (key.revokedAtMs !== null && key.revokedAtMs <= nowMs) {
    return { kind: 'decided', decision: deny('INVALID_API_KEY') };
  }
  if (key.expiresAtMs !== null && key.expiresAtMs <= nowMs) {
    return { kind: 'decided', decision: deny('INVALID_API_KEY') };
  }
  const { tenant, tier } = key;
  if (tenant.status !== 'active') {
    return {
      kind: 'decided',
      decision: deny('TENANT_SUSPENDED', { tenantId: tenant.id, tierId: tier.id }),
    };
  }

  const plan = tierPlan(tier);
  const readRate =
    isReadMethod(input.method) && tier.readRateLimit !== null
      ? { limit: tier.readRateLimit.requests, windowMs: tier.readRateLimit.perSeconds * 1000 }
      : null;
  const endpoint = plan.matcher.match(input.path);
  const endpointLimit = endpoint === null ? undefined : tier.monthlyQuota.endpoints[endpoint];
  const period =
    endpoint !== null && endpointLimit !== undefined ? periodFor(nowMs, tenant.billingAnchorMs) : null;
  const quota =
    period !== null && endpoint !== null && endpointLimit !== undefined
      ? {
          period: period.label,
          periodEndMs: period.endMs,
          endpoint,
          endpointLimit,
          totalLimit: tier.monthlyQuota.total,
          thresholdPercents: plan.thresholdPercents,
          // A missing hash may be Redis having lost the period: the service rebuilds it before enforcing.
          ifUsageMissing: 'report' as const,
        }
      : null;

  const ctx: PlanContext = {
    tenantId: tenant.id,
    tier,
    keyHeader: input.key.header,
    path: input.path,
    period,
    endpoint: quota === null ? null : endpoint,
  };
  if (readRate === null && quota === null) {
    // Neither limit applies (e.g. a POST to an unmetered path): allowed without touching the store.
    return { kind: 'decided', decision: allow(ctx, null, null, false, []) };
  }
  return { kind: 'store', request: { tenantId: tenant.id, requestId: input.requestId, nowMs, readRate, quota }, ctx };
}

function allow(
  ctx: PlanContext,
  rateLimit: RateLimitInfo | null,
  metering: Metering | null,
  degraded: boolean,
  events: readonly LogEvent[],
): Allow {
  return {
    outcome: 'allow',
    code: 'OK',
    grpcCode: GrpcCode.OK,
    tenantId: ctx.tenantId,
    tierId: ctx.tier.id,
    keyHeader: ctx.keyHeader,
    rateLimit,
    metering,
    degraded,
    events,
  };
}

const ceilSeconds = (ms: number) => Math.ceil(ms / 1000);

/** The limit with the least room left is the one the client should see. */
function tightest(a: RateLimitInfo | null, b: RateLimitInfo | null): RateLimitInfo | null {
  if (a === null) return b;
  if (b === null) return a;
  return b.remaining < a.remaining ? b : a;
}

export function concludeCheck(ctx: PlanContext, result: CheckAndReserveResult, nowMs: number): Decision {
  // Nothing was evaluated: the counters must be rebuilt first (the service does, then asks again).
  if (result.usageMissing) return storeUnavailable(ctx);
  const ids = { tenantId: ctx.tenantId, tierId: ctx.tier.id };
  let readInfo: RateLimitInfo | null = null;
  const rr = result.readRate;
  const rl = ctx.tier.readRateLimit;
  if (rr !== null && rl !== null) {
    const windowMs = rl.perSeconds * 1000;
    // The window frees its next slot when its oldest request ages out.
    const resetMs = (rr.oldestMs ?? nowMs) + windowMs;
    if (!rr.allowed) {
      const retryAfterS = Math.max(1, ceilSeconds(resetMs - nowMs));
      return deny('READ_RATE_LIMIT_EXCEEDED', {
        ...ids,
        rateLimit: { limit: rl.requests, remaining: 0, resetEpochS: ceilSeconds(resetMs), resetAtMs: resetMs, retryAfterS },
        events: [
          {
            kind: 'read_rate_exceeded',
            tenantId: ctx.tenantId,
            endpoint: ctx.path,
            limit: rl.requests,
            count: rr.count,
          },
        ],
      });
    }
    readInfo = {
      limit: rl.requests,
      remaining: Math.max(0, rl.requests - rr.count),
      resetEpochS: ceilSeconds(resetMs),
      resetAtMs: resetMs,
      retryAfterS: null,
    };
  }

  const q = result.quota;
  if (q === null || ctx.period === null || ctx.endpoint === null) {
    return allow(ctx, readInfo, null, false, []);
  }
  const endpoint = ctx.endpoint;
  const endpointLimit = ctx.tier.monthlyQuota.endpoints[endpoint] ?? 0;
  const totalLimit = ctx.tier.monthlyQuota.total;
  const period = ctx.period;
  const resetEpochS = ceilSeconds(period.endMs);
  if (!q.allowed) {
    const byTotal = q.blockedBy === 'total' && totalLimit !== null;
    const usage = byTotal ? q.totalUsed : q.endpointUsed;
    const limit = byTotal ? totalLimit : endpointLimit;
    return deny('USAGE_LIMIT_EXCEEDED', {
      ...ids,
      message: MESSAGES.usageLimitExceeded(usage, limit),
      rateLimit: {
        limit,
        remaining: 0,
        resetEpochS,
        resetAtMs: period.endMs,
        retryAfterS: Math.max(1, ceilSeconds(period.endMs - nowMs)),
      },
      events: [
        {
          kind: 'usage_limit_exceeded',
          tenantId: ctx.tenantId,
          endpoint: byTotal ? '__total__' : endpoint,
          usage,
          limit,
        },
      ],
    });
  }
  let quotaInfo: RateLimitInfo = {
    limit: endpointLimit,
    remaining: Math.max(0, endpointLimit - q.endpointUsed),
    resetEpochS,
    resetAtMs: period.endMs,
    retryAfterS: null,
  };
  if (totalLimit !== null && totalLimit - q.totalUsed < quotaInfo.remaining) {
    quotaInfo = { ...quotaInfo, limit: totalLimit, remaining: Math.max(0, totalLimit - q.totalUsed) };
  }
  const events: LogEvent[] = q.crossed.map((c) => ({
    kind: 'threshold',
    tenantId: ctx.tenantId,
    endpoint: c.scope === 'total' ? '__total__' : endpoint,
    threshold: c.percent / 100,
    usage: c.usage,
    limit: c.limit,
  }));
  return allow(ctx, tightest(quotaInfo, readInfo), { endpoint, period: period.label }, false, events);
}

/** Step 6: the store failed or ran past the deadline; the tier's failure policy decides. */
export function storeUnavailable(ctx: PlanContext): Decision {
  if (ctx.tier.failurePolicy === 'allow') return allow(ctx, null, null, true, []);
  return deny('USAGE_CHECK_UNAVAILABLE', {
    tenantId: ctx.tenantId,
    tierId: ctx.tier.id,
    rateLimit: null,
  });
}

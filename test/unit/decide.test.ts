import { describe, expect, it } from 'vitest';
import { concludeCheck, planCheck, storeUnavailable, type Plan } from '../../src/core/decide.js';
import type { CheckInput } from '../../src/core/request.js';
import type { Tier } from '../../src/core/types.js';
import { FREE, PRO, resolved, tenant } from '../helpers/fixtures.js';

// The seed transcript's moment: 2025-09-18T17:50:51Z (X-RateLimit-Reset 1758217909 is 58 s after a window start).
const NOW = Date.UTC(2025, 8, 18, 17, 50, 51);
const C = resolved(tenant('tenant_C_789', 'free'), FREE);
const E = resolved(tenant('tenant_E_111', 'pro'), PRO);

function input(method: string, path: string, key: CheckInput['key'] = { kind: 'present', key: 'k', header: 'x-api-key' }): CheckInput {
  return { method, path, key, requestId: 'rid' };
}

function storePlan(p: Plan) {
  if (p.kind !== 'store') throw new Error(`expected a store plan, got ${JSON.stringify(p)}`);
  return p;
}

describe('planCheck: keys and tenants', () => {
  it('denies a missing key with 401 MISSING_API_KEY', () => {
    const p = planCheck(input('GET', '/usage', { kind: 'missing' }), null, NOW);
    expect(p).toMatchObject({ kind: 'decided', decision: { code: 'MISSING_API_KEY', httpStatus: 401, grpcCode: 16 } });
  });

  it('denies unknown, malformed, revoked and expired keys alike', () => {
    const codes = [
      planCheck(input('GET', '/usage'), null, NOW),
      planCheck(input('GET', '/usage', { kind: 'malformed', header: 'x-api-key' }), C, NOW),
      planCheck(input('GET', '/usage'), { ...C, revokedAtMs: NOW - 1 }, NOW),
      planCheck(input('GET', '/usage'), { ...C, expiresAtMs: NOW }, NOW),
    ].map((p) => (p.kind === 'decided' ? [p.decision.code, p.decision.outcome === 'deny' && p.decision.message] : p.kind));
    expect(codes).toEqual(Array(4).fill(['INVALID_API_KEY', 'Invalid API key.']));
  });

  it('accepts a key revoked or expiring in the future (rotation grace)', () => {
    expect(planCheck(input('GET', '/usage'), { ...C, revokedAtMs: NOW + 1000, expiresAtMs: NOW + 1 }, NOW).kind).toBe('store');
  });

  it('denies a suspended tenant with 403', () => {
    const p = planCheck(input('GET', '/usage'), resolved(tenant('t', 'free', { status: 'suspended' }), FREE), NOW);
    expect(p).toMatchObject({ decision: { code: 'TENANT_SUSPENDED', httpStatus: 403, grpcCode: 7, tenantId: 't' } });
  });
});

describe('planCheck: which limits apply', () => {
  it('GET and HEAD are read-rate limited, not metered', () => {
    for (const m of ['GET', 'HEAD']) {
      const p = storePlan(planCheck(input(m, '/usage'), C, NOW));
      expect(p.request).toEqual({
        tenantId: 'tenant_C_789',
        requestId: 'rid',
        nowMs: NOW,
        readRate: { limit: 10, windowMs: 60_000 },
        quota: null,
      });
    }
  });

  it('a POST to a metered endpoint reserves quota in the calendar month', () => {
    const p = storePlan(planCheck(input('POST', '/verify'), E, NOW));
    expect(p.request.readRate).toBeNull();
    expect(p.request.quota).toEqual({
      period: '2025-09',
      periodEndMs: Date.UTC(2025, 9, 1),
      endpoint: '/verify',
      endpointLimit: 10,
      totalLimit: null,
      thresholdPercents: [80, 90, 100],
      ifUsageMissing: 'report',
    });
  });

  it('a GET to a metered endpoint gets both limits', () => {
    const p = storePlan(planCheck(input('GET', '/verify'), E, NOW));
    expect(p.request.readRate).not.toBeNull();
    expect(p.request.quota).not.toBeNull();
  });

  it('a POST to an unmetered path is allowed without the store and without rate-limit headers', () => {
    const p = planCheck(input('POST', '/other'), E, NOW);
    expect(p).toMatchObject({ kind: 'decided', decision: { outcome: 'allow', tenantId: 'tenant_E_111', tierId: 'pro', rateLimit: null, metering: null } });
  });

  it('uses the billing anchor for the period when the tenant has one', () => {
    const anchored = resolved(tenant('a', 'pro', { billingAnchorMs: Date.UTC(2025, 0, 20) }), PRO);
    const p = storePlan(planCheck(input('POST', '/verify'), anchored, NOW));
    expect(p.request.quota).toMatchObject({ period: '2025-08', periodEndMs: Date.UTC(2025, 8, 20) });
  });

  it('converts fractional thresholds to integer percents without float drift', () => {
    const tier: Tier = { ...PRO, alertThresholds: [0.7, 0.9, 0.7, 1] };
    const p = storePlan(planCheck(input('POST', '/verify'), resolved(tenant('x', 'pro'), tier), NOW));
    expect(p.request.quota?.thresholdPercents).toEqual([70, 90, 100]);
  });
});

describe('concludeCheck: read-rate limit', () => {
  const ctx = storePlan(planCheck(input('GET', '/usage'), C, NOW)).ctx;

  it('allowed: X-RateLimit headers from the window', () => {
    const d = concludeCheck(ctx, { readRate: { allowed: true, count: 3, oldestMs: NOW - 2000 }, quota: null }, NOW);
    expect(d).toMatchObject({ outcome: 'allow', rateLimit: { limit: 10, remaining: 7, resetEpochS: Math.ceil((NOW + 58_000) / 1000), retryAfterS: null } });
  });

  it('denied: the seed 429 with Retry-After until the oldest request ages out', () => {
    const d = concludeCheck(ctx, { readRate: { allowed: false, count: 10, oldestMs: NOW - 2000 }, quota: null }, NOW);
    expect(d).toMatchObject({
      outcome: 'deny',
      code: 'READ_RATE_LIMIT_EXCEEDED',
      httpStatus: 429,
      grpcCode: 8,
      message: 'Too many read requests. Please slow down.',
      rateLimit: { limit: 10, remaining: 0, resetEpochS: (NOW + 58_000) / 1000, retryAfterS: 58 },
      retryAfterS: 58,
      events: [{ kind: 'read_rate_exceeded', tenantId: 'tenant_C_789', endpoint: '/usage', limit: 10, count: 10 }],
    });
  });

  it('Retry-After rounds up and is at least one second', () => {
    const almost = concludeCheck(ctx, { readRate: { allowed: false, count: 10, oldestMs: NOW - 59_999 }, quota: null }, NOW);
    expect(almost).toMatchObject({ retryAfterS: 1 });
    const partial = concludeCheck(ctx, { readRate: { allowed: false, count: 10, oldestMs: NOW - 500 }, quota: null }, NOW);
    expect(partial).toMatchObject({ retryAfterS: 60 });
  });
});

describe('concludeCheck: monthly quota', () => {
  const ctx = storePlan(planCheck(input('POST', '/verify'), E, NOW)).ctx;
  const periodEndS = Date.UTC(2025, 9, 1) / 1000;

  it('allowed: headers of the quota, threshold events as fractions', () => {
    const d = concludeCheck(
      ctx,
      { readRate: null, quota: { allowed: true, endpointUsed: 8, totalUsed: 8, blockedBy: null, crossed: [{ scope: 'endpoint', percent: 80, usage: 8, limit: 10 }] } },
      NOW,
    );
    expect(d).toMatchObject({
      outcome: 'allow',
      rateLimit: { limit: 10, remaining: 2, resetEpochS: periodEndS },
      metering: { endpoint: '/verify', period: '2025-09' },
      events: [{ kind: 'threshold', tenantId: 'tenant_E_111', endpoint: '/verify', threshold: 0.8, usage: 8, limit: 10 }],
    });
  });

  it('denied: the seed message with usage and limit, Retry-After to the period end', () => {
    const d = concludeCheck(ctx, { readRate: null, quota: { allowed: false, endpointUsed: 10, totalUsed: 10, blockedBy: 'endpoint', crossed: [] } }, NOW);
    expect(d).toMatchObject({
      code: 'USAGE_LIMIT_EXCEEDED',
      httpStatus: 429,
      message: 'Usage limit exceeded. Current usage: 10, Tier limit: 10. Please upgrade your subscription.',
      rateLimit: { limit: 10, remaining: 0, resetEpochS: periodEndS, retryAfterS: periodEndS - NOW / 1000 },
    });
  });

  it('denied by the total cap: reports the total', () => {
    const tier: Tier = { ...PRO, monthlyQuota: { total: 50, endpoints: { '/verify': 100 } } };
    const c = storePlan(planCheck(input('POST', '/verify'), resolved(tenant('t', 'pro'), tier), NOW)).ctx;
    const d = concludeCheck(c, { readRate: null, quota: { allowed: false, endpointUsed: 20, totalUsed: 50, blockedBy: 'total', crossed: [] } }, NOW);
    expect(d).toMatchObject({ message: 'Usage limit exceeded. Current usage: 50, Tier limit: 50. Please upgrade your subscription.', events: [{ endpoint: '__total__' }] });
  });

  it('allowed: shows the tighter of the endpoint and total caps', () => {
    const tier: Tier = { ...PRO, monthlyQuota: { total: 50, endpoints: { '/verify': 100 } } };
    const c = storePlan(planCheck(input('POST', '/verify'), resolved(tenant('t', 'pro'), tier), NOW)).ctx;
    const d = concludeCheck(c, { readRate: null, quota: { allowed: true, endpointUsed: 20, totalUsed: 45, blockedBy: null, crossed: [] } }, NOW);
    expect(d).toMatchObject({ rateLimit: { limit: 50, remaining: 5 } });
  });
});

describe('storeUnavailable: tier failure policy', () => {
  it('allow: passes, marked degraded, nothing metered', () => {
    const ctx = storePlan(planCheck(input('GET', '/usage'), C, NOW)).ctx;
    expect(storeUnavailable(ctx)).toMatchObject({ outcome: 'allow', degraded: true, metering: null });
  });
  it('deny: 503 USAGE_CHECK_UNAVAILABLE with a short Retry-After', () => {
    const ctx = storePlan(planCheck(input('POST', '/verify'), E, NOW)).ctx;
    expect(storeUnavailable(ctx)).toMatchObject({ outcome: 'deny', code: 'USAGE_CHECK_UNAVAILABLE', httpStatus: 503, grpcCode: 14, retryAfterS: 1 });
  });
  it('a store answer with lost counters is never taken as an unmetered pass', () => {
    const ctx = storePlan(planCheck(input('POST', '/verify'), E, NOW)).ctx;
    const d = concludeCheck(ctx, { readRate: null, quota: null, usageMissing: true }, NOW);
    expect(d).toMatchObject({ outcome: 'deny', code: 'USAGE_CHECK_UNAVAILABLE' });
  });
});

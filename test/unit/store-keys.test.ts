import { describe, expect, it } from 'vitest';
import { assertValidCheckRequest, endpointField, normalizePercents, settlementHorizon, storeKeys } from '../../src/store/keys.js';

describe('storeKeys', () => {
  it('builds the public names of the seed', () => {
    const c = storeKeys({}, 'tenant_C_789');
    expect(c.readRate).toBe('read_rate:tenant_C_789');
    expect(c.readRateSeq).toBe('read_rate:tenant_C_789:seq');
    const e = storeKeys({ prefix: '', cluster: false }, 'tenant_E_111');
    expect(e.usage('2025-09')).toBe('usage:tenant_E_111:2025-09');
    expect(e.threshold('/verify', '2025-09', 80)).toBe('usage_threshold:tenant_E_111:/verify:2025-09:80');
    expect(e.threshold('__total__', '2025-09', 100)).toBe('usage_threshold:tenant_E_111:__total__:2025-09:100');
  });

  it('wraps the tenant in {} in cluster mode', () => {
    const k = storeKeys({ cluster: true }, 'tenant_C_789');
    expect(k.readRate).toBe('read_rate:{tenant_C_789}');
    expect(k.readRateSeq).toBe('read_rate:{tenant_C_789}:seq');
    expect(k.usage('2025-09')).toBe('usage:{tenant_C_789}:2025-09');
    expect(k.threshold('/verify', '2025-09', 90)).toBe('usage_threshold:{tenant_C_789}:/verify:2025-09:90');
  });

  it('prepends the prefix to every key', () => {
    const k = storeKeys({ prefix: 'test:x:', cluster: true }, 't1');
    expect([k.readRate, k.readRateSeq, k.usage('2025-10'), k.threshold('/a', '2025-10', 1)]).toEqual([
      'test:x:read_rate:{t1}',
      'test:x:read_rate:{t1}:seq',
      'test:x:usage:{t1}:2025-10',
      'test:x:usage_threshold:{t1}:/a:2025-10:1',
    ]);
  });

  it('names the pending set of an endpoint usage_pending:<tenant>:<endpoint>:<period>', () => {
    expect(storeKeys({}, 'tenant_E_111').pending('/verify', '2025-09')).toBe('usage_pending:tenant_E_111:/verify:2025-09');
    expect(storeKeys({ prefix: 'p:', cluster: true }, 't1').pending('/a', '2025-10')).toBe('p:usage_pending:{t1}:/a:2025-10');
  });

  it('counts reservations as pending for billing a little past the settlement window', () => {
    expect(settlementHorizon(120_000)).toBe(125_000);
    expect(settlementHorizon(2_000)).toBe(2_200);
  });

  it('names the hash field of an endpoint op:<endpoint>', () => {
    expect(endpointField('/verify')).toBe('op:/verify');
  });
});

describe('normalizePercents', () => {
  it('sorts and dedupes', () => {
    expect(normalizePercents([100, 80, 90, 80])).toEqual([80, 90, 100]);
    expect(normalizePercents([])).toEqual([]);
  });

  it('rejects fractions and negatives, which cannot name a flag or travel in the integer reply', () => {
    expect(() => normalizePercents([0.8])).toThrow(RangeError);
    expect(() => normalizePercents([-10])).toThrow(RangeError);
    expect(() => normalizePercents([Number.NaN])).toThrow(RangeError);
  });
});

describe('assertValidCheckRequest', () => {
  const base = { tenantId: 't', requestId: 'rid', nowMs: 1_758_217_909_000, readRate: null, quota: null };
  const quota = {
    period: '2025-09',
    periodEndMs: Date.UTC(2025, 9, 1),
    endpoint: '/verify',
    endpointLimit: 10,
    totalLimit: null,
    thresholdPercents: [80],
    ifUsageMissing: 'create' as const,
  };

  it('accepts a well-formed request', () => {
    expect(() => assertValidCheckRequest({ ...base, readRate: { limit: 10, windowMs: 60_000 }, quota })).not.toThrow();
    expect(() => assertValidCheckRequest({ ...base, readRate: { limit: 0, windowMs: 1 } })).not.toThrow();
  });

  it.each([
    ['a fractional now', { ...base, nowMs: 1.5 }],
    ['a zero window', { ...base, readRate: { limit: 10, windowMs: 0 } }],
    ['a negative read limit', { ...base, readRate: { limit: -1, windowMs: 1000 } }],
    ['a fractional endpoint limit', { ...base, quota: { ...quota, endpointLimit: 2.5 } }],
    ['a negative total limit', { ...base, quota: { ...quota, totalLimit: -1 } }],
    ['a missing period end', { ...base, quota: { ...quota, periodEndMs: Number.NaN } }],
    ['a metered request without a request id', { ...base, requestId: '', quota }],
  ])('rejects %s', (_label, req) => {
    expect(() => assertValidCheckRequest(req)).toThrow(RangeError);
  });
});

import { describe, expect, it } from 'vitest';
import { concludeCheck, planCheck, type Deny, type Plan } from '../../src/core/decide.js';
import { DenyMemory } from '../../src/service/deny-memory.js';
import type { Tier } from '../../src/core/types.js';
import { FREE, PRO, resolved, tenant } from '../helpers/fixtures.js';

const NOW = Date.UTC(2025, 8, 18, 12, 0, 0);
const C = resolved(tenant('tenant_C_789', 'free'), FREE);
const E = resolved(tenant('tenant_E_111', 'pro'), PRO);
const key = { kind: 'present', key: 'k', header: 'x-api-key' } as const;

function storePlan(p: Plan) {
  if (p.kind !== 'store') throw new Error('expected a store plan');
  return p;
}
const readPlan = storePlan(planCheck({ method: 'GET', path: '/usage', key, requestId: 'r' }, C, NOW));
// The store said: window full, oldest request 50 s ago, so one slot frees in 10 s.
const readDeny = concludeCheck(readPlan.ctx, { readRate: { allowed: false, count: 10, oldestMs: NOW - 50_000 }, quota: null }, NOW) as Deny;
const quotaPlan = storePlan(planCheck({ method: 'POST', path: '/verify', key, requestId: 'r' }, E, NOW));
const quotaDeny = concludeCheck(quotaPlan.ctx, { readRate: null, quota: { allowed: false, endpointUsed: 10, totalUsed: 10, blockedBy: 'endpoint', crossed: [] } }, NOW) as Deny;

describe('DenyMemory', () => {
  it('answers a repeat 429 from memory with Retry-After brought up to date', () => {
    const m = new DenyMemory(5000);
    m.remember(readPlan.request, FREE, readDeny, NOW);
    const again = m.recall(readPlan.request, FREE, NOW + 3000);
    expect(again).toMatchObject({ code: 'READ_RATE_LIMIT_EXCEEDED', retryAfterS: 7, rateLimit: { remaining: 0, retryAfterS: 7 } });
    expect(again?.events).toEqual(readDeny.events);
    expect(m.hits).toBe(1);
  });

  it('never outlasts the exact reset, even when the hold is longer', () => {
    const m = new DenyMemory(60_000);
    m.remember(readPlan.request, FREE, readDeny, NOW);
    expect(m.recall(readPlan.request, FREE, NOW + 9_999)).toBeDefined();
    expect(m.recall(readPlan.request, FREE, NOW + 10_000)).toBeUndefined();
  });

  it('never outlasts the hold, so an operator edit is followed within it', () => {
    const m = new DenyMemory(1000);
    m.remember(quotaPlan.request, PRO, quotaDeny, NOW);
    expect(m.recall(quotaPlan.request, PRO, NOW + 999)).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED' });
    expect(m.recall(quotaPlan.request, PRO, NOW + 1000)).toBeUndefined();
  });

  it('is lifted by a tier change and by a refund of the tenant', () => {
    const m = new DenyMemory(5000);
    m.remember(quotaPlan.request, PRO, quotaDeny, NOW);
    expect(m.recall(quotaPlan.request, { ...PRO }, NOW + 1)).toBeUndefined();
    m.remember(readPlan.request, FREE, readDeny, NOW);
    m.forget('tenant_C_789');
    expect(m.recall(readPlan.request, FREE, NOW + 1)).toBeUndefined();
  });

  it('keeps read and quota denials apart, and remembers only 429s', () => {
    const m = new DenyMemory(5000);
    m.remember(readPlan.request, FREE, readDeny, NOW);
    // A POST of the same tenant is not a read: the read memo does not deny it.
    const post = storePlan(planCheck({ method: 'POST', path: '/verify', key, requestId: 'r' }, C, NOW));
    expect(m.recall(post.request, FREE, NOW + 1)).toBeUndefined();
    const other = new DenyMemory(5000);
    other.remember(readPlan.request, FREE, { ...readDeny, code: 'USAGE_CHECK_UNAVAILABLE', rateLimit: null }, NOW);
    expect(other.size).toBe(0);
  });

  it('never answers a metered read from a quota memo: the store would look at the read window first', () => {
    const m = new DenyMemory(5000);
    // FREE meters /verify for any method, and limits reads: a GET /verify is judged by both.
    const postVerify = storePlan(planCheck({ method: 'POST', path: '/verify', key, requestId: 'r' }, C, NOW));
    const getVerify = storePlan(planCheck({ method: 'GET', path: '/verify', key, requestId: 'r' }, C, NOW));
    const overQuota = { readRate: null, quota: { allowed: false, endpointUsed: 100, totalUsed: 100, blockedBy: 'endpoint' as const, crossed: [] } };
    m.remember(postVerify.request, FREE, concludeCheck(postVerify.ctx, overQuota, NOW) as Deny, NOW);
    expect(m.recall(postVerify.request, FREE, NOW + 1)).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED' });
    expect(m.recall(getVerify.request, FREE, NOW + 1)).toBeUndefined();
    // Nor is one kept from a metered read's own 429.
    const readOverQuota = { ...overQuota, readRate: { allowed: true, count: 3, oldestMs: NOW - 1000 } };
    const before = m.size;
    m.remember(getVerify.request, FREE, concludeCheck(getVerify.ctx, readOverQuota, NOW) as Deny, NOW);
    expect(m.size).toBe(before);
  });

  it('repeats a denial by the total for the endpoint that met it only', () => {
    // Another endpoint may be over its own limit as well, and the store would name that limit.
    const tier: Tier = { ...PRO, monthlyQuota: { total: 20, endpoints: { '/verify': 100, '/extract': 5 } } };
    const T = resolved(tenant('tenant_T', 'pro'), tier);
    const verify = storePlan(planCheck({ method: 'POST', path: '/verify', key, requestId: 'r' }, T, NOW));
    const extract = storePlan(planCheck({ method: 'POST', path: '/extract', key, requestId: 'r' }, T, NOW));
    const byTotal = concludeCheck(verify.ctx, { readRate: null, quota: { allowed: false, endpointUsed: 15, totalUsed: 20, blockedBy: 'total', crossed: [] } }, NOW) as Deny;
    expect(byTotal.rateLimit?.limit).toBe(20);
    const m = new DenyMemory(5000);
    m.remember(verify.request, tier, byTotal, NOW);
    expect(m.recall(verify.request, tier, NOW + 1)).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED', rateLimit: { limit: 20 } });
    expect(m.recall(extract.request, tier, NOW + 1)).toBeUndefined();
  });

  it('does nothing when disabled, and stays bounded', () => {
    const off = new DenyMemory(0);
    off.remember(readPlan.request, FREE, readDeny, NOW);
    expect(off.recall(readPlan.request, FREE, NOW)).toBeUndefined();
    const small = new DenyMemory(5000, 3);
    for (let i = 0; i < 10; i++) small.remember({ ...readPlan.request, tenantId: `t${i}` }, FREE, readDeny, NOW);
    expect(small.size).toBeLessThanOrEqual(3);
  });

  it('counts what it holds through expiry, replacement, forget and pruning', () => {
    const m = new DenyMemory(5000, 4);
    const quotaOf = (tenantId: string) => ({ ...quotaPlan.request, tenantId });
    const readOf = (tenantId: string) => ({ ...readPlan.request, tenantId });
    m.remember(readOf('a'), FREE, readDeny, NOW);
    m.remember(quotaOf('a'), PRO, quotaDeny, NOW);
    m.remember(quotaOf('a'), PRO, quotaDeny, NOW + 1); // replaces, not adds
    expect(m.size).toBe(2);
    // An expired read memo is dropped when read; the tenant's quota memo stays and still answers.
    expect(m.recall(readOf('a'), FREE, NOW + 10_000)).toBeUndefined();
    expect(m.size).toBe(1);
    expect(m.recall(quotaOf('a'), PRO, NOW + 10)).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED' });
    m.forget('a');
    expect(m.size).toBe(0);
    // Full of live memos: the oldest tenants give way, and what stays still answers.
    for (const id of ['b', 'c', 'd', 'e', 'f']) m.remember(readOf(id), FREE, readDeny, NOW);
    expect(m.size).toBeLessThanOrEqual(4);
    expect(m.recall(readOf('f'), FREE, NOW + 1)).toBeDefined();
    expect(m.recall(readOf('b'), FREE, NOW + 1)).toBeUndefined();
    // Expired memos are what pruning drops first.
    const n = new DenyMemory(5000, 2);
    n.remember(readOf('y'), FREE, readDeny, NOW);
    n.remember(readOf('x'), FREE, readDeny, NOW - 9_000); // newer, but held only until NOW - 4 s
    n.remember(readOf('z'), FREE, readDeny, NOW + 2_000);
    expect(n.size).toBe(2);
    expect(n.recall(readOf('y'), FREE, NOW + 2_001)).toBeDefined();
    expect(n.recall(readOf('z'), FREE, NOW + 2_001)).toBeDefined();
  });
});

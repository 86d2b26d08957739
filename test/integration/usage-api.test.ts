// GET /v1/usage on the HTTP port: directly with the API key, and behind Envoy with the x-tenant-id that the
// Check put on the upstream request (only when the server is told to trust it).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { CounterStore } from '../../src/store/types.js';
import { startHarness, type Harness } from '../helpers/harness.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const services = await hasPostgres();
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const PRO_KEY = 'vk_live_PRO_ALMOST_FULL_KEY';
const FREE_KEY = 'vk_live_FREE_PLAN_KEY';

describe.skipIf(!services)('GET /v1/usage', () => {
  const memory = createMemoryStore();
  const state = { failing: false };
  const store: CounterStore = new Proxy(memory, {
    get: (t, p, r) =>
      p === 'usage' && state.failing ? () => Promise.reject(new Error('Redis usage failed: not connected')) : Reflect.get(t, p, r),
  });
  let direct: Harness;
  let behindEnvoy: Harness;
  let drop: () => Promise<void>;

  const get = (h: Harness, headers: Record<string, string> = {}, method = 'GET') =>
    fetch(`http://127.0.0.1:${h.app.httpPort}/v1/usage`, { method, headers });

  beforeAll(async () => {
    const db = await createTestDatabase('usage_api');
    drop = db.drop;
    memory.setUsage('tenant_E_111', '2025-09', { total: 7, endpoints: { '/verify': 7 } });
    direct = await startHarness({ env: { DATABASE_URL: db.url }, nowMs: T0, store });
    behindEnvoy = await startHarness({
      env: { DATABASE_URL: db.url, USAGE_API_TRUST_TENANT_HEADER: 'true', MIGRATE_ON_START: 'false' },
      nowMs: T0,
      store,
    });
  });

  afterAll(async () => {
    await direct?.stop();
    await behindEnvoy?.stop();
    await drop?.();
  });

  const expected = {
    tenantId: 'tenant_E_111',
    tier: 'pro',
    period: { id: '2025-09', start: '2025-09-01T00:00:00.000Z', end: '2025-10-01T00:00:00.000Z' },
    limits: { readRate: { requests: 1000, perSeconds: 60 }, monthlyQuota: { total: null, endpoints: { '/verify': 10 } } },
    used: { total: 7, endpoints: { '/verify': 7 } },
    remaining: { total: null, endpoints: { '/verify': 3 } },
    reset: { at: '2025-10-01T00:00:00.000Z', epochSeconds: Date.UTC(2025, 9, 1) / 1000 },
  };

  it('answers the key holder with its tier, limits, usage, remaining and reset', async () => {
    const res = await get(direct, { 'x-api-key': PRO_KEY });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8');
    expect(res.headers.get('cache-control')).toBe('private, no-store');
    expect(await res.json()).toEqual(expected);
    const bearer = await get(direct, { authorization: `Bearer ${PRO_KEY}` });
    expect(await bearer.json()).toEqual(expected);
  });

  it('refuses callers the Check would refuse, with the same codes', async () => {
    const cases: Array<[Record<string, string>, number, string]> = [
      [{}, 401, 'MISSING_API_KEY'],
      [{ 'x-api-key': 'vk_live_NO_SUCH_KEY_99' }, 401, 'INVALID_API_KEY'],
      [{ 'x-api-key': 'vk_live_SUSPENDED_KEY' }, 403, 'TENANT_SUSPENDED'],
    ];
    for (const [headers, status, code] of cases) {
      const res = await get(direct, { ...headers, 'x-request-id': 'rid-usage' });
      expect(res.status).toBe(status);
      expect(await res.json()).toMatchObject({ code, requestId: 'rid-usage' });
    }
  });

  it('never lets a direct caller pick the tenant with x-tenant-id', async () => {
    const spoofed = await get(direct, { 'x-tenant-id': 'tenant_E_111' });
    expect(spoofed.status).toBe(401);
    const own = await get(direct, { 'x-api-key': FREE_KEY, 'x-tenant-id': 'tenant_E_111' });
    expect(await own.json()).toMatchObject({ tenantId: 'tenant_C_789', tier: 'free' });
  });

  it('behind Envoy: takes the tenant that the Check put on the upstream request', async () => {
    // What Envoy does: Check first, then forward with the headers the Check set (and without the key).
    const check = await behindEnvoy.checkHttp({ key: PRO_KEY, method: 'GET', path: '/v1/usage' });
    const upstream = Object.fromEntries((check.ok_response?.headers ?? []).map((h) => [h.header.key, h.header.value]));
    expect(upstream['x-tenant-id']).toBe('tenant_E_111');
    expect(check.ok_response?.headers_to_remove).toContain('x-api-key');
    const res = await get(behindEnvoy, upstream);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual(expected);
    expect((await get(behindEnvoy, { 'x-tenant-id': 'tenant_nobody' })).status).toBe(404);
    expect((await get(behindEnvoy, { 'x-tenant-id': 'tenant_S_000' })).status).toBe(403);
    // Without the header it still accepts the key, so direct calls keep working.
    expect((await get(behindEnvoy, { 'x-api-key': PRO_KEY })).status).toBe(200);
  });

  it('answers 503 with Retry-After when the counters cannot be read, and 405 to other methods', async () => {
    state.failing = true;
    try {
      const res = await get(direct, { 'x-api-key': PRO_KEY });
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(await res.json()).toMatchObject({ code: 'USAGE_CHECK_UNAVAILABLE' });
    } finally {
      state.failing = false;
    }
    const post = await get(direct, { 'x-api-key': PRO_KEY }, 'POST');
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
  });
});

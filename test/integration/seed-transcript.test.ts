// The seed transcript (shared/seeds/001), replayed through real gRPC Checks against real Redis and
// Postgres: key names, headers, bodies and log lines as the original system printed them.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';
import { httpStatus, responseHeaders, startHarness, type Harness } from '../helpers/harness.js';

const services = (await hasRedis()) && (await hasPostgres());

// 2025-09-18T17:50:51Z: inside the seed's period 2025-09.
const T0 = Date.UTC(2025, 8, 18, 17, 50, 51);
const FREE_KEY = 'vk_live_FREE_PLAN_KEY';
const PRO_KEY = 'vk_live_PRO_ALMOST_FULL_KEY';

describe.skipIf(!services)('seed transcript through gRPC Check (real Redis, real Postgres)', () => {
  let h: Harness;
  let redis: Redis;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('seed');

  beforeAll(async () => {
    const db = await createTestDatabase('seed');
    dropDb = db.drop;
    redis = new Redis(TEST_REDIS_URL);
    h = await startHarness({
      env: { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix },
      nowMs: T0,
    });
  });

  afterAll(async () => {
    await h?.stop();
    if (redis) {
      await dropKeysWithPrefix(redis, prefix);
      redis.disconnect();
    }
    await dropDb?.();
  });

  it('GET /usage: 10 allowed, then 429 with the seed headers, body and warning log', async () => {
    await redis.del(`${prefix}read_rate:tenant_C_789`, `${prefix}read_rate:tenant_C_789:seq`);
    const statuses: number[] = [];
    for (let i = 1; i <= 12; i++) {
      // Requests 1–10 within the first two seconds, as in the transcript; 11 and 12 a moment later.
      h.clock.now = T0 + (i <= 10 ? (i - 1) * 200 : 2000);
      const res = await h.checkHttp({ key: FREE_KEY, path: '/usage', requestId: `req-${i}` });
      statuses.push(httpStatus(res));
      if (i === 1) {
        expect(responseHeaders(res)).toEqual({
          'X-RateLimit-Limit': '10',
          'X-RateLimit-Remaining': '9',
          'X-RateLimit-Reset': String(Math.ceil((T0 + 60_000) / 1000)),
        });
      }
    }
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 429, 429]);

    h.clock.now = T0 + 2000;
    const res = await h.checkHttp({ key: FREE_KEY, path: '/usage', requestId: '925c104a-482d-4b6c-bd08-02a8d031e6c1' });
    expect(res.status.code).toBe(8);
    expect(res.denied_response?.status.code).toBe('TooManyRequests');
    expect(responseHeaders(res)).toEqual({
      'X-RateLimit-Limit': '10',
      'X-RateLimit-Remaining': '0',
      'Retry-After': '58',
      'X-RateLimit-Reset': String((T0 + 60_000) / 1000),
      'Content-Type': 'application/json; charset=utf-8',
    });
    expect(res.denied_response?.body).toBe(
      '{"code":"READ_RATE_LIMIT_EXCEEDED","message":"Too many read requests. Please slow down.","requestId":"925c104a-482d-4b6c-bd08-02a8d031e6c1"}',
    );
    const warn = h.logs.records().filter((r) => r.msg === '[billing] GET rate limit exceeded');
    expect(warn.length).toBeGreaterThanOrEqual(2);
    expect(warn[0]).toMatchObject({ level: 40, tenantId: 'tenant_C_789', endpoint: '/usage', limit: 10, count: 10 });

    // The window rolls: once the first request is 60 s old, one slot frees.
    h.clock.now = T0 + 60_000;
    expect(httpStatus(await h.checkHttp({ key: FREE_KEY, path: '/usage' }))).toBe(200);
    expect(httpStatus(await h.checkHttp({ key: FREE_KEY, path: '/usage' }))).toBe(429);
  });

  it('/verify: usage set to 7/7 with redis-cli commands, three requests fire 80/90/100% once each', async () => {
    h.clock.now = T0;
    await redis.del(
      `${prefix}usage_threshold:tenant_E_111:/verify:2025-09:80`,
      `${prefix}usage_threshold:tenant_E_111:/verify:2025-09:90`,
      `${prefix}usage_threshold:tenant_E_111:/verify:2025-09:100`,
    );
    await redis.hset(`${prefix}usage:tenant_E_111:2025-09`, '__total__', '7', 'op:/verify', '7');
    const before = h.logs.lines.length;
    for (let i = 0; i < 3; i++) {
      const res = await h.checkHttp({ key: PRO_KEY, method: 'POST', path: '/verify' });
      expect(httpStatus(res)).toBe(200);
    }
    const alerts = h.logs
      .records()
      .slice(before)
      .filter((r) => r.event === 'usage.threshold')
      .map(({ event, tenantId, endpoint, threshold, usage, limit, msg }) => ({ event, tenantId, endpoint, threshold, usage, limit, msg }));
    expect(alerts).toEqual([
      { event: 'usage.threshold', tenantId: 'tenant_E_111', endpoint: '/verify', threshold: 0.8, usage: 8, limit: 10, msg: 'Usage threshold 80% reached' },
      { event: 'usage.threshold', tenantId: 'tenant_E_111', endpoint: '/verify', threshold: 0.9, usage: 9, limit: 10, msg: 'Usage threshold 90% reached' },
      { event: 'usage.threshold', tenantId: 'tenant_E_111', endpoint: '/verify', threshold: 1, usage: 10, limit: 10, msg: 'Usage threshold 100% reached' },
    ]);
    expect(await redis.hgetall(`${prefix}usage:tenant_E_111:2025-09`)).toEqual({ __total__: '10', 'op:/verify': '10' });

    const denied = await h.checkHttp({ key: PRO_KEY, method: 'POST', path: '/verify', requestId: 'rid-verify' });
    expect(denied.status.code).toBe(8);
    expect(denied.denied_response?.body).toBe(
      '{"code":"USAGE_LIMIT_EXCEEDED","message":"Usage limit exceeded. Current usage: 10, Tier limit: 10. Please upgrade your subscription.","requestId":"rid-verify"}',
    );
    const periodEndS = Date.UTC(2025, 9, 1) / 1000;
    expect(responseHeaders(denied)).toEqual({
      'X-RateLimit-Limit': '10',
      'X-RateLimit-Remaining': '0',
      'X-RateLimit-Reset': String(periodEndS),
      'Retry-After': String(periodEndS - T0 / 1000),
      'Content-Type': 'application/json; charset=utf-8',
    });
    // No threshold fires twice, and the denied request reserved nothing.
    expect(h.logs.records().slice(before).filter((r) => r.event === 'usage.threshold')).toHaveLength(3);
    expect(await redis.hgetall(`${prefix}usage:tenant_E_111:2025-09`)).toEqual({ __total__: '10', 'op:/verify': '10' });

    // An operator lowering the count with redis-cli is followed once the replica's memory of the 429
    // lapses (DENY_MEMORY_MS, 1 s by default): until then repeats are answered without asking Redis.
    await redis.hset(`${prefix}usage:tenant_E_111:2025-09`, '__total__', '9', 'op:/verify', '9');
    expect(httpStatus(await h.checkHttp({ key: PRO_KEY, method: 'POST', path: '/verify' }))).toBe(429);
    h.clock.now = T0 + 1000;
    expect(httpStatus(await h.checkHttp({ key: PRO_KEY, method: 'POST', path: '/verify' }))).toBe(200);
  });

  it('allowed Checks set tenant headers upstream, strip the key, and add X-RateLimit-* to the response', async () => {
    h.clock.now = T0 + 10 * 60_000;
    const res = await h.checkHttp({ key: PRO_KEY, path: '/usage', headers: [['x-tenant-id', 'spoofed']] });
    expect(res.status.code).toBe(0);
    expect(res.ok_response?.headers).toEqual([
      { header: { key: 'x-tenant-id', value: 'tenant_E_111' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
      { header: { key: 'x-tenant-tier', value: 'pro' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
    ]);
    expect(res.ok_response?.headers_to_remove).toContain('x-api-key');
    for (const h2 of res.ok_response?.response_headers_to_add ?? []) {
      expect(h2.append_action).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
      expect(h2).not.toHaveProperty('append');
    }
    expect(Object.keys(responseHeaders(res))).toEqual(['X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset']);

    // Decoded from the wire: what Envoy stores as ext_authz dynamic metadata for settlement.
    const metered = await h.checkHttp({ key: FREE_KEY, method: 'POST', path: '/verify', requestId: 'rid-meta' });
    const fields = metered.dynamic_metadata?.fields ?? {};
    expect(Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, v.stringValue ?? v.boolValue]))).toEqual({
      tenant_id: 'tenant_C_789',
      tier: 'free',
      request_id: 'rid-meta',
      reserved: true,
      degraded: false,
      endpoint: '/verify',
      period: '2025-09',
    });

    const bearer = await h.checkHttp({ headers: [['authorization', `Bearer ${FREE_KEY}`]], method: 'POST', path: '/other' });
    expect(bearer.ok_response?.headers_to_remove).toContain('authorization');
  });

  it('missing, unknown and suspended keys get 401/401/403 with gRPC codes 16/16/7', async () => {
    const missing = await h.checkHttp({ path: '/usage', requestId: 'r1' });
    expect([missing.status.code, httpStatus(missing)]).toEqual([16, 401]);
    expect(JSON.parse(missing.denied_response?.body ?? '')).toMatchObject({ code: 'MISSING_API_KEY', requestId: 'r1' });
    const unknown = await h.checkHttp({ key: 'vk_live_NOPE', path: '/usage' });
    expect([unknown.status.code, httpStatus(unknown)]).toEqual([16, 401]);
    expect(JSON.parse(unknown.denied_response?.body ?? '')).toMatchObject({ code: 'INVALID_API_KEY' });
    const suspended = await h.checkHttp({ key: 'vk_live_SUSPENDED_KEY', path: '/usage' });
    expect([suspended.status.code, httpStatus(suspended)]).toEqual([7, 403]);
    expect(JSON.parse(suspended.denied_response?.body ?? '')).toMatchObject({ code: 'TENANT_SUSPENDED' });
  });

  it('never writes an API key to the log', () => {
    const all = h.logs.lines.join('\n');
    expect(h.logs.lines.length).toBeGreaterThan(5);
    for (const k of [FREE_KEY, PRO_KEY, 'vk_live_SUSPENDED_KEY', 'vk_live_NOPE']) expect(all).not.toContain(k);
  });
});

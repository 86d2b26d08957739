// The gRPC server on a real port: exactness under concurrency for both stores, malformed requests,
// health and readiness.
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const FREE_KEY = 'vk_live_FREE_PLAN_KEY';
const PRO_KEY = 'vk_live_PRO_ALMOST_FULL_KEY';

interface Variant {
  name: string;
  start(dbUrl: string, prefix: string): Promise<Harness>;
  setUsage(prefix: string, used: number): Promise<void>;
}

let redis: Redis | undefined;
const variants: Variant[] = [
  {
    name: 'Redis store',
    start: (dbUrl, prefix) =>
      startHarness({ env: { DATABASE_URL: dbUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix }, nowMs: T0 }),
    setUsage: async (prefix, used) => {
      await redis!.hset(`${prefix}usage:tenant_E_111:2025-09`, '__total__', used, 'op:/verify', used);
    },
  },
  {
    name: 'memory store',
    start: (dbUrl) => startHarness({ env: { DATABASE_URL: dbUrl }, nowMs: T0, store: memory }),
    setUsage: async (_prefix, used) => memory.setUsage('tenant_E_111', '2025-09', { total: used, endpoints: { '/verify': used } }),
  },
];
const memory = createMemoryStore();

describe.skipIf(!services).each(variants)('gRPC Check with the $name', (variant) => {
  let h: Harness;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('grpc');

  beforeAll(async () => {
    redis ??= new Redis(TEST_REDIS_URL);
    const db = await createTestDatabase('grpc');
    dropDb = db.drop;
    h = await variant.start(db.url, prefix);
  });

  afterAll(async () => {
    await h?.stop();
    const keys = await redis!.keys(`${prefix}*`);
    if (keys.length) await redis!.del(...keys);
    await dropDb?.();
  });

  it('200 metered Checks at once with 10 units left: exactly 10 allowed', async () => {
    await h.checkHttp({ key: PRO_KEY, method: 'POST', path: '/other' }); // warm the key cache
    await variant.setUsage(prefix, 0);
    const results = await Promise.all(
      Array.from({ length: 200 }, () => h.checkHttp({ key: PRO_KEY, method: 'POST', path: '/verify' })),
    );
    const statuses = results.map(httpStatus);
    expect(statuses.filter((s) => s === 200)).toHaveLength(10);
    expect(statuses.filter((s) => s === 429)).toHaveLength(190);
    expect(await h.app.store.usage('tenant_E_111', '2025-09')).toEqual({ total: 10, endpoints: { '/verify': 10 } });
  });

  it('200 GETs at once against a limit of 10 per minute: exactly 10 allowed', async () => {
    h.clock.now = T0 + 3_600_000;
    const results = await Promise.all(Array.from({ length: 200 }, () => h.checkHttp({ key: FREE_KEY, path: '/usage' })));
    expect(results.map(httpStatus).filter((s) => s === 200)).toHaveLength(10);
  });

  it('a cold key hit 100 times at once is looked up once', async () => {
    const loads = h.app.keyCache.stats.loads;
    await Promise.all(Array.from({ length: 100 }, () => h.checkHttp({ key: 'vk_live_COLD_UNKNOWN', path: '/usage' })));
    expect(h.app.keyCache.stats.loads - loads).toBe(1);
  });
});

describe.skipIf(!services)('malformed CheckRequests', () => {
  let h: Harness;
  let dropDb: () => Promise<void>;

  beforeAll(async () => {
    const db = await createTestDatabase('malformed');
    dropDb = db.drop;
    h = await startHarness({ env: { DATABASE_URL: db.url }, nowMs: T0 });
  });
  afterAll(async () => {
    await h?.stop();
    await dropDb?.();
  });

  const http = (o: Record<string, unknown>) => ({ attributes: { request: { http: o } } });
  const cases: Array<[string, unknown, number]> = [
    ['no attributes', {}, 400],
    ['no http attributes', { attributes: { request: {} } }, 400],
    ['no method', http({ path: '/usage', headers: { 'x-api-key': FREE_KEY } }), 400],
    ['no path', http({ method: 'GET', headers: { 'x-api-key': FREE_KEY } }), 400],
    ['empty headers', http({ method: 'GET', path: '/usage', headers: {} }), 401],
    ['odd bytes in a header value', http({ method: 'GET', path: '/usage', headers: { 'x-api-key': 'a\u0000\u00ff\ud800b', 'x-request-id': '\u0001' } }), 401],
    ['absurdly long key', http({ method: 'GET', path: '/usage', headers: { 'x-api-key': 'k'.repeat(100_000) } }), 401],
    ['absurdly long path', http({ method: 'GET', path: `/${'p'.repeat(1_000_000)}`, headers: { 'x-api-key': FREE_KEY } }), 400],
    ['a long query after a short path', http({ method: 'GET', path: `/usage?q=${'q'.repeat(20_000)}`, headers: { 'x-api-key': FREE_KEY } }), 200],
    ['unknown method', http({ method: 'BREW', path: '/usage', headers: { 'x-api-key': FREE_KEY } }), 200],
    ['lots of headers', http({ method: 'GET', path: '/usage', headers: Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`h-${i}`, 'v'])) }), 401],
  ];

  it.each(cases)('%s → a clean %i', async (_name, req, status) => {
    const res = await h.check(req);
    expect(httpStatus(res)).toBe(status);
    if (status !== 200) {
      const body = JSON.parse(res.denied_response?.body ?? '{}') as Record<string, unknown>;
      expect(Object.keys(body)).toEqual(['code', 'message', 'requestId']);
      expect(typeof body.requestId).toBe('string');
    }
  });

  it('keeps serving afterwards', async () => {
    const res = await h.checkHttp({ key: FREE_KEY, path: '/usage' });
    expect(httpStatus(res)).toBe(200);
  });

  it('counts the 400s among the Check answers in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${h.app.httpPort}/metrics`)).text();
    const badRequests = cases.filter(([, , status]) => status === 400).length;
    expect(parsePrometheus(text).value('usage_limiter_check_decisions_total', { outcome: 'deny', code: 'BAD_REQUEST', tier: 'none' })).toBe(badRequests);
  });

  it('reports SERVING on grpc.health.v1 and ready on /readyz', async () => {
    const Client = grpc.makeGenericClientConstructor(healthService, 'Health');
    const client = new Client(`127.0.0.1:${h.app.grpcPort}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      check: (req: unknown, cb: (err: grpc.ServiceError | null, res: { status: string }) => void) => void;
    };
    for (const svc of ['', 'envoy.service.auth.v3.Authorization']) {
      const res = await new Promise<{ status: string }>((resolve, reject) =>
        client.check({ service: svc }, (err, r) => (err ? reject(err) : resolve(r))),
      );
      expect(res.status).toBe('SERVING');
    }
    client.close();
    const ready = await fetch(`http://127.0.0.1:${h.app.httpPort}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'ready', checks: { serving: 'ok', redis: 'ok', postgres: 'ok' } });
    expect((await fetch(`http://127.0.0.1:${h.app.httpPort}/healthz`)).status).toBe(200);
    const metrics = await (await fetch(`http://127.0.0.1:${h.app.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/usage_limiter_check_decisions_total\{outcome="allow",code="OK",tier="free"\} \d+/);
  });
});

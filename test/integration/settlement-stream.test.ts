// Settlement through Envoy's access-log stream: real gRPC Checks reserve, a real gRPC StreamAccessLogs
// client reports how each request ended, real Redis and Postgres. A failed request (5xx, or no response)
// gives its unit back exactly once, however often its entry arrives; anything else stands.
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { AccessLogClient, entryFor } from '../helpers/access-log-client.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const TENANTS = fileURLToPath(new URL('../fixtures/billing/tenants.yaml', import.meta.url));
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const KEY = 'vk_test_SETTLE_S_0001'; // tenant settle_S, tier small: /verify 10 a month
const WINDOW_S = 60;

describe.skipIf(!services)('settlement through the access-log stream', () => {
  let h: Harness;
  let logs: AccessLogClient;
  let redis: Redis;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('settle');
  const usageKey = `${prefix}usage:settle_S:2025-09`;
  let seq = 0;

  const verify = (requestId = `s-${++seq}`): Promise<CheckResponseMessage> =>
    h.checkHttp({ key: KEY, method: 'POST', path: '/verify', requestId });
  const used = async () => Number((await redis.hget(usageKey, 'op:/verify')) ?? 0);

  beforeAll(async () => {
    const db = await createTestDatabase('settle');
    dropDb = db.drop;
    redis = new Redis(TEST_REDIS_URL);
    h = await startHarness({
      env: {
        DATABASE_URL: db.url,
        REDIS_URL: TEST_REDIS_URL,
        REDIS_KEY_PREFIX: prefix,
        APPLY_ON_START: TENANTS,
        SETTLEMENT_WINDOW_SECONDS: String(WINDOW_S),
      },
      nowMs: T0,
    });
    logs = new AccessLogClient(h.app.grpcPort);
  });

  afterAll(async () => {
    logs?.close();
    await h?.stop();
    if (redis) {
      await dropKeysWithPrefix(redis, prefix);
      redis.disconnect();
    }
    await dropDb?.();
  });

  it('gives back the units of requests the upstream failed (5xx, no response) and keeps the others', async () => {
    const checks = await Promise.all([verify(), verify(), verify(), verify(), verify()]);
    expect(checks.map(httpStatus)).toEqual([200, 200, 200, 200, 200]);
    expect(await used()).toBe(5);
    await logs.send([[entryFor(checks[0]!, 503), entryFor(checks[1]!, 0)], [entryFor(checks[2]!, 200), entryFor(checks[3]!, 404), entryFor(checks[4]!, 429)]]);
    expect(await redis.hgetall(usageKey)).toEqual({ __total__: '3', 'op:/verify': '3' });
    // Settled entries leave the pending set: nothing of these five waits any more.
    expect(await redis.zcard(`${prefix}usage_pending:settle_S:/verify:2025-09`)).toBe(0);
  });

  it('refunds an entry delivered twice once: in one message, in two streams, and again later', async () => {
    const before = await used();
    const a = await verify();
    const b = await verify();
    await logs.send([[entryFor(a, 503), entryFor(a, 503)]]);
    await Promise.all([logs.send([[entryFor(b, 502)]]), logs.send([[entryFor(b, 502)]]), logs.send([[entryFor(b, 0)]])]);
    await logs.send([[entryFor(a, 503), entryFor(b, 502)]]);
    expect(await used()).toBe(before);
    expect(h.app.billing.settlement.stats).toMatchObject({ refunded: 4, unknown: 5 });
  });

  it('lets a reservation stand once its entry comes later than the settlement window', async () => {
    const before = await used();
    const late = await verify();
    h.clock.now = T0 + WINDOW_S * 1000;
    await logs.send([[entryFor(late, 503)]]);
    expect(await used()).toBe(before + 1);
    expect(h.app.billing.settlement.stats.expired).toBe(1);
    h.clock.now = T0 + WINDOW_S * 1000 + 1;
  });

  it('skips entries of requests that reserved nothing: reads, unmetered paths, entries without metadata', async () => {
    const before = await redis.hgetall(usageKey);
    const read = await h.checkHttp({ key: KEY, path: '/usage' });
    const unmetered = await h.checkHttp({ key: KEY, method: 'POST', path: '/other' });
    expect(read.dynamic_metadata?.fields.reserved?.boolValue).toBe(false);
    await logs.send([[entryFor(read, 503), entryFor(unmetered, 503), { response: { response_code: { value: 503 } } }]]);
    expect(await redis.hgetall(usageKey)).toEqual(before);
    expect(h.app.billing.settlement.stats.skipped).toBe(3);
  });

  it('lifts a quota by the units given back, without firing a threshold again', async () => {
    const left = 10 - (await used());
    const fill = [];
    for (let i = 0; i < left; i++) fill.push(await verify());
    expect(fill.map(httpStatus).every((s) => s === 200)).toBe(true);
    expect(httpStatus(await verify())).toBe(429);
    const alerts = () => h.logs.records().filter((r) => r.event === 'usage.threshold').length;
    const fired = alerts();
    await logs.send([[entryFor(fill[fill.length - 1]!, 504)]]);
    expect(await used()).toBe(9);
    expect(httpStatus(await verify())).toBe(200);
    expect(alerts()).toBe(fired);
  });
});

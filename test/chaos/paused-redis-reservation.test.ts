// Regression (found by the fuzz and chaos tests): a Check that gives up on a hung Redis answers by the
// tier's failure policy, unmetered; but the check-and-reserve script it had already sent still runs when
// Redis wakes up (SIGCONT, the end of a partition), reserving a unit for a request that was refused (deny
// tier: billed for a 503) or passed as degraded (allow tier: documented as unmetered). The Check now
// cancels that reservation on the same connection, behind the script, so it nets to nothing.
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { periodFor } from '../../src/core/period.js';
import { DEGRADED_HEADER } from '../../src/grpc/check-mapping.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { canRunRedis, startOwnRedis, type OwnRedis } from '../helpers/own-services.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');
const LENIENT = 'ul_test_LENIENT_KEY_0001'; // failurePolicy: allow
const STRICT = 'ul_test_STRICT_KEY_00001'; // failurePolicy: deny

const runnable = canRunRedis() && (await hasPostgres());
describe.skipIf(!runnable)('a Check answered by its failure policy while Redis hangs', () => {
  let redis: OwnRedis;
  let h: Harness;
  let probe: Redis;
  let drop: () => Promise<void>;

  beforeAll(async () => {
    redis = await startOwnRedis();
    const db = await createTestDatabase('phantom');
    drop = db.drop;
    h = await startHarness({
      env: { DATABASE_URL: db.url, APPLY_ON_START: TENANTS, REDIS_URL: redis.url, CHECK_TIMEOUT_MS: '100' },
      nowMs: Date.now(),
      realClock: true,
    });
    probe = new Redis(redis.url);
  });

  afterAll(async () => {
    redis?.resume();
    probe?.disconnect();
    await h?.stop();
    await redis?.stop();
    await drop?.();
  });

  const usage = async (tenant: string) => {
    const period = periodFor(Date.now(), null).label;
    return {
      used: Number(await probe.hget(`usage:${tenant}:${period}`, 'op:/verify')),
      pending: await probe.zcard(`usage_pending:${tenant}:/verify:${period}`),
    };
  };

  it('reserves nothing once Redis answers again', async () => {
    for (const key of [LENIENT, STRICT]) expect(httpStatus(await h.checkHttp({ key, method: 'POST', path: '/verify' }))).toBe(200);
    expect(await usage('tenant_lenient')).toEqual({ used: 1, pending: 1 });
    expect(await usage('tenant_strict')).toEqual({ used: 1, pending: 1 });

    redis.pause();
    try {
      const [lenient, strict] = await Promise.all([
        h.checkHttp({ key: LENIENT, method: 'POST', path: '/verify' }),
        h.checkHttp({ key: STRICT, method: 'POST', path: '/verify' }),
      ]);
      expect(httpStatus(lenient)).toBe(200);
      expect(lenient.ok_response?.headers.find((x) => x.header.key === DEGRADED_HEADER)?.header.value).toBe('true');
      expect(lenient.dynamic_metadata?.fields.reserved?.boolValue).toBe(false);
      expect(httpStatus(strict)).toBe(503);
    } finally {
      redis.resume();
    }
    // Whatever was queued on the connection has run once a fresh command answers.
    for (let i = 0; i < 50 && (await probe.ping().catch(() => null)) !== 'PONG'; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    expect(await usage('tenant_lenient')).toEqual({ used: 1, pending: 1 });
    expect(await usage('tenant_strict')).toEqual({ used: 1, pending: 1 });
  });

  it('closes a store within its budget while Redis hangs (QUIT is not waited for past it)', async () => {
    const store = createRedisStore({ url: redis.url, commandTimeoutMs: 200, prefix: 'close-test:' });
    await store.ping();
    redis.pause();
    try {
      const started = performance.now();
      await store.close();
      const took = performance.now() - started;
      expect(took).toBeGreaterThanOrEqual(190); // it did try QUIT
      expect(took).toBeLessThan(800); // not ioredis's backstop (1.2 s)
    } finally {
      redis.resume();
    }
  });
});

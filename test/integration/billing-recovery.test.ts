// Redis loses a tenant's counters mid-month: the next Checks rebuild them from what billing recorded in
// Postgres and what Stripe's meter summaries say, log it, and enforce the rebuilt usage, not zero. Real
// Redis, Postgres, gRPC, the fake Stripe.
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessLogClient, entryFor } from '../helpers/access-log-client.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { httpStatus, responseHeaders, startHarness, type Harness } from '../helpers/harness.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const TENANTS = fileURLToPath(new URL('../fixtures/billing/tenants.yaml', import.meta.url));
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const KEY_R = 'vk_test_RECOVER_R_0001'; // recover_R, tier small: /verify 10 and /extract 10 a month, customer cus_R
const KEY_N = 'vk_test_RECOVER_N_0001'; // recover_N, same tier, never used

describe.skipIf(!services)('rebuilding lost counters', () => {
  let h: Harness;
  let stripe: FakeStripe;
  let redis: Redis;
  let sql: postgres.Sql;
  let logs: AccessLogClient;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('recover');
  let seq = 0;

  const call = (key: string, path: string) =>
    h.checkHttp({ key, method: 'POST', path, requestId: `rec-${++seq}` });
  /** What a flush, a restart without persistence or a failover does to one tenant: all its keys are gone. */
  async function loseTenant(tenant: string): Promise<void> {
    const keys = await redis.keys(`${prefix}*${tenant}*`);
    expect(keys.length).toBeGreaterThan(0);
    await redis.del(...keys);
  }
  const rebuiltLogs = (tenantId: string) => h.logs.records().filter((r) => r.event === 'usage.rebuilt' && r.tenantId === tenantId);
  /** `usage_limiter_usage_rebuilds_total` from /metrics: Checks that waited for a rebuild. */
  const rebuilds = async () => {
    const res = await fetch(`http://127.0.0.1:${h.app.httpPort}/metrics`);
    return parsePrometheus(await res.text()).value('usage_limiter_usage_rebuilds_total');
  };

  beforeAll(async () => {
    stripe = new FakeStripe({ meters: ['api_requests', 'extract_calls'] });
    await stripe.start();
    const db = await createTestDatabase('recover');
    dropDb = db.drop;
    sql = postgres(db.url, { max: 1, onnotice: () => {} });
    redis = new Redis(TEST_REDIS_URL);
    h = await startHarness({
      env: {
        DATABASE_URL: db.url,
        REDIS_URL: TEST_REDIS_URL,
        REDIS_KEY_PREFIX: prefix,
        APPLY_ON_START: TENANTS,
        STRIPE_SECRET_KEY: 'sk_test_recovery',
        STRIPE_API_BASE: stripe.url,
        // /extract has a meter of its own; /verify goes to the shared api_requests meter.
        STRIPE_METERS: JSON.stringify({ '/extract': 'extract_calls' }),
        USAGE_REPORT_INTERVAL_SECONDS: '3600',
        SETTLEMENT_WINDOW_SECONDS: '60',
        // This file is about what the counters hold after a loss, not about latency: on a loaded CI machine
        // the default 100 ms store budget can drop a settlement batch (its reservations then wait out the
        // window, which this frozen clock never reaches) and the report would find nothing settled.
        CHECK_TIMEOUT_MS: '2000',
      },
      nowMs: T0,
    });
    logs = new AccessLogClient(h.app.grpcPort);
    // The app's reporter runs once at start (then hourly): let that run finish, so the test's own runs are
    // the only ones from here on. It is a timer, so it fires only after this flush has begun, and runs after
    // it: wait for both runs, not just this one. (A start run still reading Redis when the first test had
    // settled its Checks reported them itself, and the test's own flush then found nothing to send.)
    await h.app.billing.reporter!.flush();
    await vi.waitFor(() => expect(h.app.billing.reporter!.stats.flushes).toBe(2));
  });

  afterAll(async () => {
    logs?.close();
    await h?.stop();
    await stripe?.stop();
    await sql?.end();
    if (redis) {
      await dropKeysWithPrefix(redis, prefix);
      redis.disconnect();
    }
    await dropDb?.();
  });

  it('rebuilds from Postgres and Stripe before enforcing again, and says so', async () => {
    // Six /verify calls, settled (the upstream answered), reported to Stripe.
    const checks = [];
    for (let i = 0; i < 6; i++) checks.push(await call(KEY_R, '/verify'));
    await logs.send([checks.map((c) => entryFor(c, 200))]);
    expect(checks.map(httpStatus)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(h.app.billing.settlement.stats).toMatchObject({ settled: 6, dropped: 0 });
    expect(await h.app.billing.reporter!.flush()).toMatchObject({ batches: 1, units: 6, failures: 0 });
    expect(stripe.totalsByCustomer().get('cus_R')).toBe(6);
    // Stripe also holds four /extract units that Postgres does not know of (say, a restored backup).
    stripe.seedEvent({
      event_name: 'extract_calls',
      identifier: 'sent-before-a-restore',
      timestamp: Math.floor(T0 / 1000) - 3600,
      payload: { stripe_customer_id: 'cus_R', value: '4', endpoint: '/extract' },
    });

    await loseTenant('recover_R');
    h.clock.now = T0 + 60_000;
    const rebuildsBefore = await rebuilds();
    const next = await call(KEY_R, '/verify');
    expect(httpStatus(next)).toBe(200);
    expect(responseHeaders(next)['X-RateLimit-Remaining']).toBe('3'); // 6 rebuilt + this one, of 10
    expect(rebuiltLogs('recover_R')).toEqual([
      expect.objectContaining({
        level: 40,
        period: '2025-09',
        units: 10,
        endpoints: { '/verify': 6, '/extract': 4 },
        fromPostgres: 6,
        fromStripe: 10,
        raisedByStripe: { '/extract': 4 },
      }),
    ]);
    expect(await redis.hgetall(`${prefix}usage:recover_R:2025-09`)).toEqual({ __total__: '11', 'op:/verify': '7', 'op:/extract': '4' });

    // Enforced on the rebuilt counts: /extract has 6 left, /verify 3.
    const extract = [];
    for (let i = 0; i < 7; i++) extract.push(httpStatus(await call(KEY_R, '/extract')));
    expect(extract).toEqual([200, 200, 200, 200, 200, 200, 429]);
    const verify = [];
    for (let i = 0; i < 4; i++) verify.push(httpStatus(await call(KEY_R, '/verify')));
    expect(verify).toEqual([200, 200, 200, 429]);
    expect(rebuiltLogs('recover_R')).toHaveLength(1);
    // One Check waited for the rebuild; the eleven after it found the counters there.
    expect((await rebuilds()) - rebuildsBefore).toBe(1);
  });

  it('bills the units Stripe already had only once', async () => {
    // Everything has settled (past the window): the reporter sends what Stripe does not have yet.
    h.clock.now = T0 + 10 * 60_000;
    await h.app.billing.reporter!.flush();
    const rows = await sql<{ endpoint: string; reported_units: string }[]>`
      select endpoint, reported_units from usage_reports where tenant_id = 'recover_R' order by endpoint`;
    expect(rows.map((r) => [r.endpoint, Number(r.reported_units)])).toEqual([
      ['/extract', 10],
      ['/verify', 10],
    ]);
    const byMeter = (name: string) =>
      stripe.accepted.filter((a) => a.event.event_name === name && a.event.payload.stripe_customer_id === 'cus_R').reduce((n, a) => n + Number(a.event.payload.value), 0);
    expect([byMeter('api_requests'), byMeter('extract_calls')]).toEqual([10, 10]);
  });

  it('opens a tenant’s first period at zero without asking Stripe, and logs no rebuild', async () => {
    const summaryCalls = () => stripe.requests.filter((r) => r.path.includes('/event_summaries')).length;
    const before = summaryCalls();
    const rebuildsBefore = await rebuilds();
    const first = await call(KEY_N, '/verify');
    expect(httpStatus(first)).toBe(200);
    expect(responseHeaders(first)['X-RateLimit-Remaining']).toBe('9');
    expect(summaryCalls()).toBe(before);
    expect(rebuiltLogs('recover_N')).toEqual([]);
    // Opening the period is the one Postgres query a metered Check can wait for, and it is counted.
    expect((await rebuilds()) - rebuildsBefore).toBe(1);
    expect(httpStatus(await call(KEY_N, '/verify'))).toBe(200);
    expect((await rebuilds()) - rebuildsBefore).toBe(1);
  });

  it('rebuilds from Postgres alone when Stripe cannot answer, and says that too', async () => {
    stripe.setFaults(({ method }) => (method === 'GET' ? { kind: 'status', status: 503 } : null));
    try {
      await loseTenant('recover_R');
      h.clock.now = T0 + 11 * 60_000;
      const denied = await call(KEY_R, '/verify');
      expect(httpStatus(denied)).toBe(429); // 10 reported of 10: still at the limit, not back to zero
      expect(h.logs.records().some((r) => r.event === 'usage.rebuild_stripe_unavailable' && r.tenantId === 'recover_R')).toBe(true);
      expect(rebuiltLogs('recover_R').at(-1)).toMatchObject({ units: 20, fromPostgres: 20, fromStripe: null });
    } finally {
      stripe.setFaults(null);
    }
  });
});

// The usage reporter one behaviour at a time, on a pinned clock: real Redis and Postgres, real gRPC
// Checks and access-log stream, the fake Stripe. (billing-exactly-once.test.ts puts it all together.)
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reporterFromConfig } from '../../src/billing/wiring.js';
import { loadConfig } from '../../src/config/env.js';
import { UsageReporter } from '../../src/billing/usage-reporter.js';
import { eventNameFor } from '../../src/billing/report-identity.js';
import { createStripeClient, stripeMeterEvents } from '../../src/billing/stripe-client.js';
import { createTenantLocks } from '../../src/billing/tenant-locks.js';
import { settlementHorizon } from '../../src/store/keys.js';
import { AccessLogClient, entryFor } from '../helpers/access-log-client.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { startHarness, type Harness } from '../helpers/harness.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const TENANTS = fileURLToPath(new URL('../fixtures/billing/tenants.yaml', import.meta.url));
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const WINDOW_MS = 60_000;
const KEY_A = 'vk_test_BILL_A_0001'; // bill_A, customer cus_A

describe.skipIf(!services)('usage reporter', () => {
  let h: Harness;
  let stripe: FakeStripe;
  let reporter: UsageReporter;
  let redis: Redis;
  let sql: postgres.Sql;
  let logs: AccessLogClient;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('reporter');
  let seq = 0;

  const verify = (key = KEY_A) => h.checkHttp({ key, method: 'POST', path: '/verify', requestId: `rep-${++seq}` });
  const billed = (customer = 'cus_A') => stripe.totalsByCustomer().get(customer) ?? 0;
  const row = async (tenant = 'bill_A') =>
    (await sql<{ reported_units: string; pending_identifier: string | null; pending_units: string | null }[]>`
      select reported_units, pending_identifier, pending_units from usage_reports
      where tenant_id = ${tenant} and endpoint = '/verify' and period = '2025-09'`)[0];

  beforeAll(async () => {
    stripe = new FakeStripe();
    await stripe.start();
    const db = await createTestDatabase('reporter');
    dropDb = db.drop;
    sql = postgres(db.url, { max: 1, onnotice: () => {} });
    redis = new Redis(TEST_REDIS_URL);
    const env = {
      DATABASE_URL: db.url,
      REDIS_URL: TEST_REDIS_URL,
      REDIS_KEY_PREFIX: prefix,
      APPLY_ON_START: TENANTS,
      SETTLEMENT_WINDOW_SECONDS: String(WINDOW_MS / 1000),
      STRIPE_API_BASE: stripe.url,
      STRIPE_TIMEOUT_MS: '300',
      USAGE_REPORT_INTERVAL_SECONDS: '3600',
    };
    // The app itself gets no Stripe key, so it runs no reporter: the test's reporter is the only one.
    h = await startHarness({ env, nowMs: T0 });
    // A reporter of the test's own over the app's store and database, with a quick retry schedule.
    const config = loadConfig({ ...env, STRIPE_SECRET_KEY: 'sk_test_reporter', GRPC_PORT: '0', HTTP_PORT: '0' });
    reporter = reporterFromConfig(
      {
        config,
        database: h.app.database,
        store: h.app.store,
        logger: createQuietLogger(),
        now: () => h.clock.now,
        retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 50 },
      },
      createStripeClient({ secretKey: 'sk_test_reporter', apiBase: stripe.url, timeoutMs: 300 }),
    );
    logs = new AccessLogClient(h.app.grpcPort);
  });

  afterAll(async () => {
    logs?.close();
    await reporter?.close();
    await h?.stop();
    await stripe?.stop();
    await sql?.end();
    if (redis) {
      await dropKeysWithPrefix(redis, prefix);
      redis.disconnect();
    }
    await dropDb?.();
  });

  it('bills settled units only: nothing while requests may still be refunded, never a refunded one', async () => {
    const checks = [await verify(), await verify(), await verify(), await verify()];
    expect(await reporter.flush()).toMatchObject({ batches: 0, units: 0 });
    expect(billed()).toBe(0);
    await logs.send([[entryFor(checks[0]!, 200), entryFor(checks[1]!, 503)]]);
    expect(await reporter.flush()).toMatchObject({ batches: 1, units: 1 });
    expect(billed()).toBe(1);
    // The two without an entry stand once the window (plus the skew allowance) is over.
    h.clock.now = T0 + settlementHorizon(WINDOW_MS);
    expect(await reporter.flush()).toMatchObject({ batches: 1, units: 2 });
    expect(billed()).toBe(3);
    expect(await row()).toEqual({ reported_units: '3', pending_identifier: null, pending_units: null });
    expect(stripe.accepted.map((a) => a.event.identifier)).toEqual(['ul:bill_A:/verify:2025-09:0-1', 'ul:bill_A:/verify:2025-09:1-3']);
    // The event is timed inside the period it bills, and carries the endpoint.
    expect(stripe.accepted[1]?.event).toMatchObject({
      event_name: 'api_requests',
      timestamp: Math.floor(h.clock.now / 1000),
      payload: { stripe_customer_id: 'cus_A', value: '2', endpoint: '/verify' },
    });
  });

  it('keeps a batch pending while Stripe is down, and delivers it later under the same identifier', async () => {
    h.clock.now += 1_000;
    await verify();
    h.clock.now += settlementHorizon(WINDOW_MS);
    stripe.setFaults(() => ({ kind: 'status', status: 503 }));
    const down = await reporter.flush();
    expect(down).toMatchObject({ batches: 0, failures: 1 });
    expect(await row()).toEqual({ reported_units: '3', pending_identifier: 'ul:bill_A:/verify:2025-09:3-4', pending_units: '1' });
    expect(stripe.requests.filter((r) => r.outcome === 'fault').length).toBe(3); // three attempts
    stripe.setFaults(null);
    await verify(); // more usage meanwhile: it waits for the pending batch
    h.clock.now += settlementHorizon(WINDOW_MS);
    expect(await reporter.flush()).toMatchObject({ batches: 2, units: 2, failures: 0 });
    expect(stripe.accepted.slice(-2).map((a) => a.event.identifier)).toEqual([
      'ul:bill_A:/verify:2025-09:3-4',
      'ul:bill_A:/verify:2025-09:4-5',
    ]);
    expect(billed()).toBe(5);
  });

  it('retries 429 and lost answers; a batch Stripe already has counts as delivered, once', async () => {
    let calls = 0;
    // 429 twice, then the connection drops after Stripe recorded the event: stripe-node's own retry of a
    // closed connection reuses its Idempotency-Key, and Stripe replays the first answer.
    stripe.setFaults(({ method }) => {
      if (method !== 'POST') return null;
      calls++;
      return calls <= 2 ? { kind: 'status', status: 429 } : calls === 3 ? { kind: 'drop-after' } : calls === 5 ? { kind: 'slow', ms: 600 } : null; // 4: the replay
    });
    try {
      h.clock.now += 1_000;
      await verify();
      await verify();
      h.clock.now += settlementHorizon(WINDOW_MS);
      expect(await reporter.flush()).toMatchObject({ batches: 1, units: 2, failures: 0 });
      expect(stripe.requests.slice(-4).map((r) => r.outcome)).toEqual(['fault', 'fault', 'fault', 'replayed']);
      // An answer slower than the client waits (STRIPE_TIMEOUT_MS): our retry is a new request, and Stripe
      // answers that it has the identifier already.
      await verify();
      h.clock.now += settlementHorizon(WINDOW_MS);
      expect(await reporter.flush()).toMatchObject({ batches: 1, units: 1, failures: 0 });
      expect(stripe.requests.slice(-2).map((r) => r.outcome)).toEqual(['fault', 'duplicate']);
    } finally {
      stripe.setFaults(null);
    }
    expect(billed()).toBe(8);
    expect(reporter.stats.duplicates).toBe(1);
  });

  it('finishes a batch that a crashed reporter recorded, whether or not Stripe got it', async () => {
    // Crash after recording, before sending: Stripe never saw it.
    await sql`insert into usage_reports (tenant_id, endpoint, period, reported_units, pending_identifier, pending_units, pending_since)
      values ('bill_B', '/verify', '2025-09', 0, 'ul:bill_B:/verify:2025-09:0-2', 2, now()),
             ('bill_C', '/verify', '2025-09', 0, 'ul:bill_C:/verify:2025-09:0-3', 3, now())`;
    // Crash after sending, before confirming: Stripe has it.
    stripe.seedEvent({
      event_name: 'api_requests',
      identifier: 'ul:bill_C:/verify:2025-09:0-3',
      timestamp: Math.floor(T0 / 1000),
      payload: { stripe_customer_id: 'cus_C', value: '3', endpoint: '/verify' },
    });
    await reporter.flush();
    expect([billed('cus_B'), billed('cus_C')]).toEqual([2, 3]);
    expect(await row('bill_B')).toEqual({ reported_units: '2', pending_identifier: null, pending_units: null });
    expect(await row('bill_C')).toEqual({ reported_units: '3', pending_identifier: null, pending_units: null });
  });

  it('never sends a negative event when an operator lowers a counter below what was billed', async () => {
    await redis.hset(`${prefix}usage:bill_A:2025-09`, 'op:/verify', '1');
    const before = stripe.accepted.length;
    expect(await reporter.flush()).toMatchObject({ batches: 0, failures: 0 });
    expect(stripe.accepted.length).toBe(before);
    expect(h.logs.records().length).toBeGreaterThan(0);
    expect(reporterWarnings.some((w) => w.event === 'usage.report_ahead' && w.tenantId === 'bill_A' && w.settled === 1 && w.reported === 8)).toBe(true);
  });

  it('gives up on a Postgres call that never answers at its deadline, and the next run reports', async () => {
    // A reporter whose first tenant-lock query is lost by the driver (as postgres.js loses queries issued
    // just after Postgres died): without a deadline its run, and every run queued behind it, would wait forever.
    const config = loadConfig({ STRIPE_SECRET_KEY: 'sk_test_reporter', GRPC_PORT: '0', HTTP_PORT: '0', REDIS_URL: TEST_REDIS_URL });
    const locks = createTenantLocks(h.app.database);
    let lost = 0;
    const lossy = new UsageReporter({
      db: h.app.database.db,
      store: h.app.store,
      sink: stripeMeterEvents(createStripeClient({ secretKey: 'sk_test_reporter', apiBase: stripe.url, timeoutMs: 300 })),
      locks: { ...locks, tryLock: (id) => (id === 'bill_D' && lost++ === 0 ? new Promise<boolean>(() => {}) : locks.tryLock(id)) },
      now: () => h.clock.now,
      logger: createQuietLogger(),
      eventName: (endpoint) => eventNameFor(endpoint, config.stripeMeters, config.stripeMeterEvent),
      intervalMs: 3_600_000,
      deadlineMs: 2_000,
    });
    try {
      await h.checkHttp({ key: 'vk_test_BILL_D_0001', method: 'POST', path: '/verify', requestId: `rep-${++seq}` });
      h.clock.now += settlementHorizon(WINDOW_MS);
      const started = performance.now();
      await expect(lossy.flush()).rejects.toThrow(/usage reporter: tenant lock timed out after 2000 ms/);
      expect(performance.now() - started).toBeLessThan(10_000);
      expect(billed('cus_D')).toBe(0);
      await lossy.flush();
      expect(billed('cus_D')).toBe(1);
    } finally {
      await lossy.close();
    }
  });
});

// The test's reporter logs here, so its lines can be checked.
const reporterWarnings: Array<Record<string, unknown>> = [];
function createQuietLogger() {
  // pino-compatible enough for the reporter: it only calls these four.
  const keep = (o: Record<string, unknown>) => void reporterWarnings.push(o);
  return { info: keep, warn: keep, error: keep, debug: () => {} } as unknown as import('../../src/logger.js').Logger;
}

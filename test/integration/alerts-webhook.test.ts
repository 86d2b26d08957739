// Alert webhooks end to end: a receiver that hangs, then fails, then recovers; a server restart in between
// (with an alert still in the in-memory queue at SIGTERM time). Every alert must arrive exactly once per
// target, signed, and the Checks must never wait for any of it.
import path from 'node:path';
import { eq, sql } from 'drizzle-orm';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AlertTuning } from '../../src/alerts/alert-service.js';
import { EVENT_ID_HEADER, SIGNATURE_HEADER, tenantWebhookSecret, verifySignature, ATTEMPT_HEADER } from '../../src/alerts/webhook.js';
import { alertOutbox, tenants } from '../../src/db/schema.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';
import { startWebhookReceiver, type ReceivedWebhook, type WebhookReceiver } from '../helpers/webhook-receiver.js';

const services = (await hasRedis()) && (await hasPostgres());
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');
const STRICT_KEY = 'ul_test_STRICT_KEY_00001';
const LENIENT_KEY = 'ul_test_LENIENT_KEY_0001';
const SECRET = 'whsec_alerts_test_secret';

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe.skipIf(!services)('alert webhooks', () => {
  const prefix = testPrefix('alerts');
  let receiver: WebhookReceiver;
  let db: { url: string; drop: () => Promise<void> };
  let h: Harness | undefined;
  let redis: Redis;

  const fast: Partial<AlertTuning> = {
    dispatchMs: 100,
    retryBaseMs: 100,
    retryCapMs: 300,
    // Long against the Checks' own time, so a Check that waited on a delivery could not pass for a slow one.
    sendTimeoutMs: 2000,
    leaseMs: 2_000,
    violationFlushMs: 50,
  };
  const start = (tuning: Partial<AlertTuning>) =>
    startHarness({
      env: {
        DATABASE_URL: db.url,
        APPLY_ON_START: TENANTS,
        REDIS_URL: TEST_REDIS_URL,
        REDIS_KEY_PREFIX: prefix,
        ALERT_WEBHOOK_URL: `${receiver.url}/global`,
        ALERT_WEBHOOK_SECRET: SECRET,
        VIOLATION_ALERT_COUNT: '5',
        VIOLATION_ALERT_WINDOW_SECONDS: '60',
      },
      nowMs: T0,
      app: { alerts: { tuning } },
    });

  beforeAll(async () => {
    receiver = await startWebhookReceiver();
    db = await createTestDatabase('alerts');
    redis = new Redis(TEST_REDIS_URL);
  });

  afterAll(async () => {
    await h?.stop();
    await receiver?.close();
    await dropKeysWithPrefix(redis, prefix);
    redis.disconnect();
    await db?.drop();
  });

  it('delivers every alert once, signed, through a receiver outage and a restart', async () => {
    // First server: the queue is only flushed on demand or at shutdown, so an alert raised just before
    // SIGTERM is still in memory when the server stops.
    h = await start({ ...fast, flushMs: 3_600_000 });
    await h.app.database.db
      .update(tenants)
      .set({ alertWebhookUrl: `${receiver.url}/tenant/strict` })
      .where(eq(tenants.id, 'tenant_strict'));

    // The receiver hangs: deliveries time out. The Checks do not notice.
    receiver.mode = 'hang';
    const slowest = { ms: 0 };
    const timed = async (r: Parameters<Harness['checkHttp']>[0]) => {
      const t = performance.now();
      const res = await h!.checkHttp(r);
      slowest.ms = Math.max(slowest.ms, performance.now() - t);
      return res;
    };
    const statuses: number[] = [];
    for (let i = 0; i < 15; i++) statuses.push(httpStatus(await timed({ key: STRICT_KEY, method: 'POST', path: '/verify' })));
    expect(statuses).toEqual([...Array(10).fill(200), ...Array(5).fill(429)]);

    // The threshold log lines keep the seed's shape.
    const thresholds = h.logs.records().filter((r) => r.event === 'usage.threshold');
    expect(thresholds.map(({ level, event, tenantId, endpoint, threshold, usage, limit, msg }) => ({ level, event, tenantId, endpoint, threshold, usage, limit, msg }))).toEqual([
      { level: 30, event: 'usage.threshold', tenantId: 'tenant_strict', endpoint: '/verify', threshold: 0.5, usage: 5, limit: 10, msg: 'Usage threshold 50% reached' },
      { level: 30, event: 'usage.threshold', tenantId: 'tenant_strict', endpoint: '/verify', threshold: 1, usage: 10, limit: 10, msg: 'Usage threshold 100% reached' },
    ]);
    // Five denials within the window: one repeated-violations event.
    await until('the violations alert', () => h!.logs.records().some((r) => r.event === 'usage.repeated_violations'));
    const violation = h.logs.records().filter((r) => r.event === 'usage.repeated_violations');
    expect(violation).toHaveLength(1);
    expect(violation[0]).toMatchObject({ level: 40, tenantId: 'tenant_strict', count: 5, limit: 5, windowSeconds: 60 });

    await h.app.alerts.flushNow();
    // 2 thresholds x (global + tenant) + 1 violations alert x (global + tenant).
    await until('6 outbox rows', async () => (await h!.app.database.db.select().from(alertOutbox)).length === 6);
    await until('a timed-out attempt', () => receiver.received.length >= 1);

    // Then it fails outright: every row gets at least one failed attempt, retried with backoff.
    receiver.mode = 'fail';
    await until('every row failed at least once', async () => {
      const rows = await h!.app.database.db.select().from(alertOutbox);
      return rows.every((r) => r.attempts >= 1 && r.lastError !== null);
    });
    const failedRows = await h.app.database.db.select().from(alertOutbox);
    expect(failedRows.every((r) => r.deliveredAt === null)).toBe(true);
    // A Check that waited for a webhook would take at least the 2 s a delivery hangs for.
    expect(slowest.ms).toBeLessThan(1500);

    // An alert raised just before shutdown (lenient: 5 of 10 = 50%) sits in the in-memory queue...
    for (let i = 0; i < 5; i++) await h.checkHttp({ key: LENIENT_KEY, method: 'POST', path: '/verify' });
    expect(h.app.alerts.stats.raised.threshold).toBe(3);
    expect((await h.app.database.db.select().from(alertOutbox)).length).toBe(6);
    // ...and SIGTERM's shutdown path writes it to the outbox before the database closes.
    await h.stop();
    h = undefined;

    // Second server: the receiver has recovered.
    receiver.mode = 'ok';
    const before = receiver.received.length;
    h = await start({ ...fast, flushMs: 50 });
    expect((await h.app.database.db.select().from(alertOutbox)).length).toBe(7);
    await until('every alert delivered', async () => {
      const rows = await h!.app.database.db.select().from(alertOutbox);
      return rows.every((r) => r.deliveredAt !== null);
    }, 15_000);
    // A few more rounds: nothing is sent twice.
    await new Promise((r) => setTimeout(r, 400));

    const ok = receiver.received.filter((r) => r.status === 204);
    expect(ok).toHaveLength(7);
    expect(receiver.received.slice(0, before).every((r) => r.status !== 204)).toBe(true);
    const delivered = ok.map((r) => verified(r));
    expect(new Set(delivered.map((d) => `${d.path} ${d.id}`)).size).toBe(7);
    expect(delivered.map((d) => `${d.path} ${d.type} ${d.summary}`).sort()).toEqual(
      [
        '/global usage.repeated_violations tenant_strict 5/5',
        '/global usage.threshold tenant_lenient /verify 50%',
        '/global usage.threshold tenant_strict /verify 100%',
        '/global usage.threshold tenant_strict /verify 50%',
        '/tenant/strict usage.repeated_violations tenant_strict 5/5',
        '/tenant/strict usage.threshold tenant_strict /verify 100%',
        '/tenant/strict usage.threshold tenant_strict /verify 50%',
      ].sort(),
    );
    // The same alert has the same event id at both targets, and on every attempt.
    const ids = new Map<string, Set<string>>();
    for (const r of receiver.received) {
      const body = JSON.parse(r.body) as { id: string; type: string; data: Record<string, unknown>; tenantId: string };
      expect(r.headers[EVENT_ID_HEADER]).toBe(body.id);
      const k = `${body.type} ${body.tenantId} ${JSON.stringify(body.data)}`;
      ids.set(k, new Set([...(ids.get(k) ?? []), body.id]));
    }
    expect([...ids.values()].every((s) => s.size === 1)).toBe(true);
    // Retried deliveries say which attempt they are.
    expect(Math.max(...ok.map((r) => Number(r.headers[ATTEMPT_HEADER])))).toBeGreaterThan(1);

    const backlog = await h.app.alerts.backlog();
    expect(backlog).toBe(0);
    const counts = await h.app.database.db.select({ n: sql<number>`count(*)::int` }).from(alertOutbox);
    expect(counts[0]?.n).toBe(7);
  }, 60_000);

  function verified(r: ReceivedWebhook): { path: string; id: string; type: string; summary: string } {
    const secret = r.path === '/global' ? SECRET : tenantWebhookSecret(SECRET, 'tenant_strict');
    const header = r.headers[SIGNATURE_HEADER] as string;
    expect(verifySignature(secret, header, r.body), `signature of ${r.path}`).toBe(true);
    // A tenant's receiver cannot be fooled with the operator's secret, nor the other way round.
    const other = r.path === '/global' ? tenantWebhookSecret(SECRET, 'tenant_strict') : SECRET;
    expect(verifySignature(other, header, r.body)).toBe(false);
    expect(r.headers['content-type']).toBe('application/json; charset=utf-8');
    const body = JSON.parse(r.body) as { id: string; type: string; tenantId: string; data: Record<string, unknown> };
    const summary =
      body.type === 'usage.threshold'
        ? `${body.tenantId} ${String(body.data.endpoint)} ${String(body.data.percent)}%`
        : `${body.tenantId} ${String(body.data.count)}/${String(body.data.limit)}`;
    return { path: r.path, id: body.id, type: body.type, summary };
  }
});

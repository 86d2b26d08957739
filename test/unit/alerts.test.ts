import { describe, expect, it } from 'vitest';
import { AlertQueue } from '../../src/alerts/alert-queue.js';
import { retryDelayMs } from '../../src/alerts/dispatcher.js';
import { eventId } from '../../src/alerts/outbox.js';
import { repeatedViolationsAlert, thresholdAlert, type Alert } from '../../src/alerts/types.js';
import { memoryWindowCounter, ViolationTracker, type WindowCounter } from '../../src/alerts/violations.js';
import { signatureHeader, tenantWebhookSecret, verifySignature } from '../../src/alerts/webhook.js';
import { createLogger } from '../../src/logger.js';
import { LogCapture } from '../helpers/harness.js';

const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);

describe('webhook signatures', () => {
  const body = '{"id":"evt_1","type":"usage.threshold"}';
  const now = 1_758_196_800;

  it('verifies its own signature, over the exact body and a fresh timestamp', () => {
    const h = signatureHeader('s3cret', now, body);
    expect(h).toMatch(/^t=1758196800,v1=[0-9a-f]{64}$/);
    expect(verifySignature('s3cret', h, body, now)).toBe(true);
    expect(verifySignature('s3cret', h, body, now + 300)).toBe(true);
    expect(verifySignature('s3cret', h, `${body} `, now)).toBe(false);
    expect(verifySignature('other', h, body, now)).toBe(false);
    expect(verifySignature('s3cret', h, body, now + 301)).toBe(false);
    expect(verifySignature('s3cret', undefined, body, now)).toBe(false);
    expect(verifySignature('s3cret', 'v1=abc', body, now)).toBe(false);
  });

  it('accepts any of several v1 signatures (secret rotation on the receiver side)', () => {
    const good = signatureHeader('new', now, body).split(',')[1];
    expect(verifySignature('new', `t=${now},v1=${'0'.repeat(64)},${good}`, body, now)).toBe(true);
  });

  it('derives a distinct, stable secret per tenant', () => {
    expect(tenantWebhookSecret('g', 'a')).toBe(tenantWebhookSecret('g', 'a'));
    expect(tenantWebhookSecret('g', 'a')).not.toBe(tenantWebhookSecret('g', 'b'));
    expect(tenantWebhookSecret('g', 'a')).not.toBe(tenantWebhookSecret('h', 'a'));
  });
});

describe('alert identity', () => {
  it('keys thresholds by tenant, endpoint, period and percent, and violations by window', () => {
    const a = thresholdAlert({ tenantId: 't', endpoint: '/verify', threshold: 0.8, usage: 8, limit: 10 }, '2025-09', T0);
    expect(a.key).toBe('threshold:t:/verify:2025-09:80');
    expect(a.data).toMatchObject({ percent: 80, period: '2025-09' });
    const v = repeatedViolationsAlert('t', { startMs: T0, lengthMs: 300_000 }, 100, 100, T0 + 5);
    expect(v.key).toBe(`violations:t:${T0 / 1000}`);
    expect(eventId(a.key)).toBe(eventId('threshold:t:/verify:2025-09:80'));
    expect(eventId(a.key)).toMatch(/^evt_[0-9a-f]{32}$/);
  });
});

describe('retry delays', () => {
  it('double per attempt, are capped, and keep at least half the step', () => {
    expect(retryDelayMs(1, 1000, 60_000, () => 0)).toBe(500);
    expect(retryDelayMs(1, 1000, 60_000, () => 1)).toBe(1000);
    expect(retryDelayMs(3, 1000, 60_000, () => 1)).toBe(4000);
    expect(retryDelayMs(30, 1000, 60_000, () => 1)).toBe(60_000);
    expect(retryDelayMs(30, 1000, 60_000, () => 0)).toBe(30_000);
  });
});

function logger() {
  const logs = new LogCapture();
  return { logs, logger: createLogger('info', logs) };
}

/** A tracker raising at 3 denials per 60-s window, with the crossings it raised and its log. */
function tracker(counter: WindowCounter, clock: { now: number }) {
  const crossed: Array<{ tenantId: string; startMs: number; count: number }> = [];
  const { logs, logger: log } = logger();
  const t = new ViolationTracker({
    counter,
    threshold: 3,
    windowMs: 60_000,
    flushMs: 1_000,
    keyPrefix: 'p:',
    logger: log,
    now: () => clock.now,
    onCrossed: (tenantId, w, count) => crossed.push({ tenantId, startMs: w.startMs, count }),
  });
  return { t, crossed, logs };
}

describe('ViolationTracker', () => {
  it('raises once per tenant and aligned window, counting across flushes', async () => {
    const clock = { now: T0 + 1_000 };
    const { t, crossed } = tracker(memoryWindowCounter(() => clock.now), clock);
    t.record('a', clock.now);
    t.record('a', clock.now);
    await t.flush();
    expect(crossed).toEqual([]);
    t.record('a', clock.now);
    t.record('a', clock.now);
    t.record('b', clock.now);
    await t.flush();
    expect(crossed).toEqual([{ tenantId: 'a', startMs: T0, count: 4 }]);
    for (let i = 0; i < 10; i++) t.record('a', clock.now);
    await t.flush();
    expect(crossed).toHaveLength(1);
    clock.now = T0 + 60_000; // the next window
    for (let i = 0; i < 3; i++) t.record('a', clock.now);
    await t.flush();
    expect(crossed.at(-1)).toEqual({ tenantId: 'a', startMs: T0 + 60_000, count: 3 });
  });

  it('two replicas sharing the counters raise once between them', async () => {
    const clock = { now: T0 };
    const shared = memoryWindowCounter(() => clock.now);
    const r1 = tracker(shared, clock);
    const r2 = tracker(shared, clock);
    r1.t.record('a', clock.now);
    r1.t.record('a', clock.now);
    r2.t.record('a', clock.now);
    r2.t.record('a', clock.now);
    await Promise.all([r1.t.flush(), r2.t.flush()]);
    expect(r1.crossed.length + r2.crossed.length).toBe(1);
  });

  it('keeps the counts when the shared counters are unreachable', async () => {
    const clock = { now: T0 };
    const inner = memoryWindowCounter(() => clock.now);
    let down = true;
    const flaky: WindowCounter = { add: (e) => (down ? Promise.reject(new Error('down')) : inner.add(e)) };
    const { t, crossed } = tracker(flaky, clock);
    for (let i = 0; i < 3; i++) t.record('a', clock.now);
    await t.flush();
    expect(crossed).toEqual([]);
    down = false;
    await t.flush();
    expect(crossed).toEqual([{ tenantId: 'a', startMs: T0, count: 3 }]);
  });
});

describe('ViolationTracker when a reply is lost', () => {
  it('still raises a crossing that happened inside a call whose reply was lost (Redis ran it, late)', async () => {
    const clock = { now: T0 };
    const inner = memoryWindowCounter(() => clock.now);
    // The first call times out on this side, but Redis runs it once it wakes: added, reply lost.
    let stalls = 1;
    const stalling: WindowCounter = {
      add: async (e) => {
        const totals = await inner.add(e);
        if (stalls-- > 0) throw new Error('Command timed out');
        return totals;
      },
    };
    const { t, crossed } = tracker(stalling, clock);
    for (let i = 0; i < 3; i++) t.record('a', clock.now);
    await t.flush(); // 0 → 3 in Redis: the crossing, in the reply nobody read
    expect(crossed).toEqual([]);
    t.record('a', clock.now);
    await t.flush(); // the 3 are sent again with the new one: 3 → 7
    expect(crossed.map((c) => c.count)).toEqual([7]);
    t.record('a', clock.now);
    await t.flush();
    expect(crossed).toHaveLength(1); // raised once
  });

  it('says on shutdown how many denials it could not add', async () => {
    const { t, logs } = tracker({ add: () => Promise.reject(new Error('down')) }, { now: T0 });
    t.record('a', T0);
    t.record('b', T0);
    await t.stop();
    expect(logs.records().filter((r) => r.event === 'violations.lost_on_shutdown')).toEqual([expect.objectContaining({ denials: 2, tenants: 2 })]);
  });
});

describe('AlertQueue', () => {
  const alert = (i: number): Alert => thresholdAlert({ tenantId: `t${i}`, endpoint: '/v', threshold: 1, usage: 1, limit: 1 }, '2025-09', T0);

  it('is bounded: beyond maxItems new alerts are dropped and counted', () => {
    const q = new AlertQueue({ write: async () => {}, logger: logger().logger, flushMs: 1000, maxItems: 2, batchSize: 10 });
    for (let i = 0; i < 5; i++) q.push(alert(i));
    expect(q.length).toBe(2);
    expect(q.dropped).toBe(3);
  });

  it('writes in batches, keeps what failed, and logs the outage once', async () => {
    const written: string[][] = [];
    let fail = true;
    const { logs, logger: log } = logger();
    const q = new AlertQueue({
      write: async (b) => {
        if (fail) throw new Error('db down');
        written.push(b.map((a) => a.tenantId));
      },
      logger: log,
      flushMs: 1000,
      maxItems: 100,
      batchSize: 2,
    });
    for (let i = 0; i < 5; i++) q.push(alert(i));
    await expect(q.flush()).rejects.toThrow('db down');
    await expect(q.flush()).rejects.toThrow('db down');
    expect(q.length).toBe(5);
    expect(logs.records().filter((r) => r.event === 'alerts.outbox_unreachable')).toHaveLength(1);
    fail = false;
    await q.flush();
    expect(written).toEqual([['t0', 't1'], ['t2', 't3'], ['t4']]);
    expect(q.length).toBe(0);
  });
});

describe('alert configuration', () => {
  it('refuses a global webhook without a signing secret, naming the variable', async () => {
    const { loadConfig, ConfigError } = await import('../../src/config/env.js');
    expect(() => loadConfig({ ALERT_WEBHOOK_URL: 'https://hooks.example/alerts' })).toThrow(ConfigError);
    try {
      loadConfig({ ALERT_WEBHOOK_URL: 'https://hooks.example/alerts' });
    } catch (err) {
      expect((err as InstanceType<typeof ConfigError>).problems).toEqual(['ALERT_WEBHOOK_SECRET: required when ALERT_WEBHOOK_URL is set']);
    }
    expect(loadConfig({ ALERT_WEBHOOK_URL: 'https://hooks.example/alerts', ALERT_WEBHOOK_SECRET: 'x' }).alertWebhookUrl).toBe('https://hooks.example/alerts');
  });
});

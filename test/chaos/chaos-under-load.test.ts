// Chaos under load. The whole server runs in-process against a Redis and a Postgres of the test's own, a fake
// Stripe and an alert webhook receiver, while Checks flow at a steady rate for four tenants (two per failure
// policy; metered calls and reads) and a settlement stream reports how the admitted metered requests ended
// (some failed upstream: refunds). Meanwhile, on a fixed timeline:
//   3 s Redis SIGKILLed, 5.5 s restarted (with its append-only file, as docker-compose.yml runs it); 8 s Redis
//   paused (SIGSTOP), 10 s resumed; 9–18 s the alert webhook receiver failing (503); 11–19 s Stripe failing
//   every call (5xx, dropped connections before and after recording); 11.5 s a fifth tenant, outside the load,
//   raises four alerts; 13–17 s Postgres stopped.
// Afterwards: no tenant passed its quota; every settled unit reached Stripe exactly once (Stripe = Redis's
// settled usage = Postgres's reported units, no identifier twice); every alert raised was delivered exactly
// once (a threshold crossed by an answer lost to a Redis timeout is never raised, as the README says); the
// server never restarted (same process, app alive, no unhandled rejection); every Check was answered by its
// tier's policy within Envoy's deadline. It prints what it saw.
import path from 'node:path';
import { isNull } from 'drizzle-orm';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alertOutbox, usageReports } from '../../src/db/schema.js';
import { DEGRADED_HEADER, type CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import type { HttpAccessLogEntryMessage } from '../../src/settlement/access-log-mapping.js';
import { AccessLogClient, entryFor } from '../helpers/access-log-client.js';
import { FakeStripe, seededRandom } from '../helpers/fake-stripe.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { canRunPostgres, canRunRedis, startOwnPostgres, startOwnRedis, type OwnPostgres, type OwnRedis } from '../helpers/own-services.js';
import { startWebhookReceiver, type WebhookReceiver } from '../helpers/webhook-receiver.js';

const TENANTS_FILE = path.resolve('test/fixtures/chaos/tenants.yaml');
const TENANTS = [
  { id: 'chaos_a1', key: 'ul_chaos_A1_KEY_0000001', customer: 'cus_chaos_a1', policy: 'allow' },
  { id: 'chaos_a2', key: 'ul_chaos_A2_KEY_0000001', customer: 'cus_chaos_a2', policy: 'allow' },
  { id: 'chaos_d1', key: 'ul_chaos_D1_KEY_0000001', customer: 'cus_chaos_d1', policy: 'deny' },
  { id: 'chaos_d2', key: 'ul_chaos_D2_KEY_0000001', customer: 'cus_chaos_d2', policy: 'deny' },
] as const;
type Tenant = (typeof TENANTS)[number];
/** chaos_probe: no load, four metered calls while the webhook receiver fails (quota 4, four thresholds). */
const PROBE_KEY = 'ul_chaos_PROBE_KEY_00001';
const QUOTA = 250;
const THRESHOLDS = [25, 50, 75, 100];
const ENVOY_DEADLINE_MS = 250;
const TICK_MS = 25; // per tick and tenant: a metered call half the time, a read a third of the time
const LOAD_S = 28;
const WINDOW_S = 2; // SETTLEMENT_WINDOW_SECONDS

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Sent {
  readonly tenant: Tenant;
  readonly metered: boolean;
  /** Which faults were active when the Check was sent. */
  readonly phase: string;
  ms: number;
  status: number;
  degraded: boolean;
  reserved: boolean;
  /** Past Envoy's deadline, counting only the time the Check waited, not event-loop stalls (see below). */
  late: boolean;
  /** Of `ms`, the time the shared event loop was stalled. */
  stalledMs: number;
  grpcError: string | null;
}

/**
 * The server and this test share one event loop; on a busy machine (or while the test spawns pg_ctl from a
 * large process) it stalls for a while, and every Check in flight is late by that much whatever the server
 * does. A 5 ms ticker records the stalls, so each Check's time can be split into waiting (which the failure
 * policies bound) and stalled (which nothing in the server can).
 */
class StallRecorder {
  private readonly ticks: number[] = [];
  private timer: NodeJS.Timeout | null = null;
  static readonly PERIOD_MS = 5;
  start(): void {
    this.ticks.push(performance.now());
    this.timer = setInterval(() => this.ticks.push(performance.now()), StallRecorder.PERIOD_MS);
  }
  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
  /** Milliseconds within [from, to] during which the loop was stalled past its tick. */
  within(from: number, to: number): number {
    let lo = 0;
    let hi = this.ticks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ticks[mid]! < from - 10_000) lo = mid + 1;
      else hi = mid;
    }
    let stalled = 0;
    for (let i = lo; i + 1 < this.ticks.length && this.ticks[i]! < to; i++) {
      const a = Math.max(from, this.ticks[i]! + StallRecorder.PERIOD_MS);
      const b = Math.min(to, this.ticks[i + 1]!);
      if (b > a) stalled += b - a;
    }
    return stalled;
  }
  maxGap(): number {
    let m = 0;
    for (let i = 1; i < this.ticks.length; i++) m = Math.max(m, this.ticks[i]! - this.ticks[i - 1]!);
    return m;
  }
}

const runnable = canRunRedis() && canRunPostgres();
describe.skipIf(!runnable)('chaos under load', () => {
  let redis: OwnRedis;
  let pg: OwnPostgres;
  let stripe: FakeStripe;
  let receiver: WebhookReceiver;
  let h: Harness;
  let logs: AccessLogClient;
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(err);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    process.on('uncaughtException', onUnhandled);
    [redis, pg, receiver] = await Promise.all([startOwnRedis({ appendOnly: true }), startOwnPostgres(), startWebhookReceiver()]);
    stripe = new FakeStripe({ meters: ['api_requests'] });
    await stripe.start();
    h = await startHarness({
      env: {
        DATABASE_URL: pg.url,
        REDIS_URL: redis.url,
        APPLY_ON_START: TENANTS_FILE,
        CHECK_TIMEOUT_MS: '100',
        STRIPE_SECRET_KEY: 'sk_test_chaos',
        STRIPE_API_BASE: stripe.url,
        STRIPE_TIMEOUT_MS: '800',
        USAGE_REPORT_INTERVAL_SECONDS: '1',
        SETTLEMENT_WINDOW_SECONDS: String(WINDOW_S),
        ALERT_WEBHOOK_URL: `${receiver.url}/alerts`,
        ALERT_WEBHOOK_SECRET: 'whsec_chaos_alerts',
        VIOLATION_ALERT_COUNT: '20',
        VIOLATION_ALERT_WINDOW_SECONDS: '60',
      },
      nowMs: Date.now(),
      realClock: true,
      app: {
        alerts: {
          tuning: { flushMs: 100, dispatchMs: 100, retryBaseMs: 100, retryCapMs: 500, sendTimeoutMs: 500, leaseMs: 3_000, violationFlushMs: 100 },
        },
      },
    });
    logs = new AccessLogClient(h.app.grpcPort);
  });

  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    process.off('uncaughtException', onUnhandled);
    redis?.resume();
    await pg?.resume().catch(() => {});
    logs?.close();
    await h?.stop();
    await Promise.all([stripe?.stop(), receiver?.close(), redis?.stop(), pg?.destroy()]);
  });

  it('holds every limit and loses or doubles nothing while Redis, Postgres, Stripe and webhooks fail', { timeout: 150_000 }, async () => {
    const pid = process.pid;
    const random = seededRandom(7_2025);
    const active = new Set<string>();
    const phase = () => (active.size === 0 ? 'steady' : [...active].sort().join('+'));
    const sent: Sent[] = [];
    const spans: Array<[Sent, number, number]> = [];
    const stalls = new StallRecorder();
    stalls.start();
    const refundsSent = new Map<string, number>(TENANTS.map((t) => [t.id, 0]));
    let pendingEntries: HttpAccessLogEntryMessage[] = [];
    let n = 0;

    const check = (tenant: Tenant, metered: boolean) => {
      const s: Sent = { tenant, metered, phase: phase(), ms: 0, status: 0, degraded: false, reserved: false, late: false, stalledMs: 0, grpcError: null };
      sent.push(s);
      const started = performance.now();
      h.checkHttp({ key: tenant.key, method: metered ? 'POST' : 'GET', path: metered ? '/verify' : '/usage', requestId: `chaos-${n++}` })
        .then(
          (res: CheckResponseMessage) => {
            s.status = httpStatus(res);
            s.degraded = res.ok_response?.headers.some((x) => x.header.key === DEGRADED_HEADER) ?? false;
            s.reserved = res.dynamic_metadata?.fields.reserved?.boolValue === true;
            if (s.reserved) {
              // How the upstream ended it: mostly fine, sometimes a 503 or no answer (a refund).
              const r = random();
              const code = r < 0.1 ? 503 : r < 0.13 ? 0 : 200;
              if (code !== 200) refundsSent.set(tenant.id, (refundsSent.get(tenant.id) ?? 0) + 1);
              pendingEntries.push(entryFor(res, code));
            }
          },
          (err: grpc.ServiceError) => {
            s.grpcError = grpc.status[err.code] ?? String(err.code);
          },
        )
        .finally(() => {
          const ended = performance.now();
          s.ms = ended - started;
          // Judged once the load is over: the stall that ends a Check is recorded after its callback ran.
          s.late = false;
          spans.push([s, started, ended]);
        });
    };
    // harness.checkHttp gives every call a 5 s deadline: lateness is judged against Envoy's 250 ms here.

    // The settlement stream, flushed like Envoy's (buffer_flush_interval), one stream per flush.
    let streaming = true;
    const settleLoop = (async () => {
      while (streaming || pendingEntries.length > 0) {
        await sleep(300);
        const batch = pendingEntries;
        pendingEntries = [];
        if (batch.length > 0) await logs.send([batch]).catch(() => {});
      }
    })();

    // The timeline of faults, in seconds from the start of the load.
    const timeline: Array<[number, string, () => Promise<void> | void]> = [
      [3, 'redis-killed', async () => { active.add('redis-killed'); await redis.kill(); }],
      // ioredis reconnects with a backoff (50 ms doubling, at most 2 s): until it has, Checks still get policy answers.
      [5.5, 'redis back', async () => { await redis.restart(); active.delete('redis-killed'); active.add('redis-reconnecting'); }],
      [8, 'redis-paused', () => { active.delete('redis-reconnecting'); active.add('redis-paused'); redis.pause(); }],
      [9, 'webhooks-failing', () => { active.add('webhooks-failing'); receiver.mode = 'fail'; }],
      [10, 'redis resumed', () => { redis.resume(); active.delete('redis-paused'); }],
      [11, 'stripe-failing', () => {
        active.add('stripe-failing');
        const r = seededRandom(11);
        stripe.setFaults(() => (r() < 0.5 ? { kind: 'status', status: 503 } : r() < 0.5 ? { kind: 'drop-before' } : { kind: 'drop-after' }));
      }],
      // Redis answers again and Postgres still does: alerts raised now meet the failing receiver.
      [11.5, 'probe alerts raised', async () => {
        for (let i = 0, reserved = 0; i < 20 && reserved < 4 && performance.now() - t0 < 12_500; i++) {
          const res = await h.checkHttp({ key: PROBE_KEY, method: 'POST', path: '/verify', requestId: `chaos-probe-${i}` });
          if (res.dynamic_metadata?.fields.reserved?.boolValue === true) reserved++;
        }
      }],
      [13, 'postgres-stopped', async () => { active.add('postgres-stopped'); await pg.stop(); }],
      [17, 'postgres back', async () => { await pg.start(); active.delete('postgres-stopped'); }],
      [18, 'webhooks back', () => { receiver.mode = 'ok'; active.delete('webhooks-failing'); }],
      [19, 'stripe back', () => { stripe.setFaults(null); active.delete('stripe-failing'); }],
    ];
    const events: string[] = [];
    const t0 = performance.now();
    const at = (s: number) => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    const chaos = (async () => {
      for (const [s, name, act] of timeline) {
        await sleep(Math.max(0, t0 + s * 1000 - performance.now()));
        await act();
        events.push(`${at(s)} ${name}`);
      }
    })();

    // Warm up (JIT, the key cache, the period's counters): one metered call and one read per tenant.
    for (const t of TENANTS) {
      for (const metered of [true, false]) {
        const res = await h.checkHttp({ key: t.key, method: metered ? 'POST' : 'GET', path: metered ? '/verify' : '/usage', requestId: `chaos-warm-${n++}` });
        sent.push({ tenant: t, metered, phase: 'warm-up', ms: 0, status: httpStatus(res), degraded: false, reserved: res.dynamic_metadata?.fields.reserved?.boolValue === true, late: false, stalledMs: 0, grpcError: null });
      }
    }

    // Steady load: every tick, each tenant sends a metered call half the time and a read a third of the time.
    const ticker = setInterval(() => {
      for (const t of TENANTS) {
        if (random() < 0.5) check(t, true);
        if (random() < 0.33) check(t, false);
      }
    }, TICK_MS);
    await sleep(LOAD_S * 1000);
    clearInterval(ticker);
    await chaos;
    // Every Check answered (each has its own 5 s gRPC deadline), every entry streamed.
    for (let i = 0; i < 100 && sent.some((s) => s.status === 0 && s.grpcError === null); i++) await sleep(50);
    streaming = false;
    await settleLoop;
    stalls.stop();
    for (const [s, from, to] of spans) {
      s.stalledMs = stalls.within(from, to);
      s.late = s.ms - s.stalledMs > ENVOY_DEADLINE_MS;
    }
    const loadEnded = performance.now();

    // Let the settlement window pass, then wait until Stripe holds exactly Redis's settled usage with
    // nothing in flight, and every alert is delivered.
    const period = new Date().toISOString().slice(0, 7);
    const settled = async (t: Tenant) => (await h.app.store.settledUsage(t.id, period, Date.now())).endpoints['/verify'];
    await sleep(WINDOW_S * 1000 + 500);
    let converged = false;
    for (let i = 0; i < 120 && !converged; i++) {
      const db = h.app.database.db;
      const pending = await db.select().from(usageReports).where(isNull(usageReports.pendingIdentifier)).then(
        async (done) => (await db.select().from(usageReports)).length - done.length,
      );
      const undelivered = (await db.select().from(alertOutbox).where(isNull(alertOutbox.deliveredAt))).length;
      const totals = stripe.totalsByCustomer();
      const billed = await Promise.all(TENANTS.map(async (t) => (totals.get(t.customer) ?? 0) === (await settled(t))?.settled));
      // backlog() counts the alert queue too: alerts raised while Postgres was down wait there.
      const alertsWaiting = await h.app.alerts.backlog();
      converged = pending === 0 && undelivered === 0 && alertsWaiting === 0 && billed.every(Boolean);
      if (!converged) await sleep(250);
    }
    const convergedS = (performance.now() - loadEnded) / 1000;

    // ---- what it saw ---------------------------------------------------------------------------------------
    const totals = stripe.totalsByCustomer();
    const reported = await h.app.database.db.select().from(usageReports);
    const rows = await h.app.database.db.select().from(alertOutbox);
    const ok = receiver.received.filter((r) => r.status >= 200 && r.status < 300);
    const perTenant = await Promise.all(
      TENANTS.map(async (t) => {
        const mine = sent.filter((s) => s.tenant === t);
        const allowedMetered = mine.filter((s) => s.metered && s.reserved).length;
        const u = await settled(t);
        return {
          tenant: t.id,
          policy: t.policy,
          allowedMetered,
          refundsSent: refundsSent.get(t.id) ?? 0,
          degraded: mine.filter((s) => s.degraded).length,
          unavailable: mine.filter((s) => s.status === 503).length,
          denied429: mine.filter((s) => s.status === 429).length,
          redisUsed: u?.used ?? 0,
          redisSettled: u?.settled ?? 0,
          stripe: totals.get(t.customer) ?? 0,
          postgres: reported.filter((r) => r.tenantId === t.id).reduce((a, r) => a + r.reportedUnits, 0),
          // dedupe keys read threshold:<tenant>:<endpoint>:<period>:<percent>:<target>
          thresholds: rows.filter((r) => r.tenantId === t.id && r.dedupeKey.startsWith('threshold:')).map((r) => Number(r.dedupeKey.split(':')[4])),
        };
      }),
    );
    const phases = [...new Set(sent.map((s) => s.phase))];
    const lat = (xs: Sent[], p: number) => {
      const v = xs.map((s) => s.ms).sort((a, b) => a - b);
      return v.length ? v[Math.min(v.length - 1, Math.floor(p * v.length))]!.toFixed(0) : '-';
    };
    const table = (head: string[], body: Array<Array<string | number>>) => {
      const cells = [head, ...body.map((r) => r.map(String))];
      const widths = head.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
      return cells.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
    };
    console.info(
      [
        `chaos: ${sent.length} Checks over ${LOAD_S} s (${(sent.length / LOAD_S).toFixed(0)}/s), converged ${convergedS.toFixed(1)} s after the load`,
        `timeline: ${events.join(', ')}`,
        table(
          ['phase', 'checks', '200', 'degraded', '429', '503', 'grpc err', 'late', 'p50 ms', 'p99 ms', 'max ms', 'max waited ms'],
          phases.map((p) => {
            const xs = sent.filter((s) => s.phase === p);
            return [p, xs.length, xs.filter((s) => s.status === 200 && !s.degraded).length, xs.filter((s) => s.degraded).length, xs.filter((s) => s.status === 429).length, xs.filter((s) => s.status === 503).length, xs.filter((s) => s.grpcError).length, xs.filter((s) => s.late).length, lat(xs, 0.5), lat(xs, 0.99), lat(xs, 1), Math.max(...xs.map((s) => s.ms - s.stalledMs)).toFixed(0)];
          }),
        ),
        table(
          ['tenant', 'policy', 'allowed metered', 'refunds sent', 'redis used', 'quota', 'settled', 'stripe', 'postgres', 'degraded', '503', '429', 'thresholds'],
          perTenant.map((t) => [t.tenant, t.policy, t.allowedMetered, t.refundsSent, t.redisUsed, QUOTA, t.redisSettled, t.stripe, t.postgres, t.degraded, t.unavailable, t.denied429, t.thresholds.sort((a, b) => a - b).join(',')]),
        ),
        `event loop (shared by server and test): longest stall ${stalls.maxGap().toFixed(0)} ms; Checks past ${ENVOY_DEADLINE_MS} ms in all ${sent.filter((s) => s.ms > ENVOY_DEADLINE_MS).length}, of it waiting ${sent.filter((s) => s.late).length}`,
        `settlement: ${JSON.stringify(h.app.billing.settlement.stats)}`,
        `stripe: ${stripe.accepted.length} events accepted, ${stripe.count('fault')} calls failed on purpose, ${stripe.count('duplicate')} duplicates answered, ${stripe.count('replayed')} idempotent replays`,
        `alerts: raised ${JSON.stringify(h.app.alerts.stats.raised)}, ${rows.length} outbox rows, ${receiver.received.length} webhook attempts, ${ok.length} delivered (${ok.length - new Set(ok.map((r) => (JSON.parse(r.body) as { id: string }).id)).size} again after a lost mark)`,
      ].join('\n'),
    );

    // ---- what must hold ------------------------------------------------------------------------------------
    expect(converged, 'Stripe, Redis and the alert outbox never converged').toBe(true);
    // The server never restarted and is healthy.
    expect(process.pid).toBe(pid);
    expect(unhandled.map(String)).toEqual([]);
    expect((await fetch(`http://127.0.0.1:${h.app.httpPort}/readyz`)).status).toBe(200);
    // Every Check answered, by its tier's policy, within Envoy's deadline.
    expect(sent.filter((s) => s.grpcError !== null).map((s) => `${s.phase}: ${s.grpcError}`)).toEqual([]);
    // In time: no Check waited past Envoy's deadline (event-loop stalls set apart, see StallRecorder).
    expect(sent.filter((s) => s.late).map((s) => `${s.tenant.id} ${s.phase}: ${s.ms.toFixed(0)} ms, ${s.stalledMs.toFixed(0)} stalled`)).toEqual([]);
    for (const t of perTenant) {
      if (t.policy === 'allow') expect(t.unavailable, `${t.tenant} (allow) answered 503`).toBe(0);
      else expect(t.degraded, `${t.tenant} (deny) passed degraded`).toBe(0);
    }
    expect(perTenant.filter((t) => t.policy === 'allow').every((t) => t.degraded > 0)).toBe(true);
    expect(perTenant.filter((t) => t.policy === 'deny').every((t) => t.unavailable > 0)).toBe(true);
    // (A Check whose Redis call outlasts CHECK_TIMEOUT_MS in a stall gets its policy answer with no fault on:
    // that is the policy too, so policy answers outside the fault phases are counted above, not forbidden.)
    // No tenant passed its quota: what Redis holds is within it, and so is what the test saw admitted
    // less the refunds it asked for (a refund whose entry met a Redis outage stands, so Redis may hold more).
    for (const t of perTenant) {
      expect(t.redisUsed, t.tenant).toBeLessThanOrEqual(QUOTA);
      expect(t.allowedMetered - t.refundsSent, t.tenant).toBeLessThanOrEqual(QUOTA);
      expect(t.redisUsed, `${t.tenant}: an admitted reservation was lost`).toBeGreaterThanOrEqual(t.allowedMetered - t.refundsSent);
      expect(t.denied429, `${t.tenant} never reached its quota`).toBeGreaterThan(0);
    }
    // Every settled unit reached Stripe exactly once, and Postgres agrees.
    for (const t of perTenant) expect({ tenant: t.tenant, stripe: t.stripe, postgres: t.postgres }).toEqual({ tenant: t.tenant, stripe: t.redisSettled, postgres: t.redisSettled });
    const ids = stripe.accepted.map((a) => a.event.identifier);
    expect(new Set(ids).size).toBe(ids.length);
    // Every alert raised was delivered exactly once: thresholds once per tenant and percent, each event id
    // answered 2xx once, nothing left in the outbox.
    const raised = h.app.alerts.stats.raised;
    expect(rows.length).toBe(raised.threshold + raised.repeated_violations);
    for (const t of perTenant) expect(new Set(t.thresholds).size, `${t.tenant} thresholds ${t.thresholds.join(',')}`).toBe(t.thresholds.length);
    // (A threshold crossed by a reservation whose answer was lost to a Redis timeout sets its flag but raises
    // nothing, and is not raised again: README "Failure policies". So not every tenant need show all four.)
    const deliveredIds = ok.map((r) => (JSON.parse(r.body) as { id: string }).id);
    // Every row delivered. At least once, with one event id per alert (README "Alerts"): a delivery mark lost
    // to the Postgres crash (its query given up at the handle's deadline) sends the row again after its lease.
    expect(new Set(deliveredIds).size).toBe(rows.length);
    expect(new Set(rows.map((r) => (r.payload as { id: string }).id))).toEqual(new Set(deliveredIds));
    // The outage was felt: the probe's alerts, raised while the receiver failed, met it.
    expect(receiver.received.some((r) => r.status === 503)).toBe(true);
    expect(stripe.count('fault')).toBeGreaterThan(0);
    for (const t of perTenant) expect(THRESHOLDS).toEqual(expect.arrayContaining(t.thresholds));
  });
});

// Graceful shutdown of the real process: Checks in flight when SIGTERM arrives (held up by a paused Redis of
// the test's own) all get their answers; the server stops serving at once (readiness, gRPC health), drains,
// flushes the alert queue to the outbox after the drain, closes everything and exits 0.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canRunRedis, startOwnRedis, type OwnRedis } from '../helpers/own-services.js';
import { checker, startServerProcess, type Checker, type ServerProcess } from '../helpers/server-process.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';
import { startWebhookReceiver, type WebhookReceiver } from '../helpers/webhook-receiver.js';

const services = canRunRedis() && (await hasPostgres());
const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');
const LENIENT = 'ul_test_LENIENT_KEY_0001';
const STRICT = 'ul_test_STRICT_KEY_00001';

function healthStatus(port: number): Promise<string> {
  const Client = grpc.makeClientConstructor(healthService, 'grpc.health.v1.Health');
  const c = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    check: (req: unknown, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: { status: string | number }) => void) => void;
  };
  return new Promise((resolve) => {
    c.check({ service: '' }, { deadline: Date.now() + 1000 }, (err, res) => {
      c.close();
      resolve(err ? `error ${err.code}` : String(res.status));
    });
  });
}

interface Outcome {
  ok: boolean;
  status?: number;
  degraded?: boolean;
  error?: string;
}

async function fire(c: Checker, key: string, method: string, p: string): Promise<Outcome> {
  try {
    const res = await c.check({ key, method, path: p, deadlineMs: 8_000 });
    const upstream = (res.ok_response?.headers ?? []).map((h) => `${h.header.key}=${h.header.value}`);
    return { ok: true, status: res.denied_response ? 0 : 200, degraded: upstream.includes('x-usage-limiter-degraded=true') };
  } catch (err) {
    return { ok: false, error: (err as grpc.ServiceError).details ?? String(err) };
  }
}

describe.skipIf(!services)('graceful shutdown (SIGTERM to the real process)', () => {
  let redis: OwnRedis;
  let receiver: WebhookReceiver;
  let db: { url: string; drop: () => Promise<void> };
  let env: Record<string, string>;
  const started: ServerProcess[] = [];

  beforeAll(async () => {
    redis = await startOwnRedis();
    receiver = await startWebhookReceiver();
    receiver.mode = 'fail';
    db = await createTestDatabase('shutdown');
    env = {
      DATABASE_URL: db.url,
      REDIS_URL: redis.url,
      APPLY_ON_START: TENANTS,
      // Long enough that Checks are still waiting on the paused Redis when SIGTERM arrives.
      CHECK_TIMEOUT_MS: '2000',
      SHUTDOWN_GRACE_SECONDS: '10',
      ALERT_WEBHOOK_URL: `${receiver.url}/alerts`,
      ALERT_WEBHOOK_SECRET: 'whsec_shutdown',
      VIOLATION_ALERT_COUNT: '50',
    };
  });

  afterAll(async () => {
    for (const s of started) await s.terminate();
    redis?.resume();
    await redis?.stop();
    await receiver?.close();
    await db?.drop();
  });

  it('answers every Check in flight, flushes alerts after the drain, closes and exits 0', async () => {
    const server = await startServerProcess(env);
    started.push(server);
    const c = checker(server.grpcPort);
    expect((await fire(c, STRICT, 'POST', '/verify')).status).toBe(200); // warm: key cached, period counters exist
    expect((await fire(c, LENIENT, 'POST', '/other')).status).toBe(200);

    redis.pause();
    // 100 metered Checks of a tenant with 9 units left (thresholds 50% and 100% cross, then 91 denials)
    // and 100 reads, all waiting on Redis.
    const inflight = [
      ...Array.from({ length: 100 }, () => fire(c, STRICT, 'POST', '/verify')),
      ...Array.from({ length: 100 }, () => fire(c, LENIENT, 'GET', '/usage')),
    ];
    await new Promise((r) => setTimeout(r, 300));
    const termAt = performance.now();
    server.child.kill('SIGTERM');
    // Not serving from the first moment: readiness and gRPC health say so while the drain runs.
    await new Promise((r) => setTimeout(r, 100));
    const ready = await fetch(`http://127.0.0.1:${server.httpPort}/readyz`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { checks: { serving: string } }).checks.serving).toBe('not serving');
    // NOT_SERVING, or no new call accepted at all (14 UNAVAILABLE): the listener is closed and open
    // connections got a GOAWAY, so Envoy sends new Checks to other replicas.
    expect(['NOT_SERVING', 'error 14']).toContain(await healthStatus(server.grpcPort));

    // Redis comes back while the server drains: the held Checks complete normally.
    await new Promise((r) => setTimeout(r, 400));
    redis.resume();
    const outcomes = await Promise.all(inflight);
    const code = await server.exited();
    const shutdownMs = performance.now() - termAt;
    c.close();

    expect(outcomes.filter((o) => !o.ok)).toEqual([]);
    const metered = outcomes.slice(0, 100);
    expect(metered.filter((o) => o.status === 200)).toHaveLength(9);
    expect(metered.filter((o) => o.status === 0)).toHaveLength(91);
    expect(outcomes.slice(100).filter((o) => o.status === 200)).toHaveLength(5);
    expect(outcomes.every((o) => !o.degraded)).toBe(true);
    expect(code).toBe(0);
    console.log(`SIGTERM with 200 Checks in flight: all answered, exited 0 after ${shutdownMs.toFixed(0)} ms`);

    const msgs = server.records().map((r) => String(r.msg));
    const at = (m: string) => msgs.indexOf(m);
    expect(at('signal received')).toBeGreaterThan(-1);
    expect(at('shutting down: not serving, draining in-flight Checks')).toBeGreaterThan(at('signal received'));
    expect(at('shutdown complete')).toBe(msgs.length - 1);

    // The alerts raised by the drained Checks were written to the outbox before the database closed.
    const sql = postgres(db.url, { max: 1 });
    const rows = await sql<{ dedupe_key: string; delivered_at: Date | null }[]>`select dedupe_key, delivered_at from alert_outbox order by dedupe_key`;
    await sql.end();
    // 2 thresholds crossed by the strict tenant's drained Checks; 91 and 95 denials of the two tenants, each
    // over VIOLATION_ALERT_COUNT (50): one repeated-violations alert per tenant.
    expect(rows.map((r) => r.dedupe_key)).toEqual([
      expect.stringMatching(/^threshold:tenant_strict:\/verify:\d{4}-\d\d:100:global$/),
      expect.stringMatching(/^threshold:tenant_strict:\/verify:\d{4}-\d\d:50:global$/),
      expect.stringMatching(/^violations:tenant_lenient:\d+:global$/),
      expect.stringMatching(/^violations:tenant_strict:\d+:global$/),
    ]);
  }, 60_000);

  it('with Redis still hung at SIGTERM: the Checks in flight get their policy answers, then it exits', async () => {
    const server = await startServerProcess(env);
    started.push(server);
    const c = checker(server.grpcPort);
    expect((await fire(c, LENIENT, 'POST', '/other')).status).toBe(200);
    expect((await fire(c, STRICT, 'POST', '/other')).status).toBe(200);
    redis.pause();
    try {
      const inflight = [
        ...Array.from({ length: 50 }, () => fire(c, LENIENT, 'GET', '/usage')),
        ...Array.from({ length: 50 }, () => fire(c, STRICT, 'GET', '/usage')),
      ];
      await new Promise((r) => setTimeout(r, 200));
      const termAt = performance.now();
      server.child.kill('SIGTERM');
      const outcomes = await Promise.all(inflight);
      const code = await server.exited();
      const shutdownMs = performance.now() - termAt;
      c.close();
      expect(outcomes.filter((o) => !o.ok)).toEqual([]);
      // CHECK_TIMEOUT_MS (2 s) after they started, each tier's policy answered.
      expect(outcomes.slice(0, 50).every((o) => o.status === 200 && o.degraded)).toBe(true);
      expect(outcomes.slice(50).every((o) => o.status === 0)).toBe(true);
      expect(code).toBe(0);
      console.log(`SIGTERM with Redis hung: 100 in-flight Checks answered by policy, exited 0 after ${shutdownMs.toFixed(0)} ms`);
    } finally {
      redis.resume();
    }
  }, 60_000);
});

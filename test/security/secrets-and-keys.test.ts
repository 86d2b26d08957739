// Security properties of the running server (README "Threat model"), with every secret set and the server
// driven through all its doors, while a Redis and a Postgres of the test's own record every command and
// every SQL statement with its parameters:
// - API keys are only ever looked up by their SHA-256: the key cache and the directory see hashes only, no
//   SQL statement and no Redis command carries a plaintext key, and the database holds hashes and short
//   display prefixes only. So no comparison ever runs over a secret, and nothing leaks through its timing.
// - No secret (API keys, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, ALERT_WEBHOOK_SECRET, the password in
//   DATABASE_URL) appears in a log line, in /metrics, in any answer (gRPC denials, HTTP bodies and headers),
//   or in an alert webhook, through normal traffic, failures of Redis, Postgres, Stripe and the webhook
//   receiver, forged webhooks and shutdown.
// - Log injection through header values and paths is impossible: every line stays one JSON object, and what
//   a client sent stays inside the field it went to.
// - A request body in a CheckRequest (Envoy never sends one: envoy/envoy.yaml has no with_request_body, see
//   test/deploy) is ignored: same decision, never logged.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import postgres from 'postgres';
import Stripe from 'stripe';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import { hashApiKey } from '../../src/core/api-key.js';
import { normalizePath } from '../../src/core/path.js';
import type { CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { canRunPostgres, canRunRedis, startOwnPostgres, startOwnRedis, type OwnPostgres, type OwnRedis } from '../helpers/own-services.js';
import { startWebhookReceiver, type WebhookReceiver } from '../helpers/webhook-receiver.js';

const TENANTS = path.resolve('test/fixtures/security/tenants.yaml');
const KEY_A = 'ul_sec_PLAINTEXT_KEY_A_001';
const KEY_A2 = 'ul_sec_PLAINTEXT_KEY_A_002';
const KEY_B = 'ul_sec_PLAINTEXT_KEY_B_001'; // suspended tenant
const UNKNOWN = 'ul_sec_PLAINTEXT_UNKNOWN_01';
const SECRETS = {
  apiKeyA: KEY_A,
  apiKeyA2: KEY_A2,
  apiKeyB: KEY_B,
  unknownKey: UNKNOWN,
  stripeSecretKey: 'sk_test_SECRETstripeKey0123456789',
  stripeWebhookSecret: 'whsec_SECRETwebhook0123456789',
  alertWebhookSecret: 'SECRETalertWebhook0123456789',
  databasePassword: 'Pg-SECRET-Pass-0123456789',
};
const BODY_MARKER = 'BODY_MARKER_never_read_4242424242424242';

const runnable = canRunRedis() && canRunPostgres();
describe.skipIf(!runnable)('secrets, keys and logs', () => {
  let redis: OwnRedis;
  let pg: OwnPostgres;
  let stripe: FakeStripe;
  let receiver: WebhookReceiver;
  let h: Harness;
  let monitor: Redis;
  const redisCommands: string[] = [];
  /** Everything the server sent to anyone but Stripe and Postgres: answers, scrapes, webhooks. */
  const emitted: string[] = [];
  const cacheArgs: string[] = [];

  beforeAll(async () => {
    [redis, pg, receiver] = await Promise.all([startOwnRedis(), startOwnPostgres(), startWebhookReceiver()]);
    const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
    await admin.unsafe(`ALTER SYSTEM SET log_statement = 'all'`);
    await admin.unsafe('SELECT pg_reload_conf()');
    await admin.end();
    monitor = new Redis(redis.url, { retryStrategy: () => null });
    monitor.on('error', () => {});
    const m = await monitor.monitor();
    m.on('error', () => {});
    m.on('monitor', (_time: string, args: string[]) => redisCommands.push(args.join(' ')));
    stripe = new FakeStripe();
    await stripe.start();
    // Stripe fails now and then, so usage reports log their failures too.
    stripe.failRandomly(0.5, 3, [{ kind: 'status', status: 500 }, { kind: 'drop-before' }]);
    receiver.mode = 'fail';
    const dbUrl = new URL(pg.url);
    dbUrl.password = SECRETS.databasePassword; // trust auth: accepted, and now part of the configuration
    h = await startHarness({
      env: {
        DATABASE_URL: dbUrl.toString(),
        REDIS_URL: redis.url,
        APPLY_ON_START: TENANTS,
        LOG_LEVEL: 'debug',
        CHECK_TIMEOUT_MS: '100',
        STRIPE_SECRET_KEY: SECRETS.stripeSecretKey,
        STRIPE_WEBHOOK_SECRET: SECRETS.stripeWebhookSecret,
        STRIPE_API_BASE: stripe.url,
        STRIPE_TIMEOUT_MS: '500',
        USAGE_REPORT_INTERVAL_SECONDS: '1',
        SETTLEMENT_WINDOW_SECONDS: '1',
        ALERT_WEBHOOK_URL: `${receiver.url}/alerts`,
        ALERT_WEBHOOK_SECRET: SECRETS.alertWebhookSecret,
        VIOLATION_ALERT_COUNT: '3',
      },
      nowMs: Date.now(),
      realClock: true,
      app: { alerts: { tuning: { flushMs: 50, dispatchMs: 50, retryBaseMs: 50, retryCapMs: 200, sendTimeoutMs: 500, violationFlushMs: 50 } } },
    });
    const cache = h.app.keyCache;
    const peek = cache.peek.bind(cache);
    const load = cache.load.bind(cache);
    cache.peek = (hash: string) => (cacheArgs.push(hash), peek(hash));
    cache.load = (hash: string) => (cacheArgs.push(hash), load(hash));
  });

  afterAll(async () => {
    redis?.resume();
    monitor?.disconnect();
    await h?.stop().catch(() => {});
    await Promise.all([stripe?.stop(), receiver?.close(), redis?.stop(), pg?.destroy()]);
  });

  const check = async (req: unknown): Promise<CheckResponseMessage> => {
    const res = await h.check(req);
    emitted.push(JSON.stringify(res));
    return res;
  };
  const ask = (o: { key?: string; method?: string; path?: string; requestId?: string; headers?: Array<[string, string]> }) =>
    check(buildCheckRequest({ key: o.key, method: o.method ?? 'GET', path: o.path ?? '/usage', target: '', headers: o.headers ?? [], requestId: o.requestId, timeoutMs: 0 }));
  const http = async (p: string, init?: RequestInit): Promise<Response> => {
    const res = await fetch(`http://127.0.0.1:${h.app.httpPort}${p}`, init);
    const body = await res.text();
    emitted.push(`${res.status} ${JSON.stringify([...res.headers])} ${body}`);
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const until = async (what: string, cond: () => boolean | Promise<boolean>, ms = 10_000) => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  it('drives every door, through failures, with secrets set', { timeout: 60_000 }, async () => {
    // Checks: allowed (both key headers), every denial, metered up to the quota (thresholds, alerts).
    expect(httpStatus(await ask({ key: KEY_A }))).toBe(200);
    expect(httpStatus(await ask({ headers: [['authorization', `Bearer ${KEY_A2}`]], method: 'POST', path: '/verify' }))).toBe(200);
    expect(httpStatus(await ask({ key: KEY_B }))).toBe(403);
    expect(httpStatus(await ask({ key: UNKNOWN }))).toBe(401);
    expect(httpStatus(await ask({}))).toBe(401);
    expect(httpStatus(await ask({ key: `${KEY_A} trailing` }))).toBe(401);
    for (let i = 0; i < 5; i++) await ask({ key: KEY_A, method: 'POST', path: '/verify' });
    // Reads past the limit log a warning with the (client-written) path.
    for (let i = 0; i < 6; i++) await ask({ key: KEY_A2, path: `/usage/${i}` });

    // /v1/usage by key, by a bad key, by an untrusted tenant header.
    expect((await http('/v1/usage', { headers: { 'x-api-key': KEY_A } })).status).toBe(200);
    expect((await http('/v1/usage', { headers: { authorization: `Bearer ${UNKNOWN}` } })).status).toBe(401);
    expect((await http('/v1/usage', { headers: { 'x-tenant-id': 'sec_a' } })).status).toBe(401);
    // Stripe webhooks: missing and forged signatures, then a real one.
    const event = JSON.stringify({ id: 'evt_sec_1', object: 'event', type: 'invoice.paid', created: Math.floor(Date.now() / 1000), data: { object: {} } });
    expect((await http('/webhooks/stripe', { method: 'POST', body: event })).status).toBe(400);
    const forged = Stripe.webhooks.generateTestHeaderString({ payload: event, secret: 'whsec_not_the_secret' });
    expect((await http('/webhooks/stripe', { method: 'POST', body: event, headers: { 'stripe-signature': forged } })).status).toBe(400);
    const real = Stripe.webhooks.generateTestHeaderString({ payload: event, secret: SECRETS.stripeWebhookSecret });
    expect((await http('/webhooks/stripe', { method: 'POST', body: event, headers: { 'stripe-signature': real } })).status).toBe(200);
    await http('/metrics');
    await http('/healthz');
    await http('/readyz');

    // Alerts fail to deliver (the receiver answers 503), then do; usage reports fail, then go through.
    await until('a failed alert delivery', () => receiver.received.length > 0);
    receiver.mode = 'ok';
    await until('an alert delivered', () => receiver.received.some((r) => r.status === 204));
    await until('a usage report', () => stripe.accepted.length > 0);

    // Redis fails: policy answers, error lines, /readyz says why.
    await redis.kill();
    await ask({ key: KEY_A, method: 'POST', path: '/verify' });
    await http('/readyz');
    await http('/v1/usage', { headers: { 'x-api-key': KEY_A } });
    await redis.restart();
    // Postgres fails: a key not cached yet gets 503, /readyz and /v1/usage say why.
    await pg.stop();
    await ask({ key: 'ul_sec_PLAINTEXT_COLD_KEY_1' });
    await http('/readyz');
    await http('/v1/usage', { headers: { 'x-api-key': 'ul_sec_PLAINTEXT_COLD_KEY_2' } });
    await pg.start();
    await until('Postgres answering again', async () => (await http('/readyz')).status === 200);
    await http('/metrics');
    for (const r of receiver.received) emitted.push(`${JSON.stringify(r.headers)} ${r.body}`);
  });

  it('looks keys up by their SHA-256 only: cache, SQL and Redis never see a plaintext key', () => {
    const presented = [KEY_A, KEY_A2, KEY_B, UNKNOWN, 'ul_sec_PLAINTEXT_COLD_KEY_1', 'ul_sec_PLAINTEXT_COLD_KEY_2'];
    const hashes = new Set(presented.map(hashApiKey));
    expect(cacheArgs.length).toBeGreaterThan(10);
    for (const arg of cacheArgs) {
      expect(arg).toMatch(/^[0-9a-f]{64}$/);
      expect(hashes.has(arg), `looked up ${arg}, not the hash of a presented key`).toBe(true);
    }
    expect(hashApiKey(KEY_A)).toBe(createHash('sha256').update(KEY_A).digest('hex'));

    const sqlLog = readFileSync(pg.logFile, 'utf8');
    expect(sqlLog).toContain('api_keys'); // the log did capture the lookups...
    expect(sqlLog).toContain(hashApiKey(UNKNOWN)); // ...with their parameters: the hash
    const redisLog = redisCommands.join('\n');
    expect(redisLog.toLowerCase()).toContain('evalsha');
    for (const key of presented) {
      expect(sqlLog.includes(key), `plaintext key in a SQL statement or parameter`).toBe(false);
      expect(redisLog.includes(key), `plaintext key in a Redis command`).toBe(false);
    }
  });

  it('stores hashes and short display prefixes only', async () => {
    const rows = await h.app.database.db.execute<Record<string, unknown>>(
      // Every column of every key row, as text: nothing may hold a key.
      'select to_jsonb(k)::text as row from api_keys k' as unknown as never,
    );
    const list = (Array.isArray(rows) ? rows : (rows as { rows: Array<Record<string, unknown>> }).rows) as Array<{ row: string }>;
    expect(list.length).toBe(3);
    for (const key of [KEY_A, KEY_A2, KEY_B]) {
      const row = list.find((r) => r.row.includes(hashApiKey(key)));
      expect(row, `a row with the hash of ${key.slice(0, 10)}…`).toBeDefined();
      expect(list.some((r) => r.row.includes(key))).toBe(false);
      const prefix = (JSON.parse(row!.row) as { key_prefix: string }).key_prefix;
      expect(key.startsWith(prefix)).toBe(true);
      expect(prefix.length).toBeLessThanOrEqual(Math.min(10, key.length / 3));
    }
  });

  it('leaks no secret into logs, /metrics, answers or webhooks', async () => {
    await h.stop(); // the shutdown lines too
    const lines = h.logs.lines;
    expect(lines.some((l) => l.includes('alerts.delivery'))).toBe(true);
    expect(lines.some((l) => l.includes('check.dependency_failed'))).toBe(true);
    expect(lines.some((l) => l.includes('usage.report_failed') || l.includes('usage.report_flush'))).toBe(true);
    expect(lines.some((l) => l.includes('stripe.webhook_rejected'))).toBe(true);
    const everything = [...lines, ...emitted];
    for (const [name, secret] of Object.entries(SECRETS)) {
      const hits = everything.filter((l) => l.includes(secret));
      expect(hits.map((l) => l.slice(0, 300)), `${name} leaked`).toEqual([]);
    }
    // The start-up line shows the configuration, masked.
    const started = h.logs.records().find((r) => r.msg === 'starting usage-limiter') as { config: Record<string, unknown> };
    expect(['***', '[redacted]']).toContain(started.config.stripeSecretKey);
    expect(['***', '[redacted]']).toContain(started.config.stripeWebhookSecret);
    expect(['***', '[redacted]']).toContain(started.config.alertWebhookSecret);
    expect(String(started.config.databaseUrl)).toMatch(/\*\*\*|\[redacted\]/);
  });
});

describe.skipIf(!runnable)('log injection and request bodies', () => {
  let redis: OwnRedis;
  let h: Harness;
  let pg: OwnPostgres;

  beforeAll(async () => {
    [redis, pg] = await Promise.all([startOwnRedis(), startOwnPostgres()]);
    h = await startHarness({
      env: { DATABASE_URL: pg.url, REDIS_URL: redis.url, APPLY_ON_START: TENANTS, LOG_LEVEL: 'debug' },
      nowMs: Date.now(),
      realClock: true,
    });
  });

  afterAll(async () => {
    await h?.stop();
    await Promise.all([redis?.stop(), pg?.destroy()]);
  });

  const FORGED = '{"level":60,"forged":true,"msg":"pwned"}';
  const req = (o: { key?: string; method?: string; path: string; requestId?: string; body?: boolean }) => {
    const r = buildCheckRequest({ key: o.key, method: o.method ?? 'GET', path: o.path, target: '', headers: [], requestId: o.requestId, timeoutMs: 0 }) as {
      attributes: { request: { http: Record<string, unknown> } };
    };
    if (o.body) {
      r.attributes.request.http.body = `{"secret":"${BODY_MARKER}"}`;
      r.attributes.request.http.raw_body = Buffer.from(BODY_MARKER);
    }
    return r;
  };

  it('keeps every log line one JSON object, whatever clients put in ids, paths and keys', async () => {
    const injections = [
      `/x%0A${encodeURIComponent(FORGED)}`,
      `/x\n${FORGED}`,
      `/x\r\n${FORGED}`,
      `/x"},"forged":true,"y":{"`,
      '/x\u2028\u2029\u0000\u001b[31m',
      `/x%22%2C%22forged%22%3Atrue%2C%22y%22%3A%22`,
    ];
    const ids = [`"},"forged":true,"a":"`, `${FORGED.replace(/ /g, '')}`, 'id\nforged', 'id\r\n{"forged":true}'];
    // Past the read limit (3 a minute), each read logs a warning carrying its path.
    for (let i = 0; i < 4; i++) await h.check(req({ key: KEY_A, path: '/warmup' }));
    for (const [i, p] of injections.entries()) {
      await h.check(req({ key: KEY_A, path: p, requestId: ids[i % ids.length] }));
      await h.check(req({ key: `${KEY_A}\n${FORGED}`, path: p, requestId: ids[(i + 1) % ids.length] }));
      await h.check(req({ method: `GET\n${FORGED}`, path: p, requestId: ids[(i + 2) % ids.length] }));
    }
    const warnings = h.logs.records().filter((r) => r.msg === '[billing] GET rate limit exceeded');
    expect(warnings.length).toBeGreaterThanOrEqual(injections.length);
    for (const line of h.logs.lines) {
      const rec = JSON.parse(line) as unknown; // one object per line, or this throws
      expect(typeof rec === 'object' && rec !== null && !Array.isArray(rec), line).toBe(true);
      expect(Object.keys(rec as object)).not.toContain('forged');
      expect(typeof (rec as { level: unknown }).level).toBe('number');
    }
    // What the client wrote is still there, as the value of the field it went to: each warning names its own
    // request's path, also when the denial was answered from DENY_MEMORY_MS's memory (regression: it named
    // the path of the request that was first denied).
    expect(warnings.slice(1).map((w) => w.endpoint)).toEqual(injections.map((p) => normalizePath(p)));
    expect(warnings.some((w) => String(w.endpoint).includes('\n{"level":60,"forged":true'))).toBe(true);
    expect(warnings.some((w) => String(w.endpoint).includes('"},"forged":true,"y":{"'))).toBe(true);
  });

  it('ignores a request body: same decision, never logged', async () => {
    const plain = await h.check(req({ key: KEY_A2, method: 'POST', path: '/other' }));
    const withBody = await h.check(req({ key: KEY_A2, method: 'POST', path: '/other', body: true }));
    const strip = (r: CheckResponseMessage) => ({ ...r, dynamic_metadata: { fields: { ...r.dynamic_metadata?.fields, request_id: undefined } } });
    expect(strip(withBody)).toEqual(strip(plain));
    const deniedPlain = await h.check(req({ key: UNKNOWN, method: 'POST', path: '/verify' }));
    const deniedBody = await h.check(req({ key: UNKNOWN, method: 'POST', path: '/verify', body: true }));
    expect(deniedBody.status).toEqual(deniedPlain.status);
    expect(JSON.stringify(deniedBody)).not.toContain(BODY_MARKER);
    expect(h.logs.lines.some((l) => l.includes(BODY_MARKER))).toBe(false);
  });
});

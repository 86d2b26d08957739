// Failure policies with real outages: a Redis and a Postgres of the test's own, killed, paused (SIGSTOP)
// and restarted under a running server. Every answer must arrive within Envoy's deadline (250 ms, as in
// envoy/envoy.yaml, with the server's CHECK_TIMEOUT_MS at its 100 ms default), follow the tier's policy,
// and normal enforcement must come back by itself when the dependency does.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import { DEGRADED_HEADER, type CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { createKey } from '../../src/keys/key-admin.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { httpStatus, responseHeaders, startHarness, type Harness } from '../helpers/harness.js';
import { canRunPostgres, canRunRedis, startOwnPostgres, startOwnRedis, type OwnPostgres, type OwnRedis } from '../helpers/own-services.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');
const LENIENT = 'ul_test_LENIENT_KEY_0001'; // failurePolicy: allow, 5 reads a minute, /verify 10 a month
const STRICT = 'ul_test_STRICT_KEY_00001'; // failurePolicy: deny
const ENVOY_DEADLINE_MS = 250;

interface Answer {
  status: number;
  code: string | undefined;
  degraded: boolean;
  retryAfter: string | undefined;
  ms: number;
}

async function ask(h: Harness, key: string, method: string, p: string): Promise<Answer> {
  const started = performance.now();
  const res: CheckResponseMessage = await h.check(
    buildCheckRequest({ key, method, path: p, target: '', headers: [], requestId: undefined, timeoutMs: 0 }),
    ENVOY_DEADLINE_MS,
  );
  const ms = performance.now() - started;
  const upstream = Object.fromEntries((res.ok_response?.headers ?? []).map((x) => [x.header.key, x.header.value]));
  const body = res.denied_response ? (JSON.parse(res.denied_response.body) as { code: string }) : undefined;
  return {
    status: httpStatus(res),
    code: body?.code,
    degraded: upstream[DEGRADED_HEADER] === 'true',
    retryAfter: responseHeaders(res)['Retry-After'],
    ms,
  };
}

/** Both tiers, read and metered: what each policy answers right now. */
async function policyAnswers(h: Harness) {
  return {
    lenientRead: await ask(h, LENIENT, 'GET', '/usage'),
    lenientMetered: await ask(h, LENIENT, 'POST', '/verify'),
    strictRead: await ask(h, STRICT, 'GET', '/usage'),
    strictMetered: await ask(h, STRICT, 'POST', '/verify'),
  };
}

function expectPolicies(a: Awaited<ReturnType<typeof policyAnswers>>) {
  for (const x of [a.lenientRead, a.lenientMetered]) expect(x).toMatchObject({ status: 200, degraded: true });
  for (const x of [a.strictRead, a.strictMetered]) {
    expect(x).toMatchObject({ status: 503, code: 'USAGE_CHECK_UNAVAILABLE', retryAfter: '1', degraded: false });
  }
  for (const x of Object.values(a)) expect(x.ms).toBeLessThan(ENVOY_DEADLINE_MS);
}

async function until<T>(what: string, probe: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (ok(await probe())) return performance.now() - started;
    if (performance.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const haveRedis = canRunRedis() && (await hasPostgres());
describe.skipIf(!haveRedis)('when Redis fails', () => {
  let redis: OwnRedis;
  let h: Harness;
  let drop: () => Promise<void>;

  beforeAll(async () => {
    redis = await startOwnRedis();
    const db = await createTestDatabase('policy_redis');
    drop = db.drop;
    h = await startHarness({
      env: { DATABASE_URL: db.url, APPLY_ON_START: TENANTS, REDIS_URL: redis.url, CHECK_TIMEOUT_MS: '100' },
      nowMs: T0,
    });
    // Warm the key cache (a cold key during a Redis outage is fine too, but this isolates Redis).
    expect((await ask(h, LENIENT, 'POST', '/other')).status).toBe(200);
    expect((await ask(h, STRICT, 'POST', '/other')).status).toBe(200);
  });

  afterAll(async () => {
    await h?.stop();
    await redis?.stop();
    await drop?.();
  });

  it('killed: each tier answers by its policy, within the deadline, and logs and counts it', async () => {
    expect(await ask(h, STRICT, 'POST', '/verify')).toMatchObject({ status: 200, degraded: false });
    await redis.kill();
    const answers = await policyAnswers(h);
    expectPolicies(answers);
    console.log(`Redis killed: policy answers in ${Object.values(answers).map((a) => a.ms.toFixed(1)).join(', ')} ms`);
    const failure = h.logs.records().find((r) => r.event === 'check.dependency_failed');
    expect(failure).toMatchObject({ level: 50, code: 'CacheError' });
    const m = parsePrometheus(await (await fetch(`http://127.0.0.1:${h.app.httpPort}/metrics`)).text());
    expect(m.value('usage_limiter_store_errors_total')).toBeGreaterThanOrEqual(4);
    expect(m.value('usage_limiter_check_decisions_total', { outcome: 'allow', code: 'OK', tier: 'lenient', degraded: 'true' })).toBe(2);
    expect(m.value('usage_limiter_check_decisions_total', { outcome: 'deny', code: 'USAGE_CHECK_UNAVAILABLE', tier: 'strict' })).toBe(2);
    const ready = await fetch(`http://127.0.0.1:${h.app.httpPort}/readyz`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { checks: Record<string, string> }).checks.redis).not.toBe('ok');
  });

  it('back: normal enforcement resumes without restarting the app', async () => {
    await redis.restart(); // a fresh, empty Redis on the same port
    const reconnect = await until('Redis enforcement again', () => ask(h, STRICT, 'GET', '/usage'), (a) => a.status === 200 && !a.degraded);
    console.log(`Redis restarted: enforcing again after ${reconnect.toFixed(0)} ms`);
    // The read-rate limit is enforced again: 5 a minute for lenient (counters start from the empty Redis).
    const reads = [];
    for (let i = 0; i < 6; i++) reads.push(await ask(h, LENIENT, 'GET', '/usage'));
    expect(reads.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429]);
    expect(reads.every((r) => !r.degraded)).toBe(true);
    expect(((await fetch(`http://127.0.0.1:${h.app.httpPort}/readyz`)).status)).toBe(200);
  });

  it('paused (SIGSTOP, connections hang): policy answers still arrive within the deadline', async () => {
    h.clock.now += 120_000; // a fresh read window
    redis.pause();
    try {
      // Concurrent, as under load: each Check gives up on Redis at CHECK_TIMEOUT_MS, not at Envoy's timeout.
      const answers = await Promise.all([
        ask(h, LENIENT, 'GET', '/usage'),
        ask(h, LENIENT, 'POST', '/verify'),
        ask(h, STRICT, 'GET', '/usage'),
        ask(h, STRICT, 'POST', '/verify'),
      ]);
      expectPolicies({ lenientRead: answers[0]!, lenientMetered: answers[1]!, strictRead: answers[2]!, strictMetered: answers[3]! });
      console.log(`Redis paused: policy answers in ${answers.map((a) => a.ms.toFixed(1)).join(', ')} ms`);
    } finally {
      redis.resume();
    }
    const back = await until('Redis answers again', () => ask(h, STRICT, 'GET', '/usage'), (a) => a.status === 200 && !a.degraded);
    console.log(`Redis resumed: enforcing again after ${back.toFixed(0)} ms`);
  });
});

const havePostgres = canRunPostgres();
describe.skipIf(!havePostgres)('when Postgres fails', () => {
  let pg: OwnPostgres;
  let h: Harness;
  let coldKey: string;

  beforeAll(async () => {
    pg = await startOwnPostgres();
    h = await startHarness({
      env: { DATABASE_URL: pg.url, APPLY_ON_START: TENANTS, CHECK_TIMEOUT_MS: '100', KEY_CACHE_NEGATIVE_TTL_SECONDS: '1' },
      nowMs: T0,
      store: createMemoryStore(),
    });
    // Both keys were preloaded at start, and this period's counters exist from now on (a period seen for the
    // first time is rebuilt from what billing recorded in Postgres before it is enforced, which needs Postgres).
    expect(await ask(h, LENIENT, 'POST', '/verify')).toMatchObject({ status: 200, degraded: false });
    // A key created after start: real, but this replica has never loaded it.
    coldKey = (await createKey(h.app.database, { tenantId: 'tenant_strict', name: 'cold' })).plaintext;
  });

  afterAll(async () => {
    await pg?.start().catch(() => {});
    await h?.stop();
    await pg?.destroy();
  });

  it('stopped: cached keys still pass, unknown keys get 503 USAGE_CHECK_UNAVAILABLE, within the deadline', async () => {
    await pg.stop();
    const cached = await ask(h, LENIENT, 'POST', '/verify');
    expect(cached).toMatchObject({ status: 200, degraded: false });
    expect(await ask(h, LENIENT, 'GET', '/usage')).toMatchObject({ status: 200, degraded: false });
    const unknown = await ask(h, 'ul_test_NEVER_SEEN_KEY_1', 'GET', '/usage');
    expect(unknown).toMatchObject({ status: 503, code: 'USAGE_CHECK_UNAVAILABLE', retryAfter: '1' });
    // A real key that this replica has not cached yet cannot be told from an unknown one.
    const cold = await ask(h, coldKey, 'GET', '/usage');
    expect(cold).toMatchObject({ status: 503, code: 'USAGE_CHECK_UNAVAILABLE' });
    for (const a of [cached, unknown, cold]) expect(a.ms).toBeLessThan(ENVOY_DEADLINE_MS);
    console.log(`Postgres stopped: cached ${cached.ms.toFixed(1)} ms, unknown ${unknown.ms.toFixed(1)} ms, cold ${cold.ms.toFixed(1)} ms`);
    const failure = h.logs.records().find((r) => r.event === 'check.dependency_failed');
    expect(failure).toMatchObject({ level: 50, code: 'DatabaseError' });
    const m = parsePrometheus(await (await fetch(`http://127.0.0.1:${h.app.httpPort}/metrics`)).text());
    expect(m.value('usage_limiter_directory_errors_total')).toBe(2);
    expect(m.value('usage_limiter_check_decisions_total', { outcome: 'deny', code: 'USAGE_CHECK_UNAVAILABLE', tier: 'none' })).toBe(2);
    await until('the poll to notice', async () => h.logs.records().some((r) => r.event === 'directory.unreachable'), (x) => x, 5_000);
  });

  it('paused (SIGSTOP): unknown keys still get their 503 within the deadline', async () => {
    await pg.start();
    await until('Postgres back', () => ask(h, STRICT, 'POST', '/verify'), (a) => a.status === 200 && !a.degraded);
    await pg.pause();
    try {
      const [unknown, cached] = await Promise.all([ask(h, 'ul_test_NEVER_SEEN_KEY_2', 'GET', '/usage'), ask(h, STRICT, 'POST', '/verify')]);
      expect(unknown).toMatchObject({ status: 503, code: 'USAGE_CHECK_UNAVAILABLE' });
      expect(cached).toMatchObject({ status: 200, degraded: false });
      expect(unknown.ms).toBeLessThan(ENVOY_DEADLINE_MS);
      console.log(`Postgres paused: unknown key 503 in ${unknown.ms.toFixed(1)} ms, cached key in ${cached.ms.toFixed(1)} ms`);
    } finally {
      await pg.resume();
    }
  });

  it('back: unknown keys get their 401 again, and the cache follows changes again', async () => {
    const ms = await until('a definite answer for an unknown key', () => ask(h, 'ul_test_NEVER_SEEN_KEY_3', 'GET', '/usage'), (a) => a.status === 401);
    console.log(`Postgres back: unknown keys answered 401 after ${ms.toFixed(0)} ms`);
    await until('the poll to recover', async () => h.logs.records().some((r) => r.event === 'directory.recovered'), (x) => x, 5_000);
  });
});

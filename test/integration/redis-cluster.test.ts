// The whole server on a Redis Cluster of the test's own (three masters, three replicas), configured as an
// operator would (REDIS_CLUSTER_NODES), as two replicas sharing it: exactness under concurrency, then a
// CLUSTER FAILOVER (planned) and a SIGKILL (a crash) of the master that holds some tenants' counters while
// Checks for them and for a tenant on another master keep coming. Every answer must arrive within Envoy's
// deadline and be either enforced or the tier's failure policy; after the switch enforcement continues from
// the replicated counters, exactly, on both replicas; /readyz recovers. The figures go to the log (README).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import { DEGRADED_HEADER, type CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { canRunCluster, masterOf, scanCluster } from '../helpers/cluster-support.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { startTestCluster, type TestCluster } from '../helpers/redis-cluster.js';
import { createTestDatabase, hasPostgres, testPrefix } from '../helpers/services.js';

const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const PERIOD = '2025-09';
const TENANTS_FILE = path.resolve('test/fixtures/tenants/cluster.yaml');
const ENVOY_DEADLINE_MS = 250;
const BURST_DEADLINE_MS = 5_000;
const LIMIT = 2000; // /verify per month in the lenient and strict tiers

const KEYS = {
  cl_lenient_0: 'ul_test_CLUSTER_LENIENT_0', // failurePolicy allow, on the master that fails over
  cl_strict_2: 'ul_test_CLUSTER_STRICT_2', // failurePolicy deny, same master
  cl_steady_0: 'ul_test_CLUSTER_STEADY_0', // deny, another master
  cl_calm_0: 'ul_test_CLUSTER_CALM_0', // deny, the third master
  cl_busy_0: 'ul_test_CLUSTER_BUSY_0', // 10 reads a minute, the third master
  cl_lenient_3: 'ul_test_CLUSTER_LENIENT_3', // allow, on the master that fails over, then crashes
  cl_steady_2: 'ul_test_CLUSTER_STEADY_2', // deny, same
} as const;
type Tenant = keyof typeof KEYS;
const POLICY: Record<Tenant, 'allow' | 'deny'> = {
  cl_lenient_0: 'allow',
  cl_strict_2: 'deny',
  cl_steady_0: 'deny',
  cl_calm_0: 'deny',
  cl_busy_0: 'deny',
  cl_lenient_3: 'allow',
  cl_steady_2: 'deny',
};

interface Answer {
  tenant: Tenant;
  at: number;
  ms: number;
  status: number;
  code: string | undefined;
  degraded: boolean;
}

/** One Check as Envoy sends it; bursts of hundreds at once test exactness, not latency, so they wait longer. */
async function ask(h: Harness, tenant: Tenant, method = 'POST', p = '/verify', deadlineMs = ENVOY_DEADLINE_MS): Promise<Answer> {
  const at = performance.now();
  const res: CheckResponseMessage = await h.check(
    buildCheckRequest({ key: KEYS[tenant], method, path: p, target: '', headers: [], requestId: undefined, timeoutMs: 0 }),
    deadlineMs,
  );
  const upstream = Object.fromEntries((res.ok_response?.headers ?? []).map((x) => [x.header.key, x.header.value]));
  const body = res.denied_response ? (JSON.parse(res.denied_response.body) as { code: string }) : undefined;
  return { tenant, at, ms: performance.now() - at, status: httpStatus(res), code: body?.code, degraded: upstream[DEGRADED_HEADER] === 'true' };
}

const enforcedAllow = (a: Answer) => a.status === 200 && !a.degraded;
const policyAnswer = (a: Answer) => a.degraded || a.status === 503;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(ok: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(50);
  }
}

const services = (await canRunCluster()) && (await hasPostgres());

describe.skipIf(!services)('the server on a Redis Cluster', () => {
  let tc: TestCluster;
  // Two replicas of the server on the same cluster. `h` gives Redis a second per Check (as the gRPC tests
  // do), so that bursts of hundreds of Checks at once on this small machine test exactness, not CPU time;
  // `live` runs with the production budget (CHECK_TIMEOUT_MS 100, Envoy's deadline 250 ms) for the failover.
  let h: Harness;
  let live: Harness;
  let drop: () => Promise<void>;
  const prefix = testPrefix('cluster-e2e');
  const usageKey = (t: Tenant) => `${prefix}usage:{${t}}:${PERIOD}`;
  const used = async (t: Tenant) => Number(await tc.client.hget(usageKey(t), 'op:/verify'));
  const ready = async (server: Harness = h) => (await fetch(`http://127.0.0.1:${server.app.httpPort}/readyz`)).status;

  beforeAll(async () => {
    const [cluster, db] = await Promise.all([startTestCluster(), createTestDatabase('cluster')]);
    tc = cluster;
    drop = db.drop;
    const env = {
      DATABASE_URL: db.url,
      APPLY_ON_START: TENANTS_FILE,
      REDIS_CLUSTER_NODES: tc.nodes.map((n) => `${n.host}:${n.port}`).join(','),
      REDIS_KEY_PREFIX: prefix,
    };
    const app = { alerts: { tuning: { violationFlushMs: 100 } } };
    h = await startHarness({ env: { ...env, CHECK_TIMEOUT_MS: '1000' }, nowMs: T0, app });
    live = await startHarness({ env: { ...env, CHECK_TIMEOUT_MS: '100' }, nowMs: T0, app });
  });

  afterAll(async () => {
    await live?.stop();
    await h?.stop();
    await tc?.stop();
    await drop?.();
  });

  it('spreads the tenants over the three masters, and keeps each tenant in one slot', async () => {
    const masters = Object.fromEntries(
      await Promise.all((Object.keys(KEYS) as Tenant[]).map(async (t) => [t, await masterOf(tc.client, `{${t}}`)] as const)),
    );
    expect(masters.cl_lenient_0).toBe(masters.cl_strict_2);
    expect(masters.cl_lenient_3).toBe(masters.cl_strict_2);
    expect(masters.cl_steady_2).toBe(masters.cl_strict_2);
    expect(new Set([masters.cl_lenient_0, masters.cl_steady_0, masters.cl_calm_0]).size).toBe(3);

    for (const t of ['cl_lenient_0', 'cl_strict_2', 'cl_steady_0', 'cl_calm_0', 'cl_lenient_3', 'cl_steady_2'] as const) {
      for (let i = 0; i < 5; i++) expect(await ask(h, t)).toMatchObject({ status: 200, degraded: false });
      expect(await used(t)).toBe(5);
    }
    expect(await ready()).toBe(200);
    // Every key of a tenant carries its hash tag (the runbook's names, with `{}` around the tenant).
    const keys = await scanCluster(tc.client, `${prefix}*`);
    expect(keys).toContain(`${prefix}usage:{cl_lenient_0}:${PERIOD}`);
    expect(keys).toContain(`${prefix}usage_pending:{cl_lenient_0}:/verify:${PERIOD}`);
    expect(keys.filter((k) => !/^[^{]*\{cl_[a-z]+_\d\}/.test(k))).toEqual([]);
  });

  it('200 metered Checks at once with 10 units left: exactly 10 allowed', async () => {
    await tc.client.hset(usageKey('cl_calm_0'), '__total__', LIMIT - 10, 'op:/verify', LIMIT - 10);
    const answers = await Promise.all(Array.from({ length: 200 }, () => ask(h, 'cl_calm_0', 'POST', '/verify', BURST_DEADLINE_MS)));
    expect(answers.filter((a) => a.status === 200)).toHaveLength(10);
    expect(answers.filter((a) => a.code === 'USAGE_LIMIT_EXCEEDED')).toHaveLength(190);
    expect(answers.some((a) => a.degraded)).toBe(false);
    expect(await used('cl_calm_0')).toBe(LIMIT);
  });

  it('200 GETs at once against a limit of 10 a minute: exactly 10 allowed', async () => {
    const answers = await Promise.all(Array.from({ length: 200 }, () => ask(h, 'cl_busy_0', 'GET', '/usage', BURST_DEADLINE_MS)));
    expect(answers.filter((a) => a.status === 200)).toHaveLength(10);
    expect(answers.filter((a) => a.code === 'READ_RATE_LIMIT_EXCEEDED')).toHaveLength(190);
    expect(await tc.client.zcard(`${prefix}read_rate:{cl_busy_0}`)).toBe(10);
  });

  /** Checks for `tenants` through `live` (one in flight per entry, as steady traffic) and /readyz every 20 ms. */
  function startLoad(tenants: readonly Tenant[]) {
    const answers: Answer[] = [];
    const readiness: Array<{ at: number; status: number }> = [];
    let stopped = false;
    const worker = async (tenant: Tenant) => {
      while (!stopped) {
        answers.push(await ask(live, tenant));
        await sleep(2);
      }
    };
    const probe = async () => {
      while (!stopped) {
        readiness.push({ at: performance.now(), status: await ready(live) });
        await sleep(20);
      }
    };
    const running = Promise.all([...tenants.map(worker), probe()]);
    return {
      answers,
      readiness,
      stop: async () => {
        stopped = true;
        await running;
      },
    };
  }

  /** Nothing crashed or hung: every Check was answered within Envoy's deadline, enforced or by its tier's policy. */
  function expectEnforcedOrPolicy(answers: readonly Answer[]): void {
    expect(answers.length).toBeGreaterThan(100);
    for (const a of answers) {
      expect(a.ms, `${a.tenant} answered in ${a.ms} ms`).toBeLessThan(ENVOY_DEADLINE_MS);
      const policy = POLICY[a.tenant] === 'allow' ? a.status === 200 && a.degraded : a.code === 'USAGE_CHECK_UNAVAILABLE';
      expect(enforcedAllow(a) || policy, JSON.stringify(a)).toBe(true);
    }
  }

  function summary(answers: readonly Answer[], tenants: readonly Tenant[], since: number) {
    const policy = answers.filter((a) => tenants.includes(a.tenant) && policyAnswer(a));
    // When these tenants got policy answers, in ms after the event (`since`).
    const from = policy.length > 0 ? Math.min(...policy.map((a) => a.at)) - since : 0;
    const to = policy.length > 0 ? Math.max(...policy.map((a) => a.at + a.ms)) - since : 0;
    return {
      policy: policy.length,
      fallback: policy.length > 0 ? `${from.toFixed(0)}-${to.toFixed(0)} ms` : 'none',
      slowestMs: Math.max(...answers.filter((a) => tenants.includes(a.tenant)).map((a) => a.ms)),
    };
  }

  /**
   * The counter continued from the replicated one: what was admitted is counted (unless a crash lost the
   * last writes before they reached the replica: `lost`), and a reservation whose reply was lost with the
   * old master's connection may have landed too (its Check got the policy answer).
   */
  async function usageBounds(t: Tenant, before: number, answers: readonly Answer[]) {
    const admitted = answers.filter((a) => a.tenant === t && enforcedAllow(a)).length;
    const unknown = answers.filter((a) => a.tenant === t && policyAnswer(a)).length;
    const now = await used(t);
    expect(now, t).toBeLessThanOrEqual(before + admitted + unknown);
    return { now, lost: Math.max(0, before + admitted - now) };
  }

  /** Enforcement is exact: the units left are admitted, not one more (through the other replica, `h`). */
  async function expectExactToTheLimit(t: Tenant): Promise<void> {
    const left = LIMIT - (await used(t));
    const rush: Answer[] = [];
    for (let sent = 0; sent < left + 50; sent += 200) {
      const n = Math.min(200, left + 50 - sent);
      rush.push(...(await Promise.all(Array.from({ length: n }, () => ask(h, t, 'POST', '/verify', BURST_DEADLINE_MS)))));
    }
    expect(rush.filter((a) => a.status === 200)).toHaveLength(left);
    expect(rush.filter((a) => a.code === 'USAGE_LIMIT_EXCEEDED')).toHaveLength(50);
    expect(rush.some(policyAnswer)).toBe(false);
    expect(await used(t)).toBe(LIMIT);
  }

  it('survives a CLUSTER FAILOVER under load: policy or enforced answers in time, then exact enforcement', async () => {
    const victims = ['cl_lenient_0', 'cl_strict_2'] as const;
    const before = { cl_lenient_0: await used('cl_lenient_0'), cl_strict_2: await used('cl_strict_2') };
    // Four Checks in flight: the two tenants of the master that fails over (one twice), one on another master.
    const load = startLoad(['cl_lenient_0', 'cl_strict_2', 'cl_strict_2', 'cl_steady_0']);
    await sleep(300);
    const started = performance.now();
    const { oldMaster, newMaster } = await tc.failoverFor(usageKey('cl_lenient_0'));
    const switchedMs = performance.now() - started;
    await sleep(700);
    await load.stop();

    expect(await masterOf(tc.client, `{cl_lenient_0}`)).toBe(newMaster);
    expect(newMaster).not.toBe(oldMaster);
    expectEnforcedOrPolicy(load.answers);
    // The tenant on a master that did not move was enforced throughout.
    expect(load.answers.filter((a) => a.tenant === 'cl_steady_0').every(enforcedAllow)).toBe(true);
    // A manual failover loses nothing: the replica has every write before it takes over.
    for (const t of victims) expect((await usageBounds(t, before[t], load.answers)).lost, t).toBe(0);
    const s = summary(load.answers, victims, started);
    console.log(
      `CLUSTER FAILOVER ${oldMaster} -> ${newMaster}: switched in ${switchedMs.toFixed(0)} ms; ${load.answers.length} Checks; ` +
        `${s.policy} answered by the failure policy (${s.fallback} after the FAILOVER); ` +
        `slowest ${s.slowestMs.toFixed(1)} ms; /readyz 503 in ${load.readiness.filter((r) => r.status !== 200).length}/${load.readiness.length} probes`,
    );

    await expectExactToTheLimit('cl_strict_2');
    expect(await ready(live)).toBe(200);
    expect(await ready(h)).toBe(200);
  });

  it('survives the crash of a master: the policy answers until its replica takes over, then exact enforcement', async () => {
    const victims = ['cl_lenient_3', 'cl_steady_2'] as const;
    const before = { cl_lenient_3: await used('cl_lenient_3'), cl_steady_2: await used('cl_steady_2') };
    const load = startLoad(['cl_lenient_3', 'cl_steady_2', 'cl_steady_2', 'cl_steady_0']);
    await sleep(300);
    const started = performance.now();
    const { oldMaster, newMaster } = await tc.crashMasterFor(usageKey('cl_steady_2'));
    const promotedMs = performance.now() - started;
    // Until enforcement is back for both tenants, then a little more.
    const deadline = performance.now() + 15_000;
    const back = (t: Tenant) => load.answers.filter((a) => a.tenant === t).slice(-5);
    while (!victims.every((t) => back(t).length === 5 && back(t).every(enforcedAllow)) && performance.now() < deadline) await sleep(50);
    const enforcingMs = performance.now() - started;
    await sleep(500);
    await load.stop();

    expect(await masterOf(tc.client, `{cl_steady_2}`)).toBe(newMaster);
    expectEnforcedOrPolicy(load.answers);
    const bounds = await Promise.all(victims.map((t) => usageBounds(t, before[t], load.answers)));
    const s = summary(load.answers, victims, started);
    const other = summary(load.answers, ['cl_steady_0'], started);
    const notReady = load.readiness.filter((r) => r.status !== 200 && r.at >= started);
    const readyAgainMs = notReady.length > 0 ? Math.max(...notReady.map((r) => r.at)) - started : 0;
    console.log(
      `master ${oldMaster} SIGKILLed: replica ${newMaster} promoted after ${promotedMs.toFixed(0)} ms, enforcing again after ` +
        `${enforcingMs.toFixed(0)} ms; ${load.answers.length} Checks; its tenants: ${s.policy} policy answers (` +
        `${s.fallback} after the crash), slowest ${s.slowestMs.toFixed(1)} ms; a tenant on another master: ${other.policy} ` +
        `policy answers (${other.fallback}); /readyz 503 until ${readyAgainMs.toFixed(0)} ms; ` +
        `units lost with the crash: ${bounds.map((b) => b.lost).join(', ')}`,
    );
    expect(s.policy).toBeGreaterThan(0);

    await expectExactToTheLimit('cl_steady_2');
    await until(async () => (await ready(live)) === 200 && (await ready(h)) === 200, 10_000);
  });

  it('counts repeated violations in the tenant slot (violations:{tenant}:<window>)', async () => {
    const windowStart = (T0 - (T0 % 300_000)) / 1000;
    const key = `${prefix}violations:{cl_strict_2}:${windowStart}`;
    // 50 quota denials in the test above, 1 more here; each replica adds its own every 100 ms.
    expect(await ask(h, 'cl_strict_2')).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED' });
    const deadline = Date.now() + 3_000;
    while (Number(await tc.client.get(key)) < 51 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(Number(await tc.client.get(key))).toBe(51);
    expect(await tc.client.get(`${prefix}violations:{cl_calm_0}:${windowStart}`)).toBe('190');
  });
});

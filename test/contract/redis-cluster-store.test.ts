// The Redis store on a real Redis Cluster (three masters, three replicas of the test's own): the shared
// contract, including its concurrency-exactness cases (200 racing reservations, 200 racing reads), and
// what only a cluster checks: every command and script of the store touches one slot, its tenant's (Redis
// itself refuses a script whose keys span slots with CROSSSLOT), and the violation counters do too.
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PartialCountError, redisWindowCounter, violationKey } from '../../src/alerts/violations.js';
import { clusterClientOptions } from '../../src/store/redis-client.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import { canRunCluster, deleteClusterKeys, masterOf, scanCluster } from '../helpers/cluster-support.js';
import { startTestCluster, type TestCluster } from '../helpers/redis-cluster.js';
import { testPrefix } from '../helpers/services.js';
import {
  NOW,
  PERIOD,
  SETTLEMENT_WINDOW,
  counterStoreContract,
  meteredRequest,
  settleEntry,
  type CounterStoreHarness,
  expectUnreachableStoreFailsFast,
} from './counter-store.contract.js';

const clusterUp = await canRunCluster();
const TEST_TIMEOUT_MS = 2_000;

describe.skipIf(!clusterUp)('redis store on a Redis Cluster', () => {
  let tc: TestCluster;
  beforeAll(async () => {
    tc = await startTestCluster();
  });
  afterAll(async () => {
    await tc?.stop();
  });

  // One cluster for the file; each contract case gets a store (its own Cluster client) and a prefix of its own.
  counterStoreContract('redis cluster', async (): Promise<CounterStoreHarness> => {
    const prefix = testPrefix('redis-cluster');
    const store = createRedisStore({
      clusterNodes: tc.nodes,
      prefix,
      commandTimeoutMs: TEST_TIMEOUT_MS,
      settlementWindowMs: SETTLEMENT_WINDOW,
    });
    return {
      store,
      deleteUsage: async (tenantId, period) => {
        await tc.client.del(store.keys(tenantId).usage(period));
      },
      setUsage: async (tenantId, period, usage) => {
        const fields: string[] = [];
        if (usage.total !== undefined) fields.push('__total__', String(usage.total));
        for (const [endpoint, n] of Object.entries(usage.endpoints ?? {})) fields.push(`op:${endpoint}`, String(n));
        await tc.client.hset(store.keys(tenantId).usage(period), ...fields);
      },
      teardown: async () => {
        await store.close();
        await deleteClusterKeys(tc.client, prefix);
      },
    };
  });

  describe('one slot per call', () => {
    // Tenants whose `{tenant}` slots belong to all three masters (checked below, not assumed).
    const TENANTS = ['tenant_C_789', 'tenant_E_111', 'tenant_a', 'tenant_b', 'tenant_c', 'tenant_d'];
    let prefix: string;
    beforeAll(() => {
      prefix = testPrefix('redis-cluster-slots');
    });
    afterAll(async () => {
      await deleteClusterKeys(tc.client, prefix);
    });

    it('the test tenants live on every master', async () => {
      const masters = new Set(await Promise.all(TENANTS.map((t) => masterOf(tc.client, `{${t}}`))));
      expect(masters.size).toBe(3);
    });

    it('sends every command and script with keys of one slot only: the tenant hash tag', async () => {
      const client = new Cluster(tc.nodes.map((n) => ({ ...n })), clusterClientOptions(TEST_TIMEOUT_MS, { waitForNodeConnections: true }));
      const sent: Array<{ name: string; keys: string[] }> = [];
      const send = client.sendCommand.bind(client);
      client.sendCommand = ((command, stream, node) => {
        sent.push({ name: command.name, keys: command.getKeys().map(String) });
        return send(command, stream, node);
      }) as typeof client.sendCommand;
      const store = createRedisStore({ client, prefix, commandTimeoutMs: TEST_TIMEOUT_MS, settlementWindowMs: SETTLEMENT_WINDOW });
      try {
        const quota = { totalLimit: 100, thresholdPercents: [1, 50, 100] };
        for (const t of TENANTS) {
          // Read rate, quota on the endpoint and the total, three thresholds each: the widest script call.
          const r = await store.checkAndReserve({ ...meteredRequest(t, quota, NOW, `${t}-1`), readRate: { limit: 10, windowMs: 60_000 } });
          expect(r.quota?.allowed).toBe(true);
          await store.checkAndReserve(meteredRequest(t, { ...quota, endpoint: '/extract' }, NOW, `${t}-2`));
          await store.checkAndReserve(meteredRequest(t, { ...quota, ifUsageMissing: 'report' }, NOW, `${t}-3`));
          await store.release(t, PERIOD, '/verify', 1);
          await store.usage(t, PERIOD);
          await store.settledUsage(t, PERIOD, NOW);
          await store.restoreUsage(t, '2025-08', { total: 3, endpoints: { '/verify': 2, '/extract': 1 } }, Date.UTC(2025, 8, 1), NOW);
        }
        // One batch across tenants on different masters: each entry is its own single-slot script.
        expect(await store.settle(TENANTS.map((t) => settleEntry(t, `${t}-2`, true, '/extract')), NOW + 1)).toEqual(
          TENANTS.map(() => 'refunded'),
        );
        await store.ping();

        const withKeys = sent.filter((c) => c.keys.length > 0);
        expect(new Set(withKeys.map((c) => c.name))).toEqual(new Set(['evalsha', 'hgetall']));
        for (const c of withKeys) {
          const tenants = new Set(c.keys.map((k) => /\{([^}]*)\}/.exec(k)?.[1]));
          expect(tenants.size, c.keys.join(' ')).toBe(1);
          const [tenant] = [...tenants];
          expect(TENANTS).toContain(tenant);
          const slots = new Set(await Promise.all(c.keys.map((k) => tc.client.cluster('KEYSLOT', k))));
          expect(slots, c.keys.join(' ')).toEqual(new Set([await tc.client.cluster('KEYSLOT', `{${tenant}}`)]));
        }
        // The widest call above: 2 read-rate keys, the hash, the pending set, 3 + 3 threshold flags.
        expect(Math.max(...withKeys.map((c) => c.keys.length))).toBe(10);
      } finally {
        await store.close();
        client.disconnect();
      }
    });

    it('counts violations per tenant in its own slot, across masters, without CROSSSLOT', async () => {
      const counter = redisWindowCounter(tc.client);
      const start = NOW - (NOW % 300_000);
      const entries = TENANTS.map((t, i) => ({ key: violationKey(prefix, t, start, true), delta: i + 1, ttlMs: 60_000 }));
      expect(await counter.add(entries)).toEqual(TENANTS.map((_, i) => i + 1));
      expect(await counter.add(entries)).toEqual(TENANTS.map((_, i) => 2 * (i + 1)));
      expect(await scanCluster(tc.client, `${prefix}violations:*`)).toEqual(
        TENANTS.map((t) => `${prefix}violations:{${t}}:${start / 1000}`).sort(),
      );
      // Standalone names are unchanged (the README's runbook uses them).
      expect(violationKey('p:', 'tenant_a', start)).toBe(`p:violations:tenant_a:${start / 1000}`);
    });

    it('reports which violation counters were added when only some shards answer', async () => {
      // A shard that fails is simulated by a key that INCRBY refuses (it holds a word, not a count).
      const start = NOW - (NOW % 300_000) + 300_000;
      const good = violationKey(prefix, 'tenant_a', start, true);
      const bad = `${prefix}not-a-counter:{tenant_b}`;
      await tc.client.set(bad, 'x');
      const counter = redisWindowCounter(tc.client);
      const err = await counter
        .add([
          { key: good, delta: 1, ttlMs: 60_000 },
          { key: bad, delta: 1, ttlMs: 60_000 },
        ])
        .then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(PartialCountError);
      expect((err as PartialCountError).totals).toEqual([1, null]);
    });
  });

  describe('configuration', () => {
    it('refuses standalone key names on a Cluster client, and braces in the prefix', () => {
      expect(() => createRedisStore({ client: tc.client, cluster: false })).toThrow(/cluster key names/);
      expect(() => createRedisStore({ clusterNodes: tc.nodes, prefix: 'a{b}:' })).toThrow(/\{ or \}/);
    });

    it('defaults to cluster key names with a Cluster client it does not own', async () => {
      const prefix = testPrefix('redis-cluster-owned');
      const store = createRedisStore({ client: tc.client, prefix, commandTimeoutMs: TEST_TIMEOUT_MS });
      await store.checkAndReserve(meteredRequest('tenant_x', {}, NOW, 'rid-x'));
      expect(store.keys('tenant_x').usage(PERIOD)).toBe(`${prefix}usage:{tenant_x}:${PERIOD}`);
      expect(await tc.client.hgetall(`${prefix}usage:{tenant_x}:${PERIOD}`)).toEqual({ __total__: '1', 'op:/verify': '1' });
      await store.close(); // not owned: the fixture's client stays connected
      expect(tc.client.status).toBe('ready');
      await deleteClusterKeys(tc.client, prefix);
    });
  });
});

describe('redis store, no cluster node reachable', () => {
  it('rejects quickly instead of hanging, and survives the client errors', async () => {
    const errors: Error[] = [];
    // ioredis reports an 'error' event nobody listens to on console.error.
    const consoleError = vi.spyOn(console, 'error');
    // Port 1 refuses connections; the store's default timeout (100 ms) applies.
    const store = createRedisStore({ clusterNodes: [{ host: '127.0.0.1', port: 1 }], onError: (err) => errors.push(err) });
    await expectUnreachableStoreFailsFast(store, errors, consoleError);
  });
});

// The Redis store against a real Redis: the shared contract, plus what only Redis has (the public key
// layout, EVALSHA in one round trip, expiries, junk written by operators, an unreachable server).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { COUNTER_GRACE_MS } from '../../src/store/keys.js';
import { createRedisStore, type RedisCounterStore } from '../../src/store/redis-store.js';
import { TEST_REDIS_URL, hasRedis, testPrefix } from '../helpers/services.js';
import {
  NOW,
  PERIOD,
  PERIOD_END,
  SETTLEMENT_WINDOW,
  counterStoreContract,
  meteredRequest,
  readRequest,
  type CounterStoreHarness,
  expectUnreachableStoreFailsFast,
} from './counter-store.contract.js';

const redisUp = await hasRedis();
// Generous, so a busy CI machine does not turn a slow reply into a failure; the default is tested below.
const TEST_TIMEOUT_MS = 2_000;

let admin: Redis;

async function deleteByPrefix(prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await admin.del(...keys);
  } while (cursor !== '0');
}

async function keysByPrefix(prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    found.push(...keys);
  } while (cursor !== '0');
  return found.sort();
}

function harness(cluster: boolean): () => Promise<CounterStoreHarness> {
  return async () => {
    const prefix = testPrefix(cluster ? 'redis-store-cluster' : 'redis-store');
    const store = createRedisStore({
      url: TEST_REDIS_URL,
      prefix,
      cluster,
      commandTimeoutMs: TEST_TIMEOUT_MS,
      settlementWindowMs: SETTLEMENT_WINDOW,
    });
    return {
      store,
      deleteUsage: async (tenantId, period) => {
        await admin.del(store.keys(tenantId).usage(period));
      },
      // A real HSET on the store's key, as an operator would do with redis-cli.
      setUsage: async (tenantId, period, usage) => {
        const fields: string[] = [];
        if (usage.total !== undefined) fields.push('__total__', String(usage.total));
        for (const [endpoint, n] of Object.entries(usage.endpoints ?? {})) fields.push(`op:${endpoint}`, String(n));
        await admin.hset(store.keys(tenantId).usage(period), ...fields);
      },
      teardown: async () => {
        await store.close();
        await deleteByPrefix(prefix);
      },
    };
  };
}

/** The part of a key Redis Cluster hashes: between the first `{` and the next `}`, when not empty. */
function hashTag(key: string): string {
  const open = key.indexOf('{');
  const close = open < 0 ? -1 : key.indexOf('}', open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : key;
}

describe.skipIf(!redisUp)('redis store', () => {
  beforeAll(() => {
    admin = new Redis(TEST_REDIS_URL);
  });
  afterAll(async () => {
    await admin.quit();
  });

  counterStoreContract('redis', harness(false));
  counterStoreContract('redis, cluster key names', harness(true));

  describe('against Redis itself', () => {
    let prefix: string;
    let store: RedisCounterStore;
    const open: RedisCounterStore[] = [];
    const newStore = (opts: { cluster?: boolean } = {}): RedisCounterStore => {
      const s = createRedisStore({ url: TEST_REDIS_URL, prefix, commandTimeoutMs: TEST_TIMEOUT_MS, ...opts });
      open.push(s);
      return s;
    };
    beforeAll(() => {
      prefix = testPrefix('redis-store-layout');
      store = newStore();
    });
    afterAll(async () => {
      await Promise.all(open.map((s) => s.close()));
      await deleteByPrefix(prefix);
    });

    it("reads a reply that arrived while this process's event loop was stalled, instead of timing it out", async () => {
      // A 30 ms budget, then a 90 ms stall right after sending: Redis answers in about a millisecond, the
      // budget's timer falls due during the stall. The reply waiting in the socket must win (src/timers.ts).
      const s = createRedisStore({ url: TEST_REDIS_URL, prefix, commandTimeoutMs: 30 });
      open.push(s);
      await s.ping(); // connected, and the scripts' first EVAL is not what is timed
      await s.checkAndReserve(readRequest('tenant_stall', 10, NOW));
      const pending = s.checkAndReserve(readRequest('tenant_stall', 10, NOW + 1));
      // The command leaves (the write coalescer's flush), then the stall: its reply is in the socket buffer
      // when the timer falls due. (A command flushed only at the end of the stall: test/unit/timers.test.ts.)
      await new Promise(setImmediate);
      const until = performance.now() + 90;
      while (performance.now() < until) {
        /* a long turn of the event loop: a burst of Checks, a full GC */
      }
      await expect(pending).resolves.toMatchObject({ readRate: { allowed: true }, quota: null });
      // A Redis that really does not answer still times out (the unreachable-server tests below).
    });

    it('writes the public key layout of the seed', async () => {
      await store.checkAndReserve(readRequest('tenant_C_789', 10, NOW));
      expect(await admin.exists(`${prefix}read_rate:tenant_C_789`, `${prefix}read_rate:tenant_C_789:seq`)).toBe(2);
      expect(await admin.type(`${prefix}read_rate:tenant_C_789`)).toBe('zset');

      await admin.hset(`${prefix}usage:tenant_E_111:2025-09`, '__total__', '7', 'op:/verify', '7');
      const quota = { endpointLimit: 10, thresholdPercents: [80, 90, 100] };
      for (let i = 0; i < 3; i++) await store.checkAndReserve(meteredRequest('tenant_E_111', quota, NOW + i, `rid-${i}`));
      expect(await admin.hgetall(`${prefix}usage:tenant_E_111:2025-09`)).toEqual({
        __total__: '10',
        'op:/verify': '10',
      });
      // Each reservation waits for its access-log entry: member = request id, score = the Check's time.
      expect(await admin.zrange(`${prefix}usage_pending:tenant_E_111:/verify:2025-09`, '0', '-1', 'WITHSCORES')).toEqual([
        'rid-0',
        String(NOW),
        'rid-1',
        String(NOW + 1),
        'rid-2',
        String(NOW + 2),
      ]);
      expect(
        await admin.exists(
          `${prefix}usage_threshold:tenant_E_111:/verify:2025-09:80`,
          `${prefix}usage_threshold:tenant_E_111:/verify:2025-09:90`,
          `${prefix}usage_threshold:tenant_E_111:/verify:2025-09:100`,
        ),
      ).toBe(3);
    });

    it('follows an operator who deletes the read-rate keys', async () => {
      const tenant = 'tenant_reset';
      for (let i = 0; i < 10; i++) await store.checkAndReserve(readRequest(tenant, 10, NOW + i));
      expect((await store.checkAndReserve(readRequest(tenant, 10, NOW + 20))).readRate?.allowed).toBe(false);
      await admin.del(`${prefix}read_rate:${tenant}`, `${prefix}read_rate:${tenant}:seq`);
      const r = await store.checkAndReserve(readRequest(tenant, 10, NOW + 21));
      expect(r.readRate).toEqual({ allowed: true, count: 1, oldestMs: NOW + 21 });
    });

    it('wraps the tenant in {} in cluster mode so all its keys share a slot', async () => {
      const clusterStore = newStore({ cluster: true });
      const tenant = 'tenant_C_789';
      await clusterStore.checkAndReserve({
        ...meteredRequest(tenant, { totalLimit: 100, thresholdPercents: [1] }),
        readRate: { limit: 10, windowMs: 60_000 },
      });
      const keys = await keysByPrefix(`${prefix}`).then((all) => all.filter((k) => k.includes('{')));
      expect(keys).toEqual(
        [
          `${prefix}read_rate:{tenant_C_789}`,
          `${prefix}read_rate:{tenant_C_789}:seq`,
          `${prefix}usage:{tenant_C_789}:2025-09`,
          `${prefix}usage_pending:{tenant_C_789}:/verify:2025-09`,
          `${prefix}usage_threshold:{tenant_C_789}:/verify:2025-09:1`,
          `${prefix}usage_threshold:{tenant_C_789}:__total__:2025-09:1`,
        ].sort(),
      );
      expect(new Set(keys.map(hashTag))).toEqual(new Set([tenant]));
    });

    it('sets an expiry on every key it writes', async () => {
      const p = testPrefix('redis-store-ttl');
      const s = createRedisStore({ url: TEST_REDIS_URL, prefix: p, commandTimeoutMs: TEST_TIMEOUT_MS, settlementWindowMs: 30_000 });
      open.push(s);
      try {
        await s.checkAndReserve({
          ...meteredRequest('t1', { totalLimit: 100, thresholdPercents: [1, 100] }),
          readRate: { limit: 10, windowMs: 60_000 },
        });
        await s.release('t1', PERIOD, '/verify', 1);
        await s.settle([{ tenantId: 't1', period: PERIOD, endpoint: '/verify', requestId: 'nope', failed: true }], NOW);
        await s.restoreUsage('t2', PERIOD, { total: 1, endpoints: { '/verify': 1 } }, PERIOD_END, NOW);
        const keys = await keysByPrefix(p);
        expect(keys).toHaveLength(7);
        const expectedPeriodTtl = PERIOD_END + COUNTER_GRACE_MS - NOW;
        for (const key of keys) {
          const ttl = await admin.pttl(key);
          if (key.includes(':read_rate:')) expect(ttl, key).toBeGreaterThan(0);
          if (key.includes(':read_rate:')) expect(ttl, key).toBeLessThanOrEqual(60_000);
          // Everything in a pending set has settled two windows after the last reservation.
          else if (key.includes(':usage_pending:')) expect(Math.abs(ttl - 60_000), key).toBeLessThan(5_000);
          else expect(Math.abs(ttl - expectedPeriodTtl), key).toBeLessThan(60_000);
        }
      } finally {
        await deleteByPrefix(p);
      }
    });

    it('does not crash on junk an operator stored in the hash', async () => {
      const key = `${prefix}usage:tenant_junk:2025-09`;
      await admin.hset(key, '__total__', '7.5', 'op:/verify', 'abc', 'op:/extract', '-3', 'note', 'x');
      expect(await store.usage('tenant_junk', PERIOD)).toEqual({ total: 7, endpoints: { '/verify': 0, '/extract': 0 } });
      const r = await store.checkAndReserve(meteredRequest('tenant_junk', { totalLimit: 100, thresholdPercents: [5] }));
      expect(r.quota).toEqual({
        allowed: true,
        endpointUsed: 1,
        totalUsed: 8,
        blockedBy: null,
        crossed: [
          { scope: 'endpoint', percent: 5, usage: 1, limit: 10 },
          { scope: 'total', percent: 5, usage: 8, limit: 100 },
        ],
      });
      expect(await admin.hgetall(key)).toEqual({ __total__: '8', 'op:/verify': '1', 'op:/extract': '-3', note: 'x' });
      await admin.hset(key, 'op:/verify', 'junk');
      await store.release('tenant_junk', PERIOD, '/verify', 1);
      expect(await admin.hget(key, 'op:/verify')).toBe('0');
    });

    it('uses EVALSHA, one command (one round trip) per checkAndReserve', async () => {
      const lua = fs.readFileSync(new URL('../../src/store/check-and-reserve.lua', import.meta.url), 'utf8');
      const sha = createHash('sha1').update(lua).digest('hex');
      // The first call on a connection may send the script itself (EVAL); after it the script is cached.
      await store.checkAndReserve(readRequest('tenant_rt', 100, NOW));
      expect(await admin.script('EXISTS', sha)).toEqual([1]);

      const info = String(await store.redis.client('INFO'));
      const addr = /(?:^|\s)addr=(\S+)/.exec(info)?.[1];
      expect(addr).toBeDefined();
      const monitor = await admin.monitor();
      const seen: string[][] = [];
      monitor.on('monitor', (_time: string, args: string[], source: string) => {
        if (source === addr) seen.push(args);
      });
      try {
        const calls = 5;
        for (let i = 0; i < calls; i++) {
          await store.checkAndReserve({ ...meteredRequest('tenant_rt'), readRate: { limit: 100, windowMs: 60_000 } });
        }
        for (let waited = 0; seen.length < calls && waited < 2_000; waited += 20) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        await new Promise((resolve) => setTimeout(resolve, 100)); // anything extra would show up by now
        expect(seen.map((args) => [args[0]?.toLowerCase(), args[1]])).toEqual(
          Array.from({ length: calls }, () => ['evalsha', sha]),
        );
      } finally {
        monitor.disconnect();
      }
    });

    it('keeps the quota exact when several clients race', async () => {
      const stores = [store, newStore(), newStore(), newStore()];
      await admin.hset(`${prefix}usage:tenant_race:2025-09`, '__total__', '90', 'op:/verify', '90');
      const results = await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          stores[i % stores.length]!.checkAndReserve(meteredRequest('tenant_race', { endpointLimit: 100 })),
        ),
      );
      expect(results.filter((r) => r.quota?.allowed)).toHaveLength(10);
      expect(await admin.hgetall(`${prefix}usage:tenant_race:2025-09`)).toEqual({
        __total__: '100',
        'op:/verify': '100',
      });
    });
  });
});

describe('redis store, server unreachable', () => {
  it('rejects quickly instead of hanging, and survives connection errors', async () => {
    const errors: Error[] = [];
    // ioredis reports an 'error' event nobody listens to on console.error ("Unhandled error event").
    const consoleError = vi.spyOn(console, 'error');
    // Port 1 refuses connections; the store's default timeout (100 ms) applies.
    const store = createRedisStore({ url: 'redis://127.0.0.1:1', onError: (err) => errors.push(err) });
    await expectUnreachableStoreFailsFast(store, errors, consoleError);
  });

  it('rejects within the timeout when the server accepts connections but never answers', async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as net.AddressInfo;
    const store = createRedisStore({ url: `redis://127.0.0.1:${port}` });
    try {
      for (let i = 0; i < 2; i++) {
        const started = performance.now();
        await expect(store.checkAndReserve(readRequest('t1', 10, NOW))).rejects.toThrow(/Redis|timed out/i);
        expect(performance.now() - started).toBeLessThan(500);
      }
    } finally {
      await store.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});

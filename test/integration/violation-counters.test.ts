// The shared violation counters on a standalone Redis (src/alerts/violations.ts, add-counters.lua): a flush's
// counters go to Redis as one script call per chunk, each counter is added exactly once even when another in
// its chunk cannot be, and each gets its lifetime. The Cluster path has its own tests
// (test/contract/redis-cluster-store.test.ts).
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COUNTERS_PER_CALL, PartialCountError, redisWindowCounter, violationKey, type WindowCounterEntry } from '../../src/alerts/violations.js';
import { dropKeysWithPrefix, hasRedis, testPrefix, TEST_REDIS_URL } from '../helpers/services.js';

const redisUp = await hasRedis();
const WINDOW_START = Date.UTC(2026, 11, 5, 4, 0, 0);

describe.skipIf(!redisUp)('violation counters on Redis', () => {
  const prefix = testPrefix('violation-counters');
  let redis: Redis;
  let monitor: Redis;

  beforeAll(() => {
    redis = new Redis(TEST_REDIS_URL);
    monitor = new Redis(TEST_REDIS_URL);
  });
  afterAll(async () => {
    await dropKeysWithPrefix(redis, prefix);
    redis.disconnect();
    monitor.disconnect();
  });

  const entries = (n: number, ttlMs = 90_000): WindowCounterEntry[] =>
    Array.from({ length: n }, (_, i) => ({ key: violationKey(prefix, `tenant_${i}`, WINDOW_START), delta: i + 1, ttlMs }));

  /** The commands a client sent that name one of our keys (MONITOR; those a script ran are told apart). */
  async function sentWhile(fn: () => Promise<unknown>): Promise<{ client: string[][]; script: string[][] }> {
    const m = await monitor.monitor();
    const client: string[][] = [];
    const script: string[][] = [];
    m.on('monitor', (_time: string, args: string[], source: string) => {
      if (args[0]?.toLowerCase() === 'ping' || !args.some((a) => a.startsWith(prefix))) return;
      (source === 'lua' ? script : client).push(args);
    });
    try {
      await fn();
      // MONITOR's feed may trail the replies: a PING seen in it marks the end of what was sent before.
      const seen = new Promise<void>((resolve) => {
        m.on('monitor', (_t: string, args: string[]) => {
          if (args[0]?.toLowerCase() === 'ping' && args[1] === `${prefix}end`) resolve();
        });
      });
      await redis.ping(`${prefix}end`);
      await seen;
    } finally {
      m.disconnect();
    }
    return { client, script };
  }

  it('adds a flush of many counters in one script call per chunk, each with its lifetime', async () => {
    const n = 2 * COUNTERS_PER_CALL + 50;
    const counter = redisWindowCounter(redis);
    // Once first, so Redis has the script: the very first EVALSHA of a fresh Redis is answered NOSCRIPT and
    // resent as EVAL (defineCommand), which would double the calls counted below.
    await counter.add([{ key: `${prefix}warm`, delta: 1, ttlMs: 60_000 }]);
    let totals: number[] = [];
    const sent = await sentWhile(async () => {
      totals = await counter.add(entries(n));
    });
    expect(totals).toEqual(entries(n).map((e) => e.delta));
    // Three calls, not an INCRBY and a PEXPIRE per counter.
    expect(sent.client.filter((args) => ['evalsha', 'eval'].includes(args[0]?.toLowerCase() ?? ''))).toHaveLength(3);
    expect(sent.client.filter((args) => ['incrby', 'pexpire'].includes(args[0]?.toLowerCase() ?? ''))).toEqual([]);
    expect(sent.script.filter((args) => args[0]?.toLowerCase() === 'incrby')).toHaveLength(n);

    // Added again: the totals grow, and every counter has the lifetime it was given.
    expect(await counter.add(entries(n, 120_000))).toEqual(entries(n).map((e) => 2 * e.delta));
    const ttls = await Promise.all(entries(n).map((e) => redis.pttl(e.key)));
    for (const ttl of ttls) {
      expect(ttl).toBeGreaterThan(100_000);
      expect(ttl).toBeLessThanOrEqual(120_000);
    }
  });

  it('adds every other counter when one cannot be, and says which one was not', async () => {
    const good = entries(COUNTERS_PER_CALL + 5).map((e) => ({ ...e, key: `${e.key}:partial` }));
    // A counter that INCRBY refuses (it holds a word), in the middle of the first chunk.
    const bad = `${prefix}violations:not-a-count`;
    await redis.set(bad, 'x');
    const batch = [...good.slice(0, 10), { key: bad, delta: 1, ttlMs: 60_000 }, ...good.slice(10)];
    const err = await redisWindowCounter(redis)
      .add(batch)
      .then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(PartialCountError);
    const totals = (err as PartialCountError).totals;
    expect(totals[10]).toBeNull();
    expect(totals.filter((t) => t === null)).toHaveLength(1);
    expect(totals.filter((t) => t !== null)).toEqual(good.map((e) => e.delta));
    // Those reported as added were added once, including those after the bad one in its chunk; it is unchanged.
    expect((await redis.mget(...good.map((e) => e.key))).map(Number)).toEqual(good.map((e) => e.delta));
    expect(await redis.get(bad)).toBe('x');
    expect(await redis.pttl(bad)).toBe(-1);
  });

  it('throws, and adds nothing, when Redis cannot be reached', async () => {
    const down = new Redis({ port: 1, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
    try {
      const err = await redisWindowCounter(down)
        .add(entries(3))
        .then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(err).not.toBeInstanceOf(PartialCountError);
    } finally {
      down.disconnect();
    }
  });
});

import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { ResolvedKey } from '../../src/core/types.js';
import { KeyCache } from '../../src/directory/key-cache.js';
import type { TenantDirectory } from '../../src/directory/types.js';
import { FREE, resolved, tenant } from '../helpers/fixtures.js';

// An in-memory directory: the cache's logic (TTL, negative entries, single flight, refresh on version
// change, stale-while-error) is tested here; the Postgres directory has its own integration tests.
class MemoryDirectory implements TenantDirectory {
  keys = new Map<string, ResolvedKey>();
  v = 1n;
  calls = 0;
  failing = false;
  async resolveMany(hashes: readonly string[]) {
    this.calls++;
    if (this.failing) throw new Error('database down');
    await new Promise((r) => setTimeout(r, 5));
    return new Map(hashes.flatMap((h) => (this.keys.has(h) ? [[h, this.keys.get(h)!] as const] : [])));
  }
  async version() {
    if (this.failing) throw new Error('database down');
    return this.v;
  }
  async ping() {}
  async close() {}
}

function setup() {
  const dir = new MemoryDirectory();
  const clock = { now: 1_000_000 };
  const cache = new KeyCache(dir, { ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 3, pollMs: 1000, now: () => clock.now, logger: pino({ level: 'silent' }) });
  return { dir, clock, cache };
}

const A = resolved(tenant('a', 'free'), FREE);

describe('KeyCache', () => {
  it('loads once, then answers from memory without touching the directory', async () => {
    const { dir, cache } = setup();
    dir.keys.set('h1', A);
    expect(cache.peek('h1')).toBeUndefined();
    expect(await cache.load('h1')).toBe(A);
    for (let i = 0; i < 100; i++) expect(cache.peek('h1')).toBe(A);
    expect(dir.calls).toBe(1);
  });

  it('coalesces concurrent misses on one key into one query', async () => {
    const { dir, cache } = setup();
    dir.keys.set('h1', A);
    const all = await Promise.all(Array.from({ length: 50 }, () => cache.load('h1')));
    expect(all.every((v) => v === A)).toBe(true);
    expect(dir.calls).toBe(1);
  });

  it('caches unknown keys negatively for a short time only', async () => {
    const { dir, clock, cache } = setup();
    expect(await cache.load('nope')).toBeNull();
    expect(cache.peek('nope')).toBeNull();
    clock.now += 5_001;
    expect(cache.peek('nope')).toBeUndefined();
    expect(dir.calls).toBe(1);
  });

  it('serves a stale entry while refreshing it, and keeps serving it while the directory is down', async () => {
    const { dir, clock, cache } = setup();
    dir.keys.set('h1', A);
    await cache.load('h1');
    clock.now += 61_000;
    dir.failing = true;
    expect(cache.peek('h1')).toBe(A);
    await new Promise((r) => setTimeout(r, 20));
    expect(cache.peek('h1')).toBe(A);
    expect(cache.stats.loadErrors).toBeGreaterThan(0);
  });

  it('refreshes every cached key when the directory version moves', async () => {
    const { dir, cache } = setup();
    dir.keys.set('h1', A);
    await cache.load('h1');
    await cache.load('gone');
    await cache.poll(); // baseline
    const revoked = { ...A, revokedAtMs: 5 };
    dir.keys.set('h1', revoked);
    dir.keys.set('gone', A);
    dir.v = 2n;
    await cache.poll();
    expect(cache.peek('h1')).toBe(revoked);
    // Negative entries are dropped so a newly created key works at once.
    expect(cache.peek('gone')).toBeUndefined();
    expect(cache.stats.refreshes).toBe(1);
  });

  it('survives a failing poll and logs the outage once', async () => {
    const { dir, cache } = setup();
    dir.failing = true;
    await cache.poll();
    await cache.poll();
    dir.failing = false;
    await cache.poll();
    expect(cache.stats.refreshes).toBe(0);
  });

  it('bounds its size', async () => {
    const { dir, cache } = setup();
    for (const h of ['a', 'b', 'c', 'd', 'e']) {
      dir.keys.set(h, A);
      await cache.load(h);
    }
    expect(cache.size).toBe(3);
    expect(cache.peek('a')).toBeUndefined();
    expect(cache.peek('e')).toBe(A);
  });
});

describe('KeyCache eviction and races with changes', () => {
  it('keeps known keys however many unknown keys come', async () => {
    const { dir, cache } = setup();
    for (const h of ['a', 'b', 'c']) dir.keys.set(h, A);
    for (const h of ['a', 'b', 'c']) await cache.load(h);
    for (let i = 0; i < 20; i++) await cache.load(`made-up-${i}`);
    for (const h of ['a', 'b', 'c']) expect(cache.peek(h)).toBe(A);
    expect(cache.peek('made-up-19')).toBeNull(); // the unknown ones are bounded among themselves
    expect(cache.peek('made-up-0')).toBeUndefined();
    expect(cache.size).toBe(6);
  });

  it('evicts the key not used lately: a key reloaded because it is in use moves to the back', async () => {
    const { dir, clock, cache } = setup();
    for (const h of ['a', 'b', 'c', 'd']) dir.keys.set(h, A);
    for (const h of ['a', 'b', 'c']) await cache.load(h);
    clock.now += 60_000; // past the TTL: a Check of 'a' serves it and reloads it
    expect(cache.peek('a')).toBe(A);
    await new Promise((r) => setTimeout(r, 20));
    await cache.load('d');
    expect(cache.peek('b')).toBeUndefined();
    expect(cache.peek('a')).toBe(A);
  });

  it('applies a change committed while it preloads, at the first poll', async () => {
    const { dir, cache } = setup();
    dir.keys.set('a', A);
    const revoked = { ...A, revokedAtMs: 5 };
    (dir as TenantDirectory).resolveAll = async () => {
      const read = new Map([['a', A]]); // the rows as the preload's query saw them
      dir.keys.set('a', revoked); // committed meanwhile
      dir.v += 1n;
      return read;
    };
    await cache.warm();
    expect(cache.peek('a')).toBe(A);
    await cache.poll();
    expect(cache.peek('a')).toBe(revoked);
  });

  it('does not cache what a load read before a change it finished after', async () => {
    const { dir, cache } = setup();
    dir.keys.set('a', A);
    await cache.poll(); // baseline
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const resolveMany = dir.resolveMany.bind(dir);
    dir.resolveMany = async (hashes) => {
      const read = await resolveMany(hashes); // the rows as they were when the query ran
      await gate;
      return read;
    };
    const slow = cache.load('a');
    await new Promise((r) => setTimeout(r, 20));
    const revoked = { ...A, revokedAtMs: 5 };
    dir.keys.set('a', revoked);
    dir.v += 1n;
    dir.resolveMany = resolveMany;
    await cache.poll(); // the change is seen ('a' was not cached yet: nothing to reload)
    release();
    expect(await slow).toBe(A); // the Check in flight at the change gets what was read
    expect(cache.peek('a')).toBeUndefined(); // but the next one reads it again
    expect(await cache.load('a')).toBe(revoked);
  });
});

describe('KeyCache batching and preload', () => {
  it('answers a burst of distinct cold keys with one query', async () => {
    const { dir, cache } = setup();
    const hashes = Array.from({ length: 50 }, (_, i) => `k${i}`);
    dir.keys.set('k7', A);
    const results = await Promise.all(hashes.map((h) => cache.load(h)));
    expect(dir.calls).toBe(1);
    expect(cache.stats).toMatchObject({ loads: 50, queries: 1 });
    expect(results.filter((r) => r !== null)).toEqual([A]);
  });

  it('rejects every key of a failed batch and leaves none in flight', async () => {
    const { dir, cache } = setup();
    dir.failing = true;
    const results = await Promise.allSettled(['x', 'y'].map((h) => cache.load(h)));
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    dir.failing = false;
    dir.keys.set('x', A);
    expect(await cache.load('x')).toBe(A);
  });

  it('preloads keys so that the first request of each is a hit', async () => {
    const { dir, cache } = setup();
    dir.keys.set('a', A);
    dir.keys.set('b', A);
    const all = dir.resolveMany.bind(dir);
    (dir as TenantDirectory).resolveAll = (limit) => all([...dir.keys.keys()].slice(0, limit));
    expect(await cache.warm()).toBe(2);
    expect(cache.peek('a')).toBe(A);
    expect(cache.stats.misses).toBe(0);
  });
});

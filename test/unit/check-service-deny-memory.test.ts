// The deny memory inside the Check: capacity this replica gives back itself (a reservation released after
// a late answer, counters rebuilt after Redis lost them) lifts the tenant's remembered denials at once, so
// the next Check asks the store instead of repeating a 429 the store would no longer give.
import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { hashApiKey } from '../../src/core/api-key.js';
import type { CheckInput } from '../../src/core/request.js';
import type { Tier } from '../../src/core/types.js';
import { KeyCache } from '../../src/directory/key-cache.js';
import type { TenantDirectory } from '../../src/directory/types.js';
import { CheckService } from '../../src/service/check-service.js';
import { DenyMemory } from '../../src/service/deny-memory.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { PRO, resolved, tenant } from '../helpers/fixtures.js';

const NOW = Date.UTC(2025, 8, 18, 12);
const PERIOD = '2025-09';
const KEY = 'vk_live_DENY_MEMORY_RELEASE';
const TIER: Tier = { ...PRO, readRateLimit: null, monthlyQuota: { total: null, endpoints: { '/verify': 1, '/extract': 5 } } };
const E = resolved(tenant('tenant_E', 'pro'), TIER);

async function setup() {
  const hash = hashApiKey(KEY);
  const directory: TenantDirectory = {
    resolveMany: async (hashes) => new Map(hashes.includes(hash) ? [[hash, E]] : []),
    version: async () => 1n,
    ping: async () => {},
    close: async () => {},
  };
  const logger = pino({ level: 'silent' });
  const cache = new KeyCache(directory, { ttlMs: 3_600_000, negativeTtlMs: 5000, maxEntries: 10, pollMs: 60_000, now: () => NOW, logger });
  await cache.load(hash);
  const store = createMemoryStore();
  // A hold far longer than the test: only `forget` can lift a memo here (the clock does not move).
  const memory = new DenyMemory(60_000);
  const svc = new CheckService({ cache, store, now: () => NOW, logger, timeoutMs: 1000, denyMemory: memory });
  let n = 0;
  const post = (path: string): CheckInput => ({ method: 'POST', path, key: { kind: 'present', key: KEY, header: 'x-api-key' }, requestId: `r${++n}` });
  return { svc, store, memory, post };
}

describe('CheckService with a deny memory', () => {
  it('forgets a denial once a reservation it released has given the unit back', async () => {
    const { svc, memory, post } = await setup();
    const a = post('/verify');
    const allowed = await svc.check(a);
    expect(allowed).toMatchObject({ outcome: 'allow' });
    expect(await svc.check(post('/verify'))).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED' });
    expect(memory.size).toBe(1);
    // Envoy gave up on A (its answer came too late): its unit goes back to the tenant.
    svc.abandon(allowed, a.requestId);
    await vi.waitFor(() => expect(memory.size).toBe(0));
    expect(await svc.check(post('/verify'))).toMatchObject({ outcome: 'allow' });
  });

  it('forgets the denials of counters that were lost once they are rebuilt', async () => {
    const { svc, store, memory, post } = await setup();
    expect(await svc.check(post('/verify'))).toMatchObject({ outcome: 'allow' });
    expect(await svc.check(post('/verify'))).toMatchObject({ code: 'USAGE_LIMIT_EXCEEDED' });
    expect(memory.size).toBe(1);
    // Redis loses the period's counters; a Check of another endpoint finds them missing and rebuilds them
    // (here at zero: nothing was reported), and /verify has its unit again.
    store.deleteUsage('tenant_E', PERIOD);
    expect(await svc.check(post('/extract'))).toMatchObject({ outcome: 'allow' });
    expect(svc.stats.usageRebuilds).toBe(2); // the period's first Check, and this one
    expect(memory.size).toBe(0);
    expect(await svc.check(post('/verify'))).toMatchObject({ outcome: 'allow' });
  });
});

import { describe, expect, it } from 'vitest';
import { COUNTER_GRACE_MS } from '../../src/store/keys.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import {
  NOW,
  PERIOD,
  PERIOD_END,
  SETTLEMENT_WINDOW,
  counterStoreContract,
  meteredRequest,
  readRequest,
} from './counter-store.contract.js';

counterStoreContract('memory', async () => {
  const store = createMemoryStore({ settlementWindowMs: SETTLEMENT_WINDOW });
  return {
    store,
    setUsage: async (tenantId, period, usage) => store.setUsage(tenantId, period, usage),
    deleteUsage: async (tenantId, period) => store.deleteUsage(tenantId, period),
    teardown: () => store.close(),
  };
});

describe('memory store housekeeping', () => {
  it('drops read logs, periods and flags once they have expired', async () => {
    const store = createMemoryStore();
    for (let i = 0; i < 50; i++) {
      await store.checkAndReserve(readRequest(`tenant_${i}`, 5, NOW));
      await store.checkAndReserve(meteredRequest(`tenant_${i}`, { thresholdPercents: [10] }));
    }
    expect(store.sizes()).toEqual({ readLogs: 50, periods: 50, thresholdFlags: 50, pendingSets: 50 });

    // Read logs are gone a window later; the period stays until its end plus the grace.
    const afterWindow = NOW + 10 * 60_000;
    await store.checkAndReserve(readRequest('other', 5, afterWindow));
    // Pending sets are gone two settlement windows after their last reservation (all of it settled by then).
    expect(store.sizes()).toEqual({ readLogs: 1, periods: 50, thresholdFlags: 50, pendingSets: 0 });

    const afterGrace = PERIOD_END + COUNTER_GRACE_MS;
    await store.checkAndReserve(readRequest('other', 5, afterGrace));
    expect(store.sizes()).toEqual({ readLogs: 1, periods: 0, thresholdFlags: 0, pendingSets: 0 });
    expect(await store.usage('tenant_0', PERIOD)).toEqual({ total: 0, endpoints: {} });
  });

  it('starts a period afresh once it is past its end plus the grace', async () => {
    const store = createMemoryStore();
    await store.checkAndReserve(meteredRequest('t1', { endpointLimit: 1 }));
    const late = await store.checkAndReserve(meteredRequest('t1', { endpointLimit: 1 }, PERIOD_END + COUNTER_GRACE_MS));
    expect(late.quota).toMatchObject({ allowed: true, endpointUsed: 1 });
  });

  it('leaves nothing half-done when a request is invalid', async () => {
    const store = createMemoryStore();
    const bad = { ...meteredRequest('t1', { thresholdPercents: [80.5] }), readRate: { limit: 5, windowMs: 60_000 } };
    await expect(store.checkAndReserve(bad)).rejects.toThrow(RangeError);
    expect(store.sizes()).toEqual({ readLogs: 0, periods: 0, thresholdFlags: 0, pendingSets: 0 });
  });
});

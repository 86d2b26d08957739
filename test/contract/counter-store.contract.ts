// The behaviour every CounterStore must have, run against each implementation. Time is always passed in
// (nowMs), never slept on, so window edges are tested to the millisecond.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { settlementHorizon } from '../../src/store/keys.js';
import type {
  CheckAndReserveRequest,
  CheckAndReserveResult,
  CounterStore,
  QuotaRequest,
  SettleRequest,
  ThresholdCrossing,
} from '../../src/store/types.js';

export interface UsageSeed {
  readonly total?: number;
  readonly endpoints?: Readonly<Record<string, number>>;
}

export interface CounterStoreHarness {
  /** Built with `settlementWindowMs: SETTLEMENT_WINDOW`. */
  readonly store: CounterStore;
  /** What an operator's `redis-cli hset usage:<tenant>:<period> __total__ N op:<endpoint> N` does. */
  setUsage(tenantId: string, period: string, usage: UsageSeed): Promise<void>;
  /** What losing a period's counters does (`redis-cli del usage:<tenant>:<period>`, a flush, a failover). */
  deleteUsage(tenantId: string, period: string): Promise<void>;
  teardown(): Promise<void>;
}

// Inside the seed's period (its 429 carries X-RateLimit-Reset 1758217909).
export const NOW = Date.UTC(2025, 8, 18, 17, 50, 0);
export const PERIOD = '2025-09';
export const PERIOD_END = Date.UTC(2025, 9, 1);
const WINDOW = 60_000;
/** The settlement window every harness builds its store with. */
export const SETTLEMENT_WINDOW = 120_000;

let lastRequestId = 0;
const nextRequestId = () => `req-${++lastRequestId}`;

export function readRequest(tenantId: string, limit: number, nowMs: number, windowMs = WINDOW): CheckAndReserveRequest {
  return { tenantId, requestId: nextRequestId(), nowMs, readRate: { limit, windowMs }, quota: null };
}

/** A metered Check; unless given, a fresh request id, and a missing usage hash is created (as before rebuilds). */
export function meteredRequest(
  tenantId: string,
  quota: Partial<QuotaRequest> = {},
  nowMs = NOW,
  requestId = nextRequestId(),
): CheckAndReserveRequest {
  return {
    tenantId,
    requestId,
    nowMs,
    readRate: null,
    quota: {
      period: PERIOD,
      periodEndMs: PERIOD_END,
      endpoint: '/verify',
      endpointLimit: 10,
      totalLimit: null,
      thresholdPercents: [],
      ifUsageMissing: 'create',
      ...quota,
    },
  };
}

/** An access-log entry for the reservation `requestId` made by meteredRequest (defaults: /verify in PERIOD). */
export function settleEntry(tenantId: string, requestId: string, failed: boolean, endpoint = '/verify'): SettleRequest {
  return { tenantId, period: PERIOD, endpoint, requestId, failed };
}

function crossings(results: readonly CheckAndReserveResult[]): ThresholdCrossing[] {
  return results.flatMap((r) => r.quota?.crossed ?? []);
}

export function counterStoreContract(name: string, makeHarness: () => Promise<CounterStoreHarness>): void {
  describe(`CounterStore contract: ${name}`, () => {
    let h: CounterStoreHarness;
    let store: CounterStore;
    beforeEach(async () => {
      h = await makeHarness();
      store = h.store;
    });
    afterEach(async () => {
      await h.teardown();
    });

    describe('read rate', () => {
      it('admits exactly `limit` requests in the window, then denies with the count and the oldest time', async () => {
        for (let i = 0; i < 10; i++) {
          const r = await store.checkAndReserve(readRequest('tenant_C_789', 10, NOW + i * 100));
          expect(r).toEqual({ readRate: { allowed: true, count: i + 1, oldestMs: NOW }, quota: null });
        }
        for (const at of [NOW + 5_000, NOW + 6_000]) {
          const r = await store.checkAndReserve(readRequest('tenant_C_789', 10, at));
          expect(r).toEqual({ readRate: { allowed: false, count: 10, oldestMs: NOW }, quota: null });
        }
      });

      it('frees a slot exactly windowMs after the oldest request, not one ms before', async () => {
        await store.checkAndReserve(readRequest('t1', 2, NOW));
        await store.checkAndReserve(readRequest('t1', 2, NOW + 10));
        const early = await store.checkAndReserve(readRequest('t1', 2, NOW + WINDOW - 1));
        expect(early.readRate).toEqual({ allowed: false, count: 2, oldestMs: NOW });
        const edge = await store.checkAndReserve(readRequest('t1', 2, NOW + WINDOW));
        expect(edge.readRate).toEqual({ allowed: true, count: 2, oldestMs: NOW + 10 });
      });

      it('does not record denied requests', async () => {
        for (let i = 0; i < 3; i++) await store.checkAndReserve(readRequest('t1', 3, NOW + i));
        for (let i = 0; i < 20; i++) {
          const r = await store.checkAndReserve(readRequest('t1', 3, NOW + 1_000 + i));
          expect(r.readRate).toEqual({ allowed: false, count: 3, oldestMs: NOW });
        }
        // Once the three admitted requests have left the window, it is empty: the denials left no trace.
        const r = await store.checkAndReserve(readRequest('t1', 3, NOW + 2 + WINDOW));
        expect(r.readRate).toEqual({ allowed: true, count: 1, oldestMs: NOW + 2 + WINDOW });
      });

      it('with a limit of 0 denies everything, with an empty window', async () => {
        const r = await store.checkAndReserve(readRequest('t1', 0, NOW));
        expect(r.readRate).toEqual({ allowed: false, count: 0, oldestMs: null });
      });

      it('answers null for what was not requested', async () => {
        const r = await store.checkAndReserve({ tenantId: 't1', requestId: 'r', nowMs: NOW, readRate: null, quota: null });
        expect(r).toEqual({ readRate: null, quota: null });
      });

      it('reserves no quota when the read rate denies', async () => {
        const both = (nowMs: number): CheckAndReserveRequest => ({
          ...meteredRequest('t1', {}, nowMs),
          readRate: { limit: 1, windowMs: WINDOW },
        });
        const first = await store.checkAndReserve(both(NOW));
        expect(first.readRate?.allowed).toBe(true);
        expect(first.quota?.allowed).toBe(true);
        const second = await store.checkAndReserve(both(NOW + 1));
        expect(second).toEqual({ readRate: { allowed: false, count: 1, oldestMs: NOW }, quota: null });
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
      });

      it('does not record a read that the quota refuses', async () => {
        // A metered GET: the window has room for two reads, the endpoint for one unit.
        const meteredRead = (nowMs: number): CheckAndReserveRequest => ({
          ...meteredRequest('t1', { endpointLimit: 1 }, nowMs),
          readRate: { limit: 2, windowMs: WINDOW },
        });
        const first = await store.checkAndReserve(meteredRead(NOW));
        expect(first.readRate).toEqual({ allowed: true, count: 1, oldestMs: NOW });
        expect(first.quota?.allowed).toBe(true);
        for (let i = 1; i <= 5; i++) {
          const refused = await store.checkAndReserve(meteredRead(NOW + i));
          expect(refused.quota).toMatchObject({ allowed: false, blockedBy: 'endpoint', endpointUsed: 1 });
          expect(refused.readRate).toEqual({ allowed: true, count: 1, oldestMs: NOW });
        }
        // The five refused reads left no trace: an unmetered read still finds the second slot free.
        const unmetered = await store.checkAndReserve(readRequest('t1', 2, NOW + 10));
        expect(unmetered.readRate).toEqual({ allowed: true, count: 2, oldestMs: NOW });
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
      });

      it('reports an empty window to a read the quota refuses first', async () => {
        const refused = await store.checkAndReserve({ ...meteredRequest('t1', { endpointLimit: 0 }), readRate: { limit: 2, windowMs: WINDOW } });
        expect(refused).toMatchObject({ readRate: { allowed: true, count: 0, oldestMs: null }, quota: { allowed: false } });
      });
    });

    describe('quota', () => {
      it('admits up to the endpoint limit, then denies with blockedBy endpoint', async () => {
        for (let i = 1; i <= 3; i++) {
          const r = await store.checkAndReserve(meteredRequest('t1', { endpointLimit: 3 }));
          expect(r).toEqual({
            readRate: null,
            quota: { allowed: true, endpointUsed: i, totalUsed: i, blockedBy: null, crossed: [] },
          });
        }
        const denied = await store.checkAndReserve(meteredRequest('t1', { endpointLimit: 3 }));
        expect(denied.quota).toEqual({ allowed: false, endpointUsed: 3, totalUsed: 3, blockedBy: 'endpoint', crossed: [] });
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 3, endpoints: { '/verify': 3 } });
      });

      it('denies with blockedBy total when the total cap is reached and the endpoint still has room', async () => {
        const q = (endpoint: string) => meteredRequest('t1', { endpoint, endpointLimit: 10, totalLimit: 5 });
        for (let i = 0; i < 3; i++) expect((await store.checkAndReserve(q('/verify'))).quota?.allowed).toBe(true);
        for (let i = 0; i < 2; i++) expect((await store.checkAndReserve(q('/extract'))).quota?.allowed).toBe(true);
        const denied = await store.checkAndReserve(q('/verify'));
        expect(denied.quota).toEqual({ allowed: false, endpointUsed: 3, totalUsed: 5, blockedBy: 'total', crossed: [] });
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 5, endpoints: { '/verify': 3, '/extract': 2 } });
      });

      it('reports the endpoint limit first when both caps are reached', async () => {
        await h.setUsage('t1', PERIOD, { total: 5, endpoints: { '/verify': 3 } });
        const r = await store.checkAndReserve(meteredRequest('t1', { endpointLimit: 3, totalLimit: 5 }));
        expect(r.quota?.blockedBy).toBe('endpoint');
      });

      it('counts negative stored values as 0', async () => {
        await h.setUsage('t1', PERIOD, { total: -5, endpoints: { '/verify': -5 } });
        const r = await store.checkAndReserve(meteredRequest('t1'));
        expect(r.quota).toMatchObject({ allowed: true, endpointUsed: 1, totalUsed: 1 });
      });

      it('keeps periods independent', async () => {
        await h.setUsage('t1', PERIOD, { total: 10, endpoints: { '/verify': 10 } });
        expect((await store.checkAndReserve(meteredRequest('t1'))).quota?.blockedBy).toBe('endpoint');
        const october = await store.checkAndReserve(
          meteredRequest('t1', { period: '2025-10', periodEndMs: Date.UTC(2025, 10, 1), thresholdPercents: [10] }),
        );
        expect(october.quota).toEqual({
          allowed: true,
          endpointUsed: 1,
          totalUsed: 1,
          blockedBy: null,
          crossed: [{ scope: 'endpoint', percent: 10, usage: 1, limit: 10 }],
        });
        expect(await store.usage('t1', '2025-10')).toEqual({ total: 1, endpoints: { '/verify': 1 } });
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 10, endpoints: { '/verify': 10 } });
      });

      it('keeps tenants independent', async () => {
        await h.setUsage('tenant_A', PERIOD, { total: 10, endpoints: { '/verify': 10 } });
        for (let i = 0; i < 2; i++) await store.checkAndReserve(readRequest('tenant_A', 2, NOW + i));
        expect((await store.checkAndReserve(meteredRequest('tenant_A'))).quota?.allowed).toBe(false);
        expect((await store.checkAndReserve(readRequest('tenant_A', 2, NOW + 5))).readRate?.allowed).toBe(false);
        expect((await store.checkAndReserve(meteredRequest('tenant_B'))).quota?.endpointUsed).toBe(1);
        expect((await store.checkAndReserve(readRequest('tenant_B', 2, NOW + 5))).readRate?.count).toBe(1);
      });

      it('reads back with usage() what was stored', async () => {
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 0, endpoints: {} });
        await h.setUsage('t1', PERIOD, { total: 7, endpoints: { '/verify': 7, '/extract': 0 } });
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 7, endpoints: { '/verify': 7, '/extract': 0 } });
        await store.checkAndReserve(meteredRequest('t1', { endpoint: '/extract' }));
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 8, endpoints: { '/verify': 7, '/extract': 1 } });
      });
    });

    describe('thresholds', () => {
      const seedQuota = { endpointLimit: 10, thresholdPercents: [80, 90, 100] };

      it('crosses 80, 90 and 100 one call each in the seed scenario, then denies crossing nothing', async () => {
        await h.setUsage('tenant_E_111', PERIOD, { total: 7, endpoints: { '/verify': 7 } });
        const results: CheckAndReserveResult[] = [];
        for (let i = 0; i < 3; i++) results.push(await store.checkAndReserve(meteredRequest('tenant_E_111', seedQuota)));
        expect(results.map((r) => r.quota?.crossed)).toEqual([
          [{ scope: 'endpoint', percent: 80, usage: 8, limit: 10 }],
          [{ scope: 'endpoint', percent: 90, usage: 9, limit: 10 }],
          [{ scope: 'endpoint', percent: 100, usage: 10, limit: 10 }],
        ]);
        expect(await store.usage('tenant_E_111', PERIOD)).toEqual({ total: 10, endpoints: { '/verify': 10 } });
        const fourth = await store.checkAndReserve(meteredRequest('tenant_E_111', seedQuota));
        expect(fourth.quota).toEqual({ allowed: false, endpointUsed: 10, totalUsed: 10, blockedBy: 'endpoint', crossed: [] });
      });

      it('fires each threshold once across many calls', async () => {
        const q = { endpointLimit: 100, thresholdPercents: [100, 50, 80] };
        const results: CheckAndReserveResult[] = [];
        for (let i = 0; i < 150; i++) results.push(await store.checkAndReserve(meteredRequest('t1', q)));
        expect(results.filter((r) => r.quota?.allowed)).toHaveLength(100);
        expect(crossings(results)).toEqual([
          { scope: 'endpoint', percent: 50, usage: 50, limit: 100 },
          { scope: 'endpoint', percent: 80, usage: 80, limit: 100 },
          { scope: 'endpoint', percent: 100, usage: 100, limit: 100 },
        ]);
      });

      it('uses exact integer math (70% of 10 is reached at 7)', async () => {
        await h.setUsage('t1', PERIOD, { total: 6, endpoints: { '/verify': 6 } });
        const r = await store.checkAndReserve(meteredRequest('t1', { endpointLimit: 10, thresholdPercents: [70] }));
        expect(r.quota?.crossed).toEqual([{ scope: 'endpoint', percent: 70, usage: 7, limit: 10 }]);
      });

      it('fires every threshold passed at once after an operator jump, each once', async () => {
        await h.setUsage('t1', PERIOD, { total: 9, endpoints: { '/verify': 9 } });
        const jump = await store.checkAndReserve(meteredRequest('t1', seedQuota));
        expect(jump.quota?.crossed.map((c) => [c.percent, c.usage])).toEqual([
          [80, 10],
          [90, 10],
          [100, 10],
        ]);
        // Lowered by hand and climbing again: the flags of the period are already set.
        await h.setUsage('t1', PERIOD, { total: 5, endpoints: { '/verify': 5 } });
        const again: CheckAndReserveResult[] = [];
        for (let i = 0; i < 6; i++) again.push(await store.checkAndReserve(meteredRequest('t1', seedQuota)));
        expect(again.filter((r) => r.quota?.allowed)).toHaveLength(5);
        expect(crossings(again)).toEqual([]);
      });

      it('fires thresholds of the total cap with scope total', async () => {
        const q = { endpointLimit: 100, totalLimit: 20, thresholdPercents: [50] };
        await h.setUsage('t1', PERIOD, { total: 9, endpoints: { '/verify': 1 } });
        const r = await store.checkAndReserve(meteredRequest('t1', q));
        expect(r.quota?.crossed).toEqual([{ scope: 'total', percent: 50, usage: 10, limit: 20 }]);
      });
    });

    describe('release', () => {
      it('gives units back, floors at zero and does not re-fire thresholds', async () => {
        const q = { endpointLimit: 10, thresholdPercents: [20] };
        const first = [await store.checkAndReserve(meteredRequest('t1', q)), await store.checkAndReserve(meteredRequest('t1', q))];
        expect(crossings(first)).toEqual([{ scope: 'endpoint', percent: 20, usage: 2, limit: 10 }]);
        await store.checkAndReserve(meteredRequest('t1', { ...q, endpoint: '/extract' }));
        await store.release('t1', PERIOD, '/verify', 1);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 2, endpoints: { '/verify': 1, '/extract': 1 } });
        await store.release('t1', PERIOD, '/verify', 5);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 0, endpoints: { '/verify': 0, '/extract': 1 } });
        const climb = [await store.checkAndReserve(meteredRequest('t1', q)), await store.checkAndReserve(meteredRequest('t1', q))];
        expect(climb.map((r) => r.quota?.endpointUsed)).toEqual([1, 2]);
        expect(crossings(climb)).toEqual([]);
      });

      it('is a no-op for a period without usage', async () => {
        await store.release('t1', '2025-08', '/verify', 3);
        expect(await store.usage('t1', '2025-08')).toEqual({ total: 0, endpoints: {} });
      });
    });

    describe('settlement', () => {
      const reserve = (requestId: string, quota: Partial<QuotaRequest> = {}, nowMs = NOW) =>
        store.checkAndReserve(meteredRequest('t1', quota, nowMs, requestId));

      it('gives a failed request its unit back once, however often its entry comes', async () => {
        await reserve('r1');
        await reserve('r2');
        expect(await store.settle([settleEntry('t1', 'r1', true), settleEntry('t1', 'r1', true)], NOW + 1_000)).toEqual([
          'refunded',
          'unknown',
        ]);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
        expect(await store.settle([settleEntry('t1', 'r1', true)], NOW + 2_000)).toEqual(['unknown']);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
      });

      it('keeps the unit of a request the upstream answered, and settles it once', async () => {
        await reserve('r1');
        expect(await store.settle([settleEntry('t1', 'r1', false)], NOW + 1_000)).toEqual(['settled']);
        expect(await store.settle([settleEntry('t1', 'r1', true)], NOW + 2_000)).toEqual(['unknown']);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
      });

      it('settles a batch of entries of several tenants and endpoints, each on its own counters', async () => {
        await reserve('a', { endpoint: '/extract' });
        await store.checkAndReserve(meteredRequest('t2', {}, NOW, 'b'));
        await reserve('c');
        const outcomes = await store.settle(
          [settleEntry('t1', 'a', true, '/extract'), settleEntry('t2', 'b', true), settleEntry('t1', 'c', false), settleEntry('t1', 'zz', true)],
          NOW + 10,
        );
        expect(outcomes).toEqual(['refunded', 'refunded', 'settled', 'unknown']);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1, '/extract': 0 } });
        expect(await store.usage('t2', PERIOD)).toEqual({ total: 0, endpoints: { '/verify': 0 } });
        expect(await store.settle([], NOW)).toEqual([]);
      });

      it('never refunds below zero and never fires a threshold twice', async () => {
        const q = { endpointLimit: 10, thresholdPercents: [20] };
        const first = [await reserve('r1', q), await reserve('r2', q)];
        expect(crossings(first)).toEqual([{ scope: 'endpoint', percent: 20, usage: 2, limit: 10 }]);
        await h.setUsage('t1', PERIOD, { total: 0, endpoints: { '/verify': 0 } });
        expect(await store.settle([settleEntry('t1', 'r1', true)], NOW + 1)).toEqual(['refunded']);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 0, endpoints: { '/verify': 0 } });
        const climb = [await reserve('r3', q), await reserve('r4', q)];
        expect(climb.map((r) => r.quota?.endpointUsed)).toEqual([1, 2]);
        expect(crossings(climb)).toEqual([]);
      });

      it('lets a reservation stand once it is as old as the settlement window', async () => {
        await reserve('young');
        await reserve('old');
        expect(await store.settle([settleEntry('t1', 'young', true)], NOW + SETTLEMENT_WINDOW - 1)).toEqual(['refunded']);
        expect(await store.settle([settleEntry('t1', 'old', true)], NOW + SETTLEMENT_WINDOW)).toEqual(['expired']);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
        expect(await store.settle([settleEntry('t1', 'old', true)], NOW + SETTLEMENT_WINDOW)).toEqual(['unknown']);
      });

      it('prunes reservations that aged out of the window when the next one is made', async () => {
        await reserve('r1');
        await reserve('r2', {}, NOW + SETTLEMENT_WINDOW);
        expect(await store.settle([settleEntry('t1', 'r1', true)], NOW + SETTLEMENT_WINDOW)).toEqual(['unknown']);
      });

      it('keeps one pending entry for a repeated request id (its first time)', async () => {
        await reserve('dup');
        await reserve('dup', {}, NOW + 5);
        const mid = await store.settledUsage('t1', PERIOD, NOW + 10);
        expect(mid.endpoints['/verify']).toEqual({ used: 2, pending: 1, settled: 1 });
        expect(await store.settle([settleEntry('t1', 'dup', true), settleEntry('t1', 'dup', true)], NOW + 20)).toEqual([
          'refunded',
          'unknown',
        ]);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 1, endpoints: { '/verify': 1 } });
      });

      it('refunds exactly once when 100 copies of a failed entry race', async () => {
        await reserve('race');
        const outcomes = (
          await Promise.all(Array.from({ length: 100 }, () => store.settle([settleEntry('t1', 'race', true)], NOW + 1)))
        ).flat();
        expect(outcomes.filter((o) => o === 'refunded')).toHaveLength(1);
        expect(outcomes.filter((o) => o === 'unknown')).toHaveLength(99);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 0, endpoints: { '/verify': 0 } });
      });
    });

    describe('settled usage (what billing reads)', () => {
      const reserve = (requestId: string, endpoint = '/verify') =>
        store.checkAndReserve(meteredRequest('t1', { endpoint }, NOW, requestId));
      const horizon = settlementHorizon(SETTLEMENT_WINDOW);

      it('is the counter less the reservations still pending', async () => {
        for (const id of ['r1', 'r2', 'r3']) await reserve(id);
        await reserve('x1', '/extract');
        expect(await store.settledUsage('t1', PERIOD, NOW)).toEqual({
          exists: true,
          endpoints: { '/verify': { used: 3, pending: 3, settled: 0 }, '/extract': { used: 1, pending: 1, settled: 0 } },
        });
        await store.settle([settleEntry('t1', 'r1', false), settleEntry('t1', 'r2', true)], NOW + 1);
        expect((await store.settledUsage('t1', PERIOD, NOW + 1)).endpoints['/verify']).toEqual({ used: 2, pending: 1, settled: 1 });
      });

      it('counts a reservation as settled from the window plus the skew allowance on, not before', async () => {
        await reserve('r1');
        expect((await store.settledUsage('t1', PERIOD, NOW + horizon - 1)).endpoints['/verify']).toEqual({ used: 1, pending: 1, settled: 0 });
        expect((await store.settledUsage('t1', PERIOD, NOW + horizon)).endpoints['/verify']).toEqual({ used: 1, pending: 0, settled: 1 });
        // Past the window no replica refunds it any more, so billing never counts a unit that comes back.
        expect(await store.settle([settleEntry('t1', 'r1', true)], NOW + SETTLEMENT_WINDOW)).toEqual(['expired']);
      });

      it('takes operator edits as settled usage, never below zero', async () => {
        await h.setUsage('t1', PERIOD, { total: 7, endpoints: { '/verify': 7 } });
        expect(await store.settledUsage('t1', PERIOD, NOW)).toEqual({ exists: true, endpoints: { '/verify': { used: 7, pending: 0, settled: 7 } } });
        await reserve('r1');
        await h.setUsage('t1', PERIOD, { total: 0, endpoints: { '/verify': 0 } });
        expect((await store.settledUsage('t1', PERIOD, NOW)).endpoints['/verify']).toEqual({ used: 0, pending: 1, settled: 0 });
      });

      it('says when the period has no counters at all', async () => {
        expect(await store.settledUsage('t1', PERIOD, NOW)).toEqual({ exists: false, endpoints: {} });
      });
    });

    describe('lost counters', () => {
      const reportMissing = (nowMs = NOW, requestId?: string): CheckAndReserveRequest => ({
        ...meteredRequest('t1', { ifUsageMissing: 'report', thresholdPercents: [10] }, nowMs, requestId),
        readRate: { limit: 5, windowMs: WINDOW },
      });

      it('reports a missing usage hash without recording anything, not even the read', async () => {
        expect(await store.checkAndReserve(reportMissing())).toEqual({ readRate: null, quota: null, usageMissing: true });
        expect(await store.settledUsage('t1', PERIOD, NOW)).toEqual({ exists: false, endpoints: {} });
        const read = await store.checkAndReserve(readRequest('t1', 5, NOW + 1));
        expect(read.readRate).toEqual({ allowed: true, count: 1, oldestMs: NOW + 1 });
      });

      it('enforces as usual when the hash exists', async () => {
        await h.setUsage('t1', PERIOD, { total: 7, endpoints: { '/verify': 7 } });
        const r = await store.checkAndReserve(reportMissing());
        expect(r.usageMissing).toBeUndefined();
        expect(r.quota).toMatchObject({ allowed: true, endpointUsed: 8, totalUsed: 8 });
      });

      it('restores a period once, and a rebuilt count is enforced from then on', async () => {
        const rebuilt = { total: 9, endpoints: { '/verify': 6, '/extract': 3 } };
        expect(await store.restoreUsage('t1', PERIOD, rebuilt, PERIOD_END, NOW)).toBe(true);
        expect(await store.restoreUsage('t1', PERIOD, { total: 0, endpoints: { '/verify': 0 } }, PERIOD_END, NOW)).toBe(false);
        expect(await store.usage('t1', PERIOD)).toEqual(rebuilt);
        const r = await store.checkAndReserve(reportMissing(NOW, 'after'));
        expect(r.quota).toMatchObject({ allowed: true, endpointUsed: 7, totalUsed: 10 });
        expect((await store.settledUsage('t1', PERIOD, NOW)).endpoints).toEqual({
          '/verify': { used: 7, pending: 1, settled: 6 },
          '/extract': { used: 3, pending: 0, settled: 3 },
        });
      });

      it('opens a period with nothing at zero', async () => {
        expect(await store.restoreUsage('t1', PERIOD, { total: 0, endpoints: {} }, PERIOD_END, NOW)).toBe(true);
        expect(await store.settledUsage('t1', PERIOD, NOW)).toEqual({ exists: true, endpoints: {} });
        expect((await store.checkAndReserve(reportMissing())).quota).toMatchObject({ allowed: true, endpointUsed: 1 });
      });

      it('forgets reservations lost with the old hash, so they cannot take a unit off the rebuilt count', async () => {
        await store.checkAndReserve(meteredRequest('t1', {}, NOW, 'lost'));
        await store.checkAndReserve(meteredRequest('t1', { endpoint: '/extract' }, NOW, 'lost-too'));
        await h.deleteUsage('t1', PERIOD);
        const rebuilt = { total: 5, endpoints: { '/verify': 5, '/extract': 0 } };
        expect(await store.restoreUsage('t1', PERIOD, rebuilt, PERIOD_END, NOW)).toBe(true);
        expect(
          await store.settle([settleEntry('t1', 'lost', true), settleEntry('t1', 'lost-too', true, '/extract')], NOW + 1),
        ).toEqual(['unknown', 'unknown']);
        // A zero is not written, as in a period nobody has used yet.
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 5, endpoints: { '/verify': 5 } });
      });

      it('rejects counts that are not whole numbers', async () => {
        await expect(store.restoreUsage('t1', PERIOD, { total: -1, endpoints: {} }, PERIOD_END, NOW)).rejects.toThrow(RangeError);
        await expect(store.restoreUsage('t1', PERIOD, { total: 1, endpoints: { '/verify': 0.5 } }, PERIOD_END, NOW)).rejects.toThrow(
          RangeError,
        );
      });
    });

    describe('concurrency', () => {
      it('admits exactly the units left when 200 reservations race', async () => {
        await h.setUsage('t1', PERIOD, { total: 40, endpoints: { '/verify': 40 } });
        const q = { endpointLimit: 50, thresholdPercents: [80, 90, 100] };
        const results = await Promise.all(
          Array.from({ length: 200 }, () => store.checkAndReserve(meteredRequest('t1', q))),
        );
        const allowed = results.filter((r) => r.quota?.allowed);
        expect(allowed).toHaveLength(10);
        expect(allowed.map((r) => r.quota?.endpointUsed).sort((a, b) => (a ?? 0) - (b ?? 0))).toEqual([
          41, 42, 43, 44, 45, 46, 47, 48, 49, 50,
        ]);
        expect(results.filter((r) => r.quota?.blockedBy === 'endpoint')).toHaveLength(190);
        expect(await store.usage('t1', PERIOD)).toEqual({ total: 50, endpoints: { '/verify': 50 } });
        expect(crossings(results).map((c) => c.percent).sort((a, b) => a - b)).toEqual([80, 90, 100]);
      });

      it('admits exactly the read-rate limit when 200 reads race', async () => {
        const results = await Promise.all(
          Array.from({ length: 200 }, (_, i) => store.checkAndReserve(readRequest('t1', 10, NOW + (i % 7)))),
        );
        const allowed = results.filter((r) => r.readRate?.allowed);
        expect(allowed).toHaveLength(10);
        expect(allowed.map((r) => r.readRate?.count).sort((a, b) => (a ?? 0) - (b ?? 0))).toEqual([
          1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
        ]);
        const next = await store.checkAndReserve(readRequest('t1', 10, NOW + 10));
        expect(next.readRate).toMatchObject({ allowed: false, count: 10 });
      });
    });
  });
}

/**
 * A store whose Redis cannot be reached (built with `onError` pushing into `errors`) must reject every call
 * within its default timeout (100 ms), right away and again after reconnect attempts, report the refused
 * connections to the listener rather than crash the process or print ioredis's "Unhandled error event",
 * and close quickly.
 */
export async function expectUnreachableStoreFailsFast(store: CounterStore & { ping(): Promise<void>; close(): Promise<void> }, errors: readonly Error[], consoleError: ReturnType<typeof vi.spyOn>): Promise<void> {
  try {
    for (const waitMs of [0, 250]) {
      await new Promise((resolve) => setTimeout(resolve, waitMs));
      const started = performance.now();
      await expect(store.checkAndReserve(meteredRequest('t1'))).rejects.toThrow(/Redis/);
      await expect(store.ping()).rejects.toThrow(/Redis/);
      expect(performance.now() - started).toBeLessThan(500);
    }
    expect(errors.length).toBeGreaterThan(0);
    expect(consoleError).not.toHaveBeenCalled();
  } finally {
    consoleError.mockRestore();
    const started = performance.now();
    await store.close();
    expect(performance.now() - started).toBeLessThan(500);
  }
}

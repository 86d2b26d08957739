// Regression (the fuzz harness saw Redis hold more reservations than answers allowed when its calls ran past
// their deadline under load): an allowed Check whose answer comes after the gRPC deadline has not reached
// Envoy, which answered the client itself (failure_mode_allow: false) and forwarded nothing, yet the unit it
// reserved stood and was billed. The edge now gives it back when the deadline has passed.
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { CounterStore } from '../../src/store/types.js';
import { startHarness, type Harness } from '../helpers/harness.js';

const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const PRO = 'vk_live_PRO_ALMOST_FULL_KEY'; // demo tenant_E_111: /verify 10 a month

describe('an allowed Check answered after its deadline', () => {
  const inner = createMemoryStore();
  let stall = false;
  let stallBefore = '';
  const asked: string[] = [];
  // The event loop stalls between the store's answer and the reply (GC, a busy machine): the answer is late.
  const store: CounterStore = {
    ...inner,
    checkAndReserve: async (req) => {
      asked.push(req.requestId);
      // Or it stalls before the store is asked: the Checks that arrived with this one wait behind it.
      if (req.requestId === stallBefore) for (const until = Date.now() + 150; Date.now() < until; );
      const result = await inner.checkAndReserve(req);
      if (stall) for (const until = Date.now() + 150; Date.now() < until; );
      return result;
    },
  };
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness({ env: { DATA_DIR: mkdtempSync(path.join(os.tmpdir(), 'ul-late-')) }, nowMs: T0, store });
  });
  afterAll(() => h?.stop());

  const verifyUsed = async () => (await inner.usage('tenant_E_111', '2025-09')).endpoints['/verify'] ?? 0;
  const ask = (requestId: string, deadlineMs: number) =>
    h.check(buildCheckRequest({ key: PRO, method: 'POST', path: '/verify', target: '', headers: [], requestId, timeoutMs: 0 }), deadlineMs);

  it('gives back the unit it reserved; one answered in time keeps it', async () => {
    await ask('in-time', 2_000);
    expect(await verifyUsed()).toBe(1);
    stall = true;
    const late = await ask('too-late', 100).then(
      () => 'answered',
      (err: grpc.ServiceError) => grpc.status[err.code],
    );
    stall = false;
    expect(late).toBe('DEADLINE_EXCEEDED');
    await new Promise((r) => setTimeout(r, 50));
    expect(await verifyUsed()).toBe(1);
  });

  it('sheds the Checks whose deadline passed while they waited: no store call, no reservation', async () => {
    const before = { used: await verifyUsed(), shed: h.app.checkService.stats.shed, storeErrors: h.app.checkService.stats.storeErrors };
    // Sent together, the four arrive in one read; the first one's stall eats the others' 100 ms.
    stallBefore = 'first';
    asked.length = 0;
    const answers = await Promise.all(
      ['first', 'second', 'third', 'fourth'].map((id) =>
        ask(id, 100).then(
          () => 'answered',
          (err: grpc.ServiceError) => grpc.status[err.code],
        ),
      ),
    );
    stallBefore = '';
    expect(answers).toEqual(['DEADLINE_EXCEEDED', 'DEADLINE_EXCEEDED', 'DEADLINE_EXCEEDED', 'DEADLINE_EXCEEDED']);
    const shed = h.app.checkService.stats.shed - before.shed;
    expect(shed).toBeGreaterThan(0);
    // Only the Checks that were not shed asked the store, and nothing they reserved stands.
    expect(asked.length).toBe(4 - shed);
    expect(asked[0]).toBe('first');
    await new Promise((r) => setTimeout(r, 50));
    expect(await verifyUsed()).toBe(before.used);
    // Shedding is not a store failure.
    expect(h.app.checkService.stats.storeErrors).toBe(before.storeErrors);
  });
});

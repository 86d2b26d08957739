import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/logger.js';
import { EXT_AUTHZ_NAMESPACE, type StreamAccessLogsMessage } from '../../src/settlement/access-log-mapping.js';
import { SettlementService } from '../../src/settlement/access-log-service.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { CounterStore } from '../../src/store/types.js';

const NOW = Date.UTC(2025, 8, 18, 12);

function message(requestId: string, code: number): StreamAccessLogsMessage {
  const fields = {
    tenant_id: { stringValue: 't1' },
    endpoint: { stringValue: '/verify' },
    period: { stringValue: '2025-09' },
    request_id: { stringValue: requestId },
    reserved: { boolValue: true },
  };
  return {
    http_logs: {
      log_entry: [{ common_properties: { metadata: { filter_metadata: { [EXT_AUTHZ_NAMESPACE]: { fields } } } }, response: { response_code: { value: code } } }],
    },
  };
}

function setup(failures: number) {
  const memory = createMemoryStore();
  let calls = 0;
  const store: CounterStore = {
    ...memory,
    settle: async (entries, nowMs) => {
      calls++;
      if (calls <= failures) throw new Error('Redis settle timed out after 100 ms');
      return memory.settle(entries, nowMs);
    },
  };
  const lines: string[] = [];
  const sink = new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) });
  const service = new SettlementService({ store, now: () => NOW, logger: createLogger('info', sink) });
  const reserve = (requestId: string) =>
    memory.checkAndReserve({
      tenantId: 't1',
      requestId,
      nowMs: NOW,
      readRate: null,
      quota: { period: '2025-09', periodEndMs: Date.UTC(2025, 9, 1), endpoint: '/verify', endpointLimit: 10, totalLimit: null, thresholdPercents: [], ifUsageMissing: 'create' },
    });
  return { memory, service, lines, reserve, calls: () => calls };
}

describe('SettlementService', () => {
  it('tries a batch again when the store fails briefly', async () => {
    const s = setup(2);
    await s.reserve('r1');
    await s.service.settleMessage(message('r1', 503));
    expect(s.calls()).toBe(3);
    expect(s.service.stats).toMatchObject({ entries: 1, refunded: 1, dropped: 0 });
    expect(await s.memory.usage('t1', '2025-09')).toEqual({ total: 0, endpoints: { '/verify': 0 } });
  });

  it('drops a batch the store keeps failing, says so, and leaves the reservation standing', async () => {
    const s = setup(10);
    await s.reserve('r1');
    await s.service.settleMessage(message('r1', 503));
    expect(s.service.stats).toMatchObject({ entries: 1, refunded: 0, dropped: 1 });
    expect(await s.memory.usage('t1', '2025-09')).toEqual({ total: 1, endpoints: { '/verify': 1 } });
    expect(s.lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([
      expect.objectContaining({ level: 50, event: 'settlement.failed', code: 'CacheError', entries: 1 }),
    ]);
  });
});

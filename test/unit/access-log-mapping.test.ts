import { describe, expect, it } from 'vitest';
import {
  EXT_AUTHZ_NAMESPACE,
  entriesOf,
  fromAccessLogEntry,
  upstreamFailed,
  type HttpAccessLogEntryMessage,
} from '../../src/settlement/access-log-mapping.js';

function entry(fields: Record<string, { stringValue?: string; boolValue?: boolean }> | null, code?: number): HttpAccessLogEntryMessage {
  return {
    ...(fields === null ? {} : { common_properties: { metadata: { filter_metadata: { [EXT_AUTHZ_NAMESPACE]: { fields } } } } }),
    response: code === undefined ? {} : { response_code: { value: code } },
  };
}

const reserved = {
  tenant_id: { stringValue: 'tenant_E_111' },
  tier: { stringValue: 'pro' },
  endpoint: { stringValue: '/verify' },
  period: { stringValue: '2025-09' },
  request_id: { stringValue: 'req-1' },
  reserved: { boolValue: true },
  degraded: { boolValue: false },
};

describe('fromAccessLogEntry', () => {
  it('settles a reserved request the upstream answered', () => {
    expect(fromAccessLogEntry(entry(reserved, 200))).toEqual({
      kind: 'settle',
      request: { tenantId: 'tenant_E_111', endpoint: '/verify', period: '2025-09', requestId: 'req-1', failed: false },
    });
  });

  it.each([
    [500, true],
    [503, true],
    [599, true],
    [0, true],
    [undefined, true],
    [404, false],
    [429, false],
    [499, false],
    [204, false],
  ])('response code %s: failed = %s', (code, failed) => {
    const m = fromAccessLogEntry(entry(reserved, code));
    expect(m.kind === 'settle' && m.request.failed).toBe(failed);
  });

  it('skips entries without metadata, without a reservation, or with metadata it did not write', () => {
    expect(fromAccessLogEntry(entry(null, 503))).toEqual({ kind: 'skip', reason: 'no_metadata' });
    expect(fromAccessLogEntry(undefined)).toEqual({ kind: 'skip', reason: 'no_metadata' });
    expect(fromAccessLogEntry(entry({ ...reserved, reserved: { boolValue: false } }, 503))).toEqual({ kind: 'skip', reason: 'not_reserved' });
    expect(fromAccessLogEntry(entry({ ...reserved, reserved: { stringValue: 'true' } }, 503))).toEqual({ kind: 'skip', reason: 'not_reserved' });
    for (const broken of [
      { ...reserved, request_id: { stringValue: '' } },
      { ...reserved, tenant_id: { boolValue: true } },
      { ...reserved, period: { stringValue: '2025-13' } },
      { ...reserved, endpoint: { stringValue: 'x'.repeat(300) } },
    ]) {
      expect(fromAccessLogEntry(entry(broken, 503))).toEqual({ kind: 'skip', reason: 'malformed' });
    }
  });

  it('reads no metadata from other filters', () => {
    const other: HttpAccessLogEntryMessage = {
      common_properties: { metadata: { filter_metadata: { 'envoy.lb': { fields: reserved } } } },
      response: { response_code: { value: 503 } },
    };
    expect(fromAccessLogEntry(other)).toEqual({ kind: 'skip', reason: 'no_metadata' });
  });
});

describe('upstreamFailed and entriesOf', () => {
  it('treats no response as a failure', () => {
    expect(upstreamFailed(undefined)).toBe(true);
    expect(upstreamFailed(0)).toBe(true);
    expect(upstreamFailed(302)).toBe(false);
  });
  it('reads HTTP entries only', () => {
    expect(entriesOf({ tcp_logs: { log_entry: [{}] } })).toEqual([]);
    expect(entriesOf({ http_logs: { log_entry: [entry(reserved, 200)] } })).toHaveLength(1);
    expect(entriesOf(null)).toEqual([]);
  });
});

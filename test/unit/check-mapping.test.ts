import { describe, expect, it } from 'vitest';
import { deny, type Allow } from '../../src/core/decide.js';
import { denialBody, toCheckResponse } from '../../src/grpc/check-mapping.js';
import { fromCheckRequest } from '../helpers/full-check-request.js';

describe('fromCheckRequest', () => {
  it('reads method, path, id and lower-cased headers', () => {
    const raw = fromCheckRequest({ attributes: { request: { http: { id: 'i', method: 'GET', path: '/p?q', headers: { 'X-Api-Key': 'k' } } } } });
    expect(raw).toEqual({ method: 'GET', path: '/p?q', id: 'i', headers: new Map([['x-api-key', 'k']]) });
  });

  it('falls back to header_map, raw_value bytes included, joining repeats', () => {
    const raw = fromCheckRequest({
      attributes: {
        request: {
          http: {
            method: 'GET',
            path: '/',
            header_map: { headers: [{ key: 'x-api-key', raw_value: new TextEncoder().encode('k1') }, { key: 'X-Api-Key', value: 'k2' }, { key: 'a' }] },
          },
        },
      },
    });
    expect(raw.headers.get('x-api-key')).toBe('k1,k2');
    expect(raw.headers.get('a')).toBe('');
  });

  it('tolerates anything missing', () => {
    for (const req of [null, undefined, {}, { attributes: {} }, { attributes: { request: {} } }, { attributes: { request: { http: {} } } }]) {
      expect(fromCheckRequest(req)).toEqual({ method: undefined, path: undefined, id: undefined, headers: new Map() });
    }
  });
});

describe('toCheckResponse', () => {
  const allow: Allow = {
    outcome: 'allow', code: 'OK', grpcCode: 0, tenantId: 't', tierId: 'free', keyHeader: 'x-api-key',
    rateLimit: { limit: 10, remaining: 9, resetEpochS: 100, resetAtMs: 99_500, retryAfterS: null },
    metering: { endpoint: '/verify', period: '2025-09' }, degraded: false, events: [],
  };

  it('allow: tenant headers overwrite, key and degraded marker removed, metadata for settlement', () => {
    const r = toCheckResponse(allow, 'rid');
    expect(r.status).toEqual({ code: 0 });
    expect(r.ok_response?.headers_to_remove).toEqual(['x-api-key', 'x-usage-limiter-degraded']);
    expect(r.ok_response?.response_headers_to_add.map((h) => [h.header.key, h.header.value])).toEqual([
      ['X-RateLimit-Limit', '10'], ['X-RateLimit-Remaining', '9'], ['X-RateLimit-Reset', '100'],
    ]);
    const all = [...(r.ok_response?.headers ?? []), ...(r.ok_response?.response_headers_to_add ?? [])];
    expect(all.every((h) => h.append_action === 'OVERWRITE_IF_EXISTS_OR_ADD' && !('append' in h))).toBe(true);
    expect(r.dynamic_metadata?.fields).toEqual({
      tenant_id: { stringValue: 't' }, tier: { stringValue: 'free' }, request_id: { stringValue: 'rid' },
      reserved: { boolValue: true }, degraded: { boolValue: false },
      endpoint: { stringValue: '/verify' }, period: { stringValue: '2025-09' },
    });
  });

  it('allow: a key sent in both headers leaves the request in both', () => {
    const r = toCheckResponse({ ...allow, keyHeader: 'both' }, 'rid');
    expect(r.ok_response?.headers_to_remove).toEqual(['x-api-key', 'authorization', 'x-usage-limiter-degraded']);
  });

  it('allow degraded: marks the upstream request', () => {
    const r = toCheckResponse({ ...allow, degraded: true, rateLimit: null, metering: null }, 'rid');
    expect(r.ok_response?.headers.map((h) => h.header.key)).toContain('x-usage-limiter-degraded');
    expect(r.ok_response?.headers_to_remove).toEqual(['x-api-key']);
    expect(r.ok_response?.response_headers_to_add).toEqual([]);
  });

  it('deny: HTTP status, JSON body with requestId, content type, Retry-After on 503', () => {
    const r = toCheckResponse(deny('USAGE_CHECK_UNAVAILABLE'), 'rid');
    expect(r.status.code).toBe(14);
    expect(r.denied_response?.status.code).toBe(503);
    expect(JSON.parse(r.denied_response?.body ?? '')).toEqual({ code: 'USAGE_CHECK_UNAVAILABLE', message: 'Usage check temporarily unavailable. Please retry shortly.', requestId: 'rid' });
    expect(r.denied_response?.headers.map((h) => [h.header.key, h.header.value])).toEqual([
      ['Retry-After', '1'], ['Content-Type', 'application/json; charset=utf-8'],
    ]);
  });

  it('deny body escapes whatever the request id holds', () => {
    const r = toCheckResponse(deny('MISSING_API_KEY'), 'a"b\\c');
    expect(JSON.parse(r.denied_response?.body ?? '').requestId).toBe('a"b\\c');
  });
});

describe('denialBody', () => {
  it('is the JSON of {code, message, requestId}, whatever the parts hold', () => {
    const cases: Array<[string, string, string]> = [
      ['READ_RATE_LIMIT_EXCEEDED', 'Too many read requests. Please slow down.', '925c104a-482d-4b6c-bd08-02a8d031e6c1'],
      ['READ_RATE_LIMIT_EXCEEDED', 'Too many read requests. Please slow down.', 'id"with\\quotes</script>'],
      // The same code with another message (the cached head must not be reused for it).
      ['READ_RATE_LIMIT_EXCEEDED', 'another "message"', 'r1'],
      ['READ_RATE_LIMIT_EXCEEDED', 'Too many read requests. Please slow down.', 'r2'],
      ['CODE_\u2028', 'line\nbreak', ''],
    ];
    for (const [code, message, requestId] of cases) {
      const body = denialBody(code, message, requestId);
      expect(body).toBe(JSON.stringify({ code, message, requestId }));
      expect(JSON.parse(body)).toEqual({ code, message, requestId });
    }
  });
});
